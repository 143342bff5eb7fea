"""Events of a batch (issue 17, item 2): the bulk enqueue, claim and complete write one stream
entry per call, and every reader gives one event per job, resuming inside such an entry without
loss or repeat; a busy `process` type's outcomes are written in batches (`settle_window_ms`),
and never hold back another type's.
Real Redis, a real daemon."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from supervisor import Client, State
from supervisor.engine import keys
from supervisor.operators.admin import EventFollower, FollowedEvent, job_fields, recent_executions
from supervisor.producers.client import EnqueueRequest


async def _take(follower: EventFollower, n: int) -> list[FollowedEvent]:
    got: list[FollowedEvent] = []
    async def read() -> None:
        async for item in follower.events():
            if item is not None:
                got.append(item)
                if len(got) == n:
                    return
    await asyncio.wait_for(read(), 20)
    return got


async def test_a_batch_entry_is_one_event_per_job_and_resumes_inside(redis_url: str) -> None:
    r = aioredis.from_url(redis_url, decode_responses=True)
    try:
        async with Client(redis_url, allow_unknown=True) as client:
            first = EventFollower(r, types=["t.bulk"], block_ms=200)
            await first.prepare()
            # Given five jobs enqueued in one call: one `enqueued` entry in the stream
            refs = await client.enqueue_many([EnqueueRequest("t.bulk", {"i": i}) for i in range(5)])
            ids = [ref.id for ref in refs]
            entries = await r.xrange(keys.events_key("t.bulk"))
            assert len(entries) == 1 and [f["id"] for f in job_fields(entries[0][1])] == ids
            # When a follower reads two of its events and a second one resumes from the token
            seen = await _take(first, 2)
            rest = await _take(EventFollower(r, types=["t.bulk"], start=seen[-1].token, block_ms=200), 3)
        # Then the five events come once each, in order, each with its own request id
        events = [e.doc for e in [*seen, *rest]]
        assert [d["job_id"] for d in events] == ids
        assert {d["event"] for d in events} == {"enqueued"} and {d["state"] for d in events} == {"pending"}
        assert len({d["request_id"] for d in events}) == 5 and all(d["trace_id"] for d in events)
    finally:
        await r.aclose()


async def test_started_and_completed_of_a_batch_read_per_job(redis_url: str, use_handlers: Any,
                                                              daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        refs = await client.enqueue_many([EnqueueRequest("t.echo", {"value": f"v{i}"}) for i in range(20)])
        done = [await client.wait(ref.id, timeout=20) for ref in refs]
        assert all(job.state is State.COMPLETED for job in done)
        r = client.broker.redis
        per_job: dict[str, list[dict[str, str]]] = {}
        for _, entry in await r.xrange(keys.events_key("t.echo")):
            for one in job_fields(entry):
                per_job.setdefault(one["id"], []).append(one)
        for job in done:
            events = per_job[job.id]
            assert [e["event"] for e in events] == ["enqueued", "started", "completed"]
            assert {e["request_id"] for e in events} == {job.context["request_id"]}
            assert events[1]["instance"] and events[2]["attempt"] == "1"
            assert json.loads(events[2]["result"]) == job.result and job.attempts[-1].outcome == "completed"
        recent = await recent_executions(r, ["t.echo"], limit=10)
        assert len(recent) == 10 and {d["event"] for d in recent} <= {"started", "completed"}


async def test_a_follower_from_now_on_keeps_an_event_of_its_own_millisecond(redis_url: str) -> None:
    r = aioredis.from_url(redis_url, decode_responses=True)
    try:
        async with Client(redis_url, allow_unknown=True) as client:
            ref = await client.enqueue("t.same-ms", {"i": 1})
        [(_, fields)] = await r.xrange(keys.events_key("t.same-ms"))
        # Given a follower that starts "from now on", in a millisecond known to the test (Redis's
        # clock read before and after its start shows the same millisecond)
        async def ms() -> int:
            s, us = await r.time()
            return int(s) * 1000 + int(us) // 1000
        for _ in range(100):
            follower = EventFollower(r, types=["t.same-ms-copy"], block_ms=200)
            before = await ms()
            await follower.prepare()
            if await ms() == before:
                break
        now_ms = before
        # When the first event of the millisecond it started in is written (id `<now>-0`)
        await r.xadd(keys.events_key("t.same-ms-copy"), fields, id=f"{now_ms}-0")
        # Then it is delivered, not skipped
        [event] = await _take(follower, 1)
        assert event.doc["job_id"] == ref.id
    finally:
        await r.aclose()


_TRICKLE = '''
import time

from supervisor import job


@job("t.trickle", runtime="process", concurrency=16)
def trickle(payload: dict[str, int]) -> int:
    time.sleep(0.001)  # results come back from the pool one at a time
    return payload["i"]
'''


async def test_a_busy_process_types_outcomes_are_written_in_batches(redis_url: str, daemon: Any,
                                                                    jobs_dir: Any) -> None:
    # Given a process type whose 300 jobs finish one at a time in two workers, and a daemon whose
    # outcomes wait up to 50 ms for more while 8 or more runs are in flight
    (jobs_dir / "trickle.py").write_text(_TRICKLE)
    async with Client(redis_url, allow_unknown=True) as client:
        refs = await client.enqueue_many([EnqueueRequest("t.trickle", {"i": i}) for i in range(300)])
        daemon(env={"JOB_SUPERVISOR_SETTLE_WINDOW_MS": "50", "WORKERS_CONCURRENCY": "2"})
        # When they have all run
        done = [await client.wait(ref.id, timeout=60) for ref in refs]
        entries = [job_fields(entry) for _, entry in await client.broker.redis.xrange(keys.events_key("t.trickle"))]
    # Then each completed once, with its own result, and their completions came in batches:
    # one stream entry per settle call, for 8 jobs or more on average
    assert [job.result for job in done] == list(range(300)) and {job.state for job in done} == {State.COMPLETED}
    completed = [[one["id"] for one in fields] for fields in entries if fields[0]["event"] == "completed"]
    assert sorted(i for ids in completed for i in ids) == sorted(ref.id for ref in refs)
    assert 300 / len(completed) >= 8, [len(ids) for ids in completed]


_QUICK = '''
from supervisor import job


@job("t.quick")
async def quick(payload: dict[str, int]) -> int:
    return payload["i"]
'''


_FLOOD = '''
from supervisor import job


@job("t.flood", runtime="process", concurrency=32)
def flood(payload: dict[str, int]) -> int:
    return payload["i"]
'''


async def test_a_busy_types_outcomes_never_hold_back_another_types(redis_url: str, daemon: Any,
                                                                   jobs_dir: Any) -> None:
    # Given a process type draining 10,000 no-op jobs, whose outcomes keep coming back
    (jobs_dir / "flood.py").write_text(_FLOOD)
    (jobs_dir / "quick.py").write_text(_QUICK)
    async with Client(redis_url, allow_unknown=True) as client:
        for start in range(0, 10_000, 1000):
            await client.enqueue_many([EnqueueRequest("t.flood", {"i": i}) for i in range(start, start + 1000)])
        daemon(env={"JOB_SUPERVISOR_SETTLE_WINDOW_MS": "50", "WORKERS_CONCURRENCY": "2"})
        r = client.broker.redis
        await _until_true(lambda: r.zcard(keys.index_key("t.flood", "st:completed")), 1000)
        # When an in-process job is enqueued while that drain goes on
        job = await client.wait((await client.enqueue("t.quick", {"i": 7})).id, timeout=30)
        left = await r.zcard(keys.queue_prefix("t.flood") + "ready")
    # Then its outcome is written while the busy type still has much of its queue left
    assert job.state is State.COMPLETED and job.result == 7
    assert left > 2000, f"the in-process job's outcome waited for the busy type's drain ({left} jobs left)"


async def _until_true(count: Any, at_least: int) -> None:
    async def reached() -> None:
        while await count() < at_least:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(reached(), 30)

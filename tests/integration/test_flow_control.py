"""Keyed concurrency, queue policies, submit outcomes, stale policies, rate limits, cancellation."""

from __future__ import annotations

import collections
import functools
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import Client, EnqueueRequest, JobRejected, State
from tests.conftest import await_until

ROOT = Path(__file__).resolve().parents[2]


_until = functools.partial(await_until, timeout=20.0)  # a condition, with a deadline



@pytest.fixture
def keyed_published(use_handlers: Any, daemon: Any) -> None:
    """The keyed handlers' types published by a daemon that then stopped: no consumer runs, so
    every job stays queued until a test starts one."""
    use_handlers("keyed")
    daemon().stop()


async def _state(client: Client, job_id: str) -> State:
    return (await client.get(job_id)).state


@pytest.mark.slow
async def test_four_instances_never_overlap_within_a_key(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("keyed")
    for d in [daemon(wait=False) for _ in range(4)]:
        d.wait_ready()  # the key policy is published: producers derive each job's key from it
    async with Client(redis_url) as client:
        refs = await client.enqueue_many(
            [EnqueueRequest("t.keyed", {"tenant": f"t{i % 5}", "i": i}) for i in range(200)])

        async def all_done() -> bool:
            return (await client.broker.counts("t.keyed"))["completed"] == 200

        await _until(all_done, timeout=60, what="200 keyed jobs")
        jobs = await client.broker.get_many(r.id for r in refs)
    assert all(j.concurrency_key == f"tenant:{j.payload['tenant']}" for j in jobs)
    by_key: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for j in jobs:
        assert j.state is State.COMPLETED
        by_key[j.payload["tenant"]].append((j.result["started"], j.result["ended"]))
    for key, spans in by_key.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two jobs of key {key} overlapped"
    assert len({j.instance for j in jobs}) > 1


async def test_when_full_outcomes_and_resulting_states(redis_url: str, keyed_published: None, daemon: Any) -> None:
    async with Client(redis_url) as client:
        # reject (the defaults: max_active 1, max_queued_per_key 0)
        first = await client.submit("t.reject", {"k": "a"})
        second = await client.submit("t.reject", {"k": "a"})
        assert first.outcome == "accepted" and second.outcome == "rejected"
        assert second.key == "a" and second.existing == first.job_id and second.reason == "queue-depth"
        with pytest.raises(JobRejected, match="key 'a'"):
            await client.enqueue("t.reject", {"k": "a"})
        assert (await client.submit("t.reject", {"k": "b"})).outcome == "accepted"
        # coalesce: the new request folds into the queued job
        c1 = await client.submit("t.coalesce", {"k": "a"})
        c2 = await client.submit("t.coalesce", {"k": "a"})
        assert c2.outcome == "coalesced" and c2.job_id == c1.job_id
        ref = await client.enqueue("t.coalesce", {"k": "a"})
        assert ref.id == c1.job_id and ref.existing
        # replace-oldest: the newest payload supersedes the oldest queued one
        r1 = await client.submit("t.replace", {"k": "a", "v": 1})
        r2 = await client.submit("t.replace", {"k": "a", "v": 2})
        r3 = await client.submit("t.replace", {"k": "a", "v": 3})
        assert [r.outcome for r in (r1, r2, r3)] == ["accepted", "accepted", "replaced"]
        assert r3.existing == r1.job_id
        old = await client.get(r1.job_id)
        assert old.state is State.CANCELLED and old.error == f"replaced by {r3.job_id}"
        status = await client.key_status("t.replace", "a")
        assert status["queued"] == 2 and status["last_decision"] == "replaced"
        assert status["last_reason"] == "queue-depth"
        # and the survivors run once a consumer is back
        daemon()
        done = [await client.wait(r.job_id, timeout=15) for r in (r2, r3)]
    assert [j.result["v"] for j in done] == [2, 3]


async def test_concurrency_key_at_enqueue(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        first = await client.enqueue("t.long", {"seconds": 1}, concurrency_key="report:42")
        await _until(lambda: _is(client, first.id, State.ACTIVE), what="active")
        again = await client.submit("t.long", {"seconds": 1}, concurrency_key="report:42")
        assert again.outcome == "rejected" and again.reason == "active-limit" and again.existing == first.id
        other = await client.submit("t.long", {"seconds": 0}, concurrency_key="report:43")
        assert other.outcome == "accepted"
        status = await client.key_status("t.long", "report:42")
        assert [a["id"] for a in status["active"]] == [first.id] and status["last_reason"] == "active-limit"
        assert (await client.wait(first.id, timeout=10)).state is State.COMPLETED
        assert (await client.submit("t.long", {"seconds": 0}, concurrency_key="report:42")).outcome == "accepted"


@pytest.mark.parametrize(("name", "expected"), [("t.stale-fail", State.FAILED), ("t.stale-requeue", State.COMPLETED)])
async def test_stale_policies_after_sigkill(redis_url: str, use_handlers: Any, daemon: Any,
                                            name: str, expected: State) -> None:
    use_handlers("keyed")
    first = daemon()
    async with Client(redis_url) as client:
        held = await client.enqueue(name, {"k": "x", "sleep": 30})
        behind = await client.enqueue(name, {"k": "x"})
        await _until(lambda: _is(client, held.id, State.ACTIVE), what="active")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        daemon()
        stale = await client.wait(held.id, timeout=20)
        after = await client.wait(behind.id, timeout=20)
        status = await client.key_status(name, "x")
    assert stale.state is expected
    assert stale.attempts[0].outcome == "lease-expired"
    if expected is State.FAILED:
        assert "stale" in (stale.error or "") and stale.deliveries == 1
    else:
        assert stale.deliveries == 2
        assert after.attempts[0].started >= stale.attempts[-1].ended, "the requeued job kept its slot"
    assert after.state is State.COMPLETED
    assert status["stale_takeovers"] == 1 and status["active"] == [] and status["queued"] == 0


@pytest.mark.slow
async def test_rate_limit_holds_across_four_instances(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("keyed")
    for d in [daemon(wait=False) for _ in range(4)]:
        d.wait_ready()
    async with Client(redis_url) as client:
        refs = await client.enqueue_many([EnqueueRequest("t.rated", {}) for _ in range(550)])

        async def all_done() -> bool:
            return (await client.broker.counts("t.rated"))["completed"] == 550

        await _until(all_done, timeout=40, what="550 rated jobs")
        jobs = await client.broker.get_many(r.id for r in refs)
    starts = sorted(j.attempts[0].started.timestamp() for j in jobs)  # Redis time, ms resolution
    worst = max(sum(1 for t in starts[i:i + 60] if t < s + 1.0) for i, s in enumerate(starts))
    assert worst <= 50, f"{worst} jobs started within one second"
    assert starts[-1] - starts[0] >= 9.5, "550 jobs at 50/s take at least 10 s"


async def test_cancel_in_each_state_and_runtime(redis_url: str, use_handlers: Any, daemon: Any,
                                                tmp_path: Path) -> None:
    use_handlers("keyed")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "stubborn.sh").write_text("#!/bin/bash\necho started\nsleep 60\n")
    (tasks / "stubborn.sh").chmod(0o755)
    daemon(env={"JOB_SUPERVISOR_CANCEL_GRACE": "0.5", "WORKERS_CONCURRENCY": "1"})
    async with Client(redis_url) as client:
        # pending (delayed) and retry: cancelled at once
        pending = await client.enqueue("t.rated", {}, delay=60)
        assert await client.cancel(pending.id) == "cancelled"
        retrying = await client.enqueue("t.always-retries", {})
        await _until(lambda: _is(client, retrying.id, State.RETRY), what="retry")
        assert await client.cancel(retrying.id) == "cancelled"
        # active, in every runtime, with handlers that ignore the request
        active = {}
        for name in ("t.ignores-cancel-async", "t.ignores-cancel-sync", "t.ignores-cancel-process", "stubborn"):
            active[name] = await client.enqueue(name, {})
        for name, ref in active.items():
            await _until(lambda ref=ref: _is(client, ref.id, State.ACTIVE), what=f"{name} active")
        started = time.monotonic()
        for ref in active.values():
            assert await client.cancel(ref.id, "operator stop") == "requested"
        ended = {name: await client.wait(ref.id, timeout=30) for name, ref in active.items()}
        elapsed = time.monotonic() - started
        assert (await client.get(pending.id)).state is State.CANCELLED
        assert (await client.get(retrying.id)).state is State.CANCELLED
    for name, job in ended.items():
        assert job.state is State.CANCELLED, (name, job.state, job.error)
        assert job.attempts[-1].outcome == "cancelled"
    assert elapsed < 25, "an ignored cancel ends within the grace periods, not the 60 s handler"


async def _is(client: Client, job_id: str, state: State) -> bool:
    return await _state(client, job_id) is state




async def test_a_job_that_replaces_another_keeps_its_dependencies(redis_url: str, keyed_published: None,
                                                                  daemon: Any) -> None:
    async with Client(redis_url) as client:
        # Given a key whose queue is full, and a job the next one depends on
        dep = await client.submit("t.replace", {"k": "b", "v": 0})
        for v in (1, 2):
            await client.submit("t.replace", {"k": "a", "v": v})
        # When a job with a dependency replaces the oldest queued one
        newest = await client.submit("t.replace", {"k": "a", "v": 3}, depends_on=[dep.job_id])
        assert newest.outcome == "replaced"
        daemon()
        done = await client.wait(newest.job_id, timeout=15)
    # Then it waited for its dependency and ran, like any job with one
    assert done.state is State.COMPLETED and done.result["v"] == 3


async def test_enqueue_many_links_every_queued_job_even_when_one_is_rejected(redis_url: str, keyed_published: None,
                                                                             daemon: Any) -> None:
    async with Client(redis_url) as client:
        # Given a key that refuses a second queued job, and a job others will depend on
        dep = await client.enqueue("t.replace", {"k": "b", "v": 0})
        await client.enqueue("t.reject", {"k": "a"})
        # When one enqueue_many holds a rejected job and a job with a dependency
        with pytest.raises(JobRejected):
            await client.enqueue_many([EnqueueRequest("t.reject", {"k": "a"}),
                                       EnqueueRequest("t.replace", {"k": "c", "v": 1}, depends_on=[dep.id])])
        waiting = [j for j in await client.list(name="t.replace") if j.payload.get("k") == "c"]
        daemon()
        done = await client.wait(waiting[0].id, timeout=15)
    # Then the queued one still had its dependency registered and its gate opened: it ran
    assert done.state is State.COMPLETED and done.result["v"] == 1

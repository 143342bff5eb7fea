"""Nothing is lost: SIGKILL, fencing, several daemons, Redis restarts, SIGTERM drains."""

from __future__ import annotations

import asyncio
import collections
import functools
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import Client, EnqueueRequest, State
from supervisor.daemon.redis_server import RedisServer, free_port
from supervisor.engine.broker import Broker, connect
from tests.conftest import await_until

_until = functools.partial(await_until, timeout=20.0)  # a condition, with a deadline



def _completions(job: Any) -> int:
    return sum(1 for a in job.attempts if a.outcome == "completed")


async def test_sigkill_mid_job_is_redelivered_after_ack_wait(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given a daemon running a job whose lease (ack_wait) is 2 s
    use_handlers("basic")
    first = daemon()
    async with Client(redis_url) as client:
        ref = await client.enqueue("t.sleep", {"seconds": 1.0})
        await _until(lambda: _state_is(client, ref.id, State.ACTIVE), what="job active")
        # When that daemon is killed with SIGKILL mid-job and a second one starts
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        second = daemon()
        job = await client.wait(ref.id, timeout=20)
    # Then the second one ran it again after the lease lapsed, and it completed exactly once
    assert job.state is State.COMPLETED
    assert [a.outcome for a in job.attempts] == ["lease-expired", "completed"]
    assert _completions(job) == 1 and job.deliveries == 2
    assert job.attempts[0].instance != job.attempts[1].instance
    assert job.result["pid"] == second.pid


async def test_late_completion_under_a_taken_over_lease_is_refused(redis_url: str) -> None:
    broker = Broker(connect(redis_url))
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue("t.fence", {})
    # Given instance A holds the job under a 100 ms lease that lapses
    a = (await broker.claim("t.fence", "A", 1, 100, 5)).jobs[0]
    await asyncio.sleep(0.15)
    # And instance B takes it over
    b = (await broker.claim("t.fence", "B", 1, 10_000, 5)).jobs[0]
    assert b.id == a.id and b.lease != a.lease
    # When A reports a result late, it is refused; B's result is recorded
    assert await broker.complete("t.fence", [(a.id, a.lease, '"from A"', "")]) == ["fenced:active"]
    assert await broker.fail("t.fence", 5, [(a.id, a.lease, "retry", "late", 0, "")]) == ["fenced:active"]
    assert await broker.complete("t.fence", [(b.id, b.lease, '"from B"', "")]) == ["ok"]
    assert await broker.complete("t.fence", [(a.id, a.lease, '"from A"', "")]) == ["fenced:completed"]
    job = await broker.get(ref.id)
    await broker.close()
    assert job.state is State.COMPLETED and job.result == "from B"
    assert [(x.outcome, x.instance) for x in job.attempts] == [("lease-expired", "A"), ("completed", "B")]


@pytest.mark.slow
async def test_two_daemons_complete_2000_jobs_exactly_once(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    daemon()
    async with Client(redis_url) as client:
        refs = await client.enqueue_many(
            [EnqueueRequest("t.echo", {"value": str(i)}) for i in range(2000)])
        assert len({r.id for r in refs}) == 2000

        async def all_done() -> bool:
            return (await client.broker.counts("t.echo"))["completed"] == 2000

        await _until(all_done, timeout=60, what="2000 completions")
        jobs = await client.broker.get_many(r.id for r in refs)
    assert len(jobs) == 2000
    assert all(j.state is State.COMPLETED and _completions(j) == 1 and j.deliveries == 1 for j in jobs)
    assert sorted(int(j.result["value"]) for j in jobs) == list(range(2000))
    per_instance = collections.Counter(j.instance for j in jobs)
    assert len(per_instance) == 2, per_instance


@pytest.mark.slow
async def test_redis_restart_under_load_loses_nothing(tmp_path: Path, use_handlers: Any, daemon: Any) -> None:
    # Given a Redis with the append-only file on, and a daemon working through 600 jobs
    port = free_port()
    server = RedisServer(tmp_path / "redis-aof", port=port, appendonly=True, appendfsync="always").start()
    url = server.url
    try:
        use_handlers("basic")
        d = daemon(url=url)
        async with Client(url) as client:
            refs = await client.enqueue_many(
                [EnqueueRequest("t.sleep", {"seconds": 0.01}) for _ in range(600)])

            async def some_done() -> bool:
                return (await client.broker.counts("t.sleep"))["completed"] >= 50

            await _until(some_done, what="first completions")
        # When Redis restarts under load
        server.stop()
        await asyncio.sleep(0.5)
        server = RedisServer(tmp_path / "redis-aof", port=port, appendonly=True, appendfsync="always").start()
        # Then the daemon reconnects by itself and every job completes exactly once
        async with Client(url) as client:
            more = await client.enqueue_many(
                [EnqueueRequest("t.sleep", {"seconds": 0.01}) for _ in range(100)])

            async def all_done() -> bool:
                return (await client.broker.counts("t.sleep"))["completed"] == 700

            await _until(all_done, timeout=60, what="700 completions")
            jobs = await client.broker.get_many(r.id for r in refs + more)
        assert len(jobs) == 700
        assert all(j.state is State.COMPLETED and _completions(j) == 1 for j in jobs)
        assert d.proc.poll() is None
        assert d.events("redis.unavailable"), "the daemon should have noticed the outage"
    finally:
        server.stop()


async def test_sigterm_drains_in_flight_jobs_and_exits_0(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    d = daemon()
    async with Client(redis_url) as client:
        refs = [await client.enqueue("t.long", {"seconds": 1.5}) for _ in range(8)]

        async def all_active() -> bool:
            return (await client.broker.counts("t.long"))["active"] == 8

        await _until(all_active, what="8 active")
        assert d.stop() == 0
        jobs = await client.broker.get_many(r.id for r in refs)
    assert all(j.state is State.COMPLETED and j.deliveries == 1 for j in jobs)
    assert d.events("shutdown.drain")[0]["in_flight"] == 8


async def test_drain_timeout_releases_jobs_to_another_instance(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given a job with a 60 s lease that outlives a 0.5 s drain timeout
    use_handlers("basic")
    first = daemon(env={"JOB_SUPERVISOR_DRAIN_TIMEOUT": "0.5"})
    async with Client(redis_url) as client:
        ref = await client.enqueue("t.long", {"seconds": 3})
        await _until(lambda: _state_is(client, ref.id, State.ACTIVE), what="active")
        # When the daemon is stopped
        started = time.monotonic()
        assert first.stop() == 0
        # Then the job was released at once (no failed attempt) and another instance finishes it
        released = await client.get(ref.id)
        assert released.state is State.PENDING and released.deliveries == 0
        daemon()
        job = await client.wait(ref.id, timeout=20)
    assert job.state is State.COMPLETED
    assert [a.outcome for a in job.attempts] == ["released", "completed"]
    assert time.monotonic() - started < 30, "must not wait out the 60 s ack_wait"
    report = first.events("shutdown.job")
    assert report and report[0]["job_id"] == ref.id and report[0]["outcome"] == "released"


async def test_drain_timeout_releases_a_job_that_stops_when_asked(redis_url: str, use_handlers: Any,
                                                                  daemon: Any) -> None:
    # Given a job that returns as soon as it is asked to stop, running past a 0.5 s drain timeout
    use_handlers("basic")
    first = daemon(env={"JOB_SUPERVISOR_DRAIN_TIMEOUT": "0.5"})
    async with Client(redis_url) as client:
        ref = await client.enqueue("t.cooperative", {})
        await _until(lambda: _state_is(client, ref.id, State.ACTIVE), what="active")
        # When the daemon is stopped
        assert first.stop() == 0
        # Then the job went back to the queue: stopping it was the daemon's doing, not a cancellation
        job = await client.get(ref.id)
    assert job.state is State.PENDING and job.deliveries == 0
    assert [a.outcome for a in job.attempts] == ["released"]
    report = first.events("shutdown.job")
    assert report and report[0]["job_id"] == ref.id and report[0]["outcome"] == "released"


async def test_second_signal_stops_fast(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    d = daemon(env={"JOB_SUPERVISOR_DRAIN_TIMEOUT": "60"})
    async with Client(redis_url) as client:
        ref = await client.enqueue("t.long", {"seconds": 30})
        await _until(lambda: _state_is(client, ref.id, State.ACTIVE), what="active")
        d.signal(signal.SIGTERM)
        await _until(lambda: _has_event(d, "shutdown.drain"), what="drain started")
        d.signal(signal.SIGTERM)
        assert d.proc.wait(15) == 0
        job = await client.get(ref.id)
    assert job.state is State.PENDING, "the job is handed back, not lost"
    assert d.events("shutdown.fast")


async def _state_is(client: Client, job_id: str, state: State) -> bool:
    return (await client.get(job_id)).state is state


async def _has_event(d: Any, name: str) -> bool:
    return bool(d.events(name))


@pytest.mark.slow
async def test_sigterm_with_50_jobs_across_three_runtimes(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given 50 jobs of 2 s running in all three runtimes
    use_handlers("runtimes")
    d = daemon(env={"WORKERS_CONCURRENCY": "10", "JOB_SUPERVISOR_DRAIN_TIMEOUT": "30"})
    names = {"t.two-seconds-inprocess": 20, "t.two-seconds-process": 10, "t.two-seconds-subprocess": 20}
    async with Client(redis_url) as client:
        refs = [await client.enqueue(name, {}) for name, n in names.items() for _ in range(n)]

        async def all_active() -> bool:
            counts = [await client.broker.counts(n) for n in names]
            return sum(c["active"] for c in counts) == 50

        await _until(all_active, what="50 jobs active")
        # When the daemon gets SIGTERM
        assert d.stop(timeout=60) == 0
        jobs = await client.broker.get_many(r.id for r in refs)
    # Then every job completed, once, on its first delivery
    assert len(jobs) == 50
    assert all(j.state is State.COMPLETED and j.deliveries == 1 and _completions(j) == 1 for j in jobs)
    assert d.events("shutdown.drain")[0]["in_flight"] == 50

"""The daemon as a real subprocess against a real Redis: outcomes, retries, ordering, idempotency."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import Client, InvalidPayload, State, UnknownJobType

pytestmark = pytest.mark.usefixtures("redis_url")


async def test_happy_path_completes_with_result(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given a daemon serving the test handlers
    use_handlers("basic")
    d = daemon()
    async with Client(redis_url) as client:
        # When a job is enqueued
        ref = await client.enqueue("t.echo", {"value": "hi"})
        job = await client.wait(ref.id, timeout=10)
    # Then it completed once, with the handler's result and one attempt in its history
    assert job.state is State.COMPLETED
    assert job.result["value"] == "hi"
    assert job.result["pid"] == d.pid
    assert [a.outcome for a in job.attempts] == ["completed"]
    assert job.context["request_id"] and len(job.context["trace_id"]) == 32


async def test_sync_handler_runs_in_daemon(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    d = daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.sync-echo", {"value": "s"})).id, timeout=10)
    assert job.state is State.COMPLETED and job.result == {"value": "s", "pid": d.pid}


async def test_retry_then_success(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.flaky", {"succeed_on": 3})).id, timeout=10)
    assert job.state is State.COMPLETED
    assert job.result == {"succeeded_on": 3}
    assert [a.outcome for a in job.attempts] == ["failed", "failed", "completed"]
    assert "flaky failure on attempt 1" in (job.attempts[0].error or "")


async def test_max_deliver_ends_dead_with_every_attempt(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.always-fails", {})).id, timeout=10)
    assert job.state is State.DEAD
    assert job.deliveries == 3
    assert [a.attempt for a in job.attempts] == [1, 2, 3]
    assert all(a.outcome == "failed" and a.instance for a in job.attempts)
    assert "boom on attempt 3" in (job.error or "") and "max_deliver" in (job.error or "")


async def test_permanent_error_fails_without_retry(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.permanent", {})).id, timeout=10)
        assert job.state is State.FAILED
        assert job.deliveries == 1 and "card declined" in (job.error or "")
        # An operator can send a failed job back to pending; it fails again, permanently.
        await client.retry(job.id)
        job = await client.wait(job.id, timeout=10)
    assert job.state is State.FAILED
    assert [a.outcome for a in job.attempts] == ["permanent", "permanent"]


async def test_handler_can_ask_for_retry_with_delay(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.retry-later", {})).id, timeout=10)
    assert job.state is State.COMPLETED and job.result == "ok"
    assert job.attempts[0].outcome == "failed" and "rate limited upstream" in (job.attempts[0].error or "")
    gap = (job.attempts[1].started - job.attempts[0].ended).total_seconds()
    assert gap >= 0.09


async def test_invalid_payload_is_refused_at_enqueue(
    redis_url: str, use_handlers: Any, daemon: Any, redis: Any
) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        with pytest.raises(InvalidPayload) as err:
            await client.enqueue("t.flaky", {"succeed_on": "soon"})
        assert "succeed_on" in str(err.value)
        with pytest.raises(UnknownJobType):
            await client.enqueue("t.no-such-type", {})
        assert (await client.broker.counts("t.flaky"))["ready"] == 0
        # An unknown type can still be queued on purpose, for a consumer that is not up yet.
        ref = await client.enqueue("t.no-such-type", {}, allow_unknown=True)
        assert (await client.get(ref.id)).state is State.PENDING


async def test_payload_invalid_for_handler_fails_permanently(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # A job queued without validation (allow_unknown before the type was published) meets the model.
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue("t.flaky", {"succeed_on": "never"})
        use_handlers("basic")
        daemon()
        job = await client.wait(ref.id, timeout=10)
    assert job.state is State.FAILED and job.deliveries == 1
    assert "invalid payload" in (job.error or "") and "succeed_on" in (job.error or "")


async def test_priority_then_fifo_and_delay(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given jobs queued before any daemon runs (so order is decided by the queue alone)
    async with Client(redis_url, allow_unknown=True) as client:
        low = [await client.enqueue("t.serial", {"n": i}) for i in range(3)]
        high = await client.enqueue("t.serial", {"n": "high"}, priority=10)
        delayed = await client.enqueue("t.serial", {"n": "delayed"}, priority=100, delay=0.8)
        # When a daemon with concurrency 1 for this type drains them
        use_handlers("basic")
        daemon()
        jobs = [await client.wait(r.id, timeout=10) for r in [high, *low, delayed]]
    # Then higher priority ran first, FIFO within a priority, and the delayed one not before its time
    # (once due, its priority 100 may put it anywhere: only "not before run_at" is promised)
    starts = [j.attempts[0].started for j in jobs[:-1]]
    assert starts == sorted(starts)
    assert (jobs[-1].attempts[0].started - jobs[-1].created).total_seconds() >= 0.75


async def test_idempotency_key_returns_first_job(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        first = await client.enqueue("t.echo", {"value": "a"}, idempotency_key="order-42")
        second = await client.enqueue("t.echo", {"value": "b"}, idempotency_key="order-42")
        assert second.id == first.id and second.existing and not first.existing
        job = await client.wait(first.id, timeout=10)
        # Still returned after completion, while the record is retained
        third = await client.enqueue("t.echo", {"value": "c"}, idempotency_key="order-42")
    assert third.id == first.id and job.result["value"] == "a"


async def test_deadline_expires_a_job_that_could_not_run(redis_url: str) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue("t.echo", {"value": "late"}, deadline=0.2, delay=0.5)
        await asyncio.sleep(0.6)  # let both the delay and the deadline pass before a daemon exists
    from supervisor.engine.broker import Broker, connect

    broker = Broker(connect(redis_url))
    batch = await broker.claim("t.echo", "test", 5, 1000, 5)
    assert batch.jobs == []
    job = await broker.get(ref.id)
    await broker.close()
    assert job.state is State.EXPIRED and "deadline" in (job.error or "")


async def test_cancel_pending_and_wrong_state(redis_url: str) -> None:
    from supervisor import InvalidTransition

    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue("t.echo", {}, delay=60)
        assert await client.cancel(ref.id) == "cancelled"
        job = await client.get(ref.id)
        assert job.state is State.CANCELLED
        assert (await client.broker.counts("t.echo"))["sched"] == 0
        with pytest.raises(InvalidTransition, match="it is cancelled"):
            await client.cancel(ref.id)
        with pytest.raises(InvalidTransition):
            await client.replay(ref.id)


async def test_cancel_active_job_is_cooperative(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    d = daemon()
    async with Client(redis_url) as client:
        ref = await client.enqueue("t.cooperative", {})
        await _until_state(client, ref.id, State.ACTIVE)
        assert await client.cancel(ref.id, "operator said stop") == "requested"
        job = await client.wait(ref.id, timeout=10)
    assert job.state is State.CANCELLED and job.error == "operator said stop"
    assert job.attempts[-1].outcome == "cancelled"
    assert d.proc.poll() is None


async def test_progress_and_child_jobs_inherit_trace(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    daemon()
    async with Client(redis_url) as client:
        p = await client.wait((await client.enqueue("t.progress", {})).id, timeout=10)
        parent = await client.wait((await client.enqueue("t.parent", {"value": "x"})).id, timeout=10)
        child = await client.wait(parent.result["child"], timeout=10)
    assert p.progress == {"percent": 40.0, "message": "resizing", "step": "resize"}
    assert child.result["value"] == "x-child"
    assert child.parent == parent.id
    assert child.context["trace_id"] == parent.context["trace_id"]
    assert child.context["request_id"] == parent.context["request_id"]
    assert child.context["traceparent"] != parent.context["traceparent"]


async def test_idle_daemon_wakes_on_enqueue_without_polling(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # With a 30 s idle re-check, only the blocking wake-up can start the job quickly.
    use_handlers("basic")
    daemon(env={"JOB_SUPERVISOR_MAX_IDLE_WAIT": "30"})
    async with Client(redis_url) as client:
        await asyncio.sleep(0.3)  # let the daemon settle into its blocking wait
        ref = await client.enqueue("t.echo", {"value": "wake"})
        job = await client.wait(ref.id, timeout=10)
    assert job.state is State.COMPLETED
    assert (job.attempts[0].started - job.created).total_seconds() < 5


async def test_broken_handler_file_leaves_other_types_serving(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic", "broken", "duplicate")
    d = daemon()
    failed = {e["path"]: e for e in d.events("jobs.load_failed")}
    broken = next(v for k, v in failed.items() if k.endswith("broken.py"))
    assert "SyntaxError" in broken["error"]
    dup = d.events("jobs.duplicate")
    assert dup and dup[0]["name"] == "t.echo"
    async with Client(redis_url) as client:
        ok = await client.wait((await client.enqueue("t.echo", {"value": "fine"})).id, timeout=10)
        other = await client.wait((await client.enqueue("t.unique-in-duplicate-file", {})).id, timeout=10)
        with pytest.raises(UnknownJobType):
            await client.enqueue("t.broken", {})
    assert ok.state is State.COMPLETED and other.result == "still served"


async def _until_state(client: Client, job_id: str, state: State, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get(job_id)).state is not state:
        assert time.monotonic() < deadline, f"job never reached {state}"
        await asyncio.sleep(0.02)


def test_handlers_dir_exists() -> None:
    assert (Path(__file__).parents[1] / "handlers" / "basic.py").is_file()

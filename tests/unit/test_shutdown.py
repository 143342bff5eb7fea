"""ShutdownManager: order, timeouts, failures, idempotence, state and abort signal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from structlog.testing import capture_logs

from supervisor.daemon.shutdown import (
    ResourceStatus,
    ShutdownManager,
    ShutdownOutcome,
    ShutdownStarted,
    ShutdownState,
)

pytestmark = pytest.mark.timeout(10)


def recorder(calls: list[str], name: str) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        calls.append(name)

    return stop


async def hang_until_cancelled() -> None:
    # Stands in for a resource that never finishes stopping on its own.
    await asyncio.Event().wait()


async def test_stops_in_priority_order_then_registration_order() -> None:
    # Given resources registered out of priority order, two sharing a priority
    calls: list[str] = []
    manager = ShutdownManager()
    manager.register("redis", recorder(calls, "redis"), priority=90)
    manager.register("fetcher", recorder(calls, "fetcher"), priority=10)
    manager.register("runners-a", recorder(calls, "runners-a"), priority=20)
    manager.register("runners-b", recorder(calls, "runners-b"), priority=20)
    manager.register("api", recorder(calls, "api"), priority=50)

    # When shutting down
    report = await manager.shutdown("test")

    # Then lower priorities stop first and ties keep registration order
    expected = ["fetcher", "runners-a", "runners-b", "api", "redis"]
    assert calls == expected
    assert report.stopped == expected
    assert [r.id for r in report.resources] == expected
    assert report.state is ShutdownOutcome.COMPLETED
    assert report.ok
    assert report.failed == {} and report.timed_out == []


async def test_same_priority_runs_sequentially_not_concurrently() -> None:
    # Given two async resources at one priority that record overlap
    active = 0
    max_active = 0

    async def stop() -> None:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        await asyncio.sleep(0)  # yield: a concurrent sibling would run now
        await asyncio.sleep(0)
        active -= 1

    manager = ShutdownManager()
    manager.register("a", stop, priority=1)
    manager.register("b", stop, priority=1)

    # When shutting down
    await manager.shutdown("test")

    # Then they never ran at the same time
    assert max_active == 1


async def test_sync_and_async_stop_callables() -> None:
    # Given a sync function, a coroutine function and a lambda returning a coroutine
    calls: list[str] = []

    def sync_stop() -> None:
        calls.append("sync")

    manager = ShutdownManager()
    manager.register("sync", sync_stop, priority=1)
    manager.register("async", recorder(calls, "async"), priority=2)
    manager.register("lambda", lambda: recorder(calls, "lambda")(), priority=3)  # noqa: PLW0108  (a lambda is the case)

    # When shutting down
    report = await manager.shutdown("test")

    # Then every kind was called and reported stopped
    assert calls == ["sync", "async", "lambda"]
    assert report.stopped == ["sync", "async", "lambda"]
    assert all(r.status is ResourceStatus.STOPPED for r in report.resources)


async def test_per_resource_timeout_is_recorded_and_later_resources_still_stop() -> None:
    # Given a resource that hangs with a short own timeout, between two good ones
    calls: list[str] = []
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await hang_until_cancelled()
        finally:
            cancelled.set()

    manager = ShutdownManager()
    manager.register("first", recorder(calls, "first"), priority=1)
    manager.register("stuck", hangs, priority=2, timeout=0.05)
    manager.register("last", recorder(calls, "last"), priority=3)

    # When shutting down
    with capture_logs() as logs:
        report = await manager.shutdown("test")

    # Then the stuck one is timed out (and was cancelled), the others stopped
    assert report.timed_out == ["stuck"]
    assert report.stopped == ["first", "last"]
    assert calls == ["first", "last"]
    assert cancelled.is_set()
    stuck = next(r for r in report.resources if r.id == "stuck")
    assert stuck.status is ResourceStatus.TIMED_OUT
    assert stuck.error is not None and "resource timeout" in stuck.error
    assert stuck.duration_s >= 0.04  # asyncio may wake a clock tick early
    # An own-timeout miss is an error, but not an overall time-out
    assert report.state is ShutdownOutcome.COMPLETED_WITH_ERRORS
    assert any(e["event"] == "shutdown.resource.timed_out" and e["resource"] == "stuck"
               for e in logs)


async def test_failure_is_recorded_with_error_text_and_never_raised() -> None:
    # Given an async stop and a sync stop that raise, and a good one after them
    calls: list[str] = []

    async def broken_async() -> None:
        raise RuntimeError("connection reset")

    def broken_sync() -> None:
        raise OSError("disk gone")

    manager = ShutdownManager()
    manager.register("async-broken", broken_async, priority=1)
    manager.register("sync-broken", broken_sync, priority=2)
    manager.register("fine", recorder(calls, "fine"), priority=3)

    # When shutting down
    with capture_logs() as logs:
        report = await manager.shutdown("test")

    # Then both failures carry their error text and the good one still stopped
    assert report.failed == {
        "async-broken": "RuntimeError: connection reset",
        "sync-broken": "OSError: disk gone",
    }
    assert report.stopped == ["fine"]
    assert report.state is ShutdownOutcome.COMPLETED_WITH_ERRORS
    statuses = {r.id: r.status for r in report.resources}
    assert statuses["async-broken"] is ResourceStatus.FAILED
    assert statuses["sync-broken"] is ResourceStatus.FAILED
    failed_events = [e for e in logs if e["event"] == "shutdown.resource.failed"]
    assert {e["resource"] for e in failed_events} == {"async-broken", "sync-broken"}


async def test_stop_that_cancels_itself_is_a_failure() -> None:
    # Given a stop coroutine that raises CancelledError on its own
    async def self_cancelling() -> None:
        raise asyncio.CancelledError

    manager = ShutdownManager()
    manager.register("weird", self_cancelling)

    # When shutting down
    report = await manager.shutdown("test")

    # Then it is recorded as failed and shutdown still completes
    assert "weird" in report.failed
    assert manager.state is ShutdownState.STOPPED


async def test_overall_timeout_times_out_current_and_skips_the_rest() -> None:
    # Given a hanging resource whose own timeout exceeds the overall cap
    calls: list[str] = []
    manager = ShutdownManager()
    manager.register("first", recorder(calls, "first"), priority=1)
    manager.register("stuck", hang_until_cancelled, priority=2, timeout=30)
    manager.register("never-a", recorder(calls, "never-a"), priority=3)
    manager.register("never-b", recorder(calls, "never-b"), priority=4)

    # When shutting down with a short overall timeout
    report = await manager.shutdown("test", timeout=0.1)

    # Then the one in progress timed out, the rest were skipped, not called
    assert report.state is ShutdownOutcome.TIMED_OUT
    assert calls == ["first"]
    assert report.stopped == ["first"]
    assert report.timed_out == ["stuck", "never-a", "never-b"]
    statuses = {r.id: r.status for r in report.resources}
    assert statuses == {
        "first": ResourceStatus.STOPPED,
        "stuck": ResourceStatus.TIMED_OUT,
        "never-a": ResourceStatus.SKIPPED,
        "never-b": ResourceStatus.SKIPPED,
    }
    stuck = next(r for r in report.resources if r.id == "stuck")
    assert stuck.error is not None and "overall" in stuck.error
    # Bounded by the overall cap, not by the resource's own 30 s
    assert report.duration_s < 5


async def test_default_overall_timeout_from_constructor() -> None:
    # Given a manager with a default overall cap and a hanging resource
    manager = ShutdownManager(timeout=0.05)
    manager.register("stuck", hang_until_cancelled, timeout=30)

    # When shutting down without a timeout argument
    report = await manager.shutdown("test")

    # Then the default cap applied
    assert report.state is ShutdownOutcome.TIMED_OUT
    assert report.timed_out == ["stuck"]


async def test_resource_ignoring_cancellation_does_not_block_shutdown() -> None:
    # Given a stop that swallows its cancellation once and then finishes
    release = asyncio.Event()
    finished = asyncio.Event()

    async def stubborn() -> None:
        try:
            await hang_until_cancelled()
        except asyncio.CancelledError:
            await release.wait()  # ignores the cancel until released
        finished.set()

    manager = ShutdownManager(cancel_grace_s=0.05)
    manager.register("stubborn", stubborn, timeout=0.05)

    # When shutting down
    with capture_logs() as logs:
        report = await manager.shutdown("test")

    # Then shutdown returned anyway, reporting it timed out and abandoned
    assert report.timed_out == ["stubborn"]
    assert any(e["event"] == "shutdown.resource.abandoned" for e in logs)
    assert manager.state is ShutdownState.STOPPED
    release.set()  # let the abandoned coroutine end before the loop closes
    await asyncio.wait_for(finished.wait(), timeout=5)


async def test_second_call_returns_the_same_report() -> None:
    # Given a completed shutdown
    calls: list[str] = []
    manager = ShutdownManager()
    manager.register("only", recorder(calls, "only"))
    first = await manager.shutdown("SIGTERM")

    # When shutting down again with another reason
    second = await manager.shutdown("SIGINT")

    # Then nothing stops twice and the first report comes back
    assert second is first
    assert second.reason == "SIGTERM"
    assert calls == ["only"]


async def test_concurrent_calls_share_one_shutdown() -> None:
    # Given a shutdown in progress, blocked inside a resource
    entered = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        entered.set()
        await release.wait()

    manager = ShutdownManager()
    manager.register("slow", slow)
    first = asyncio.create_task(manager.shutdown("first"))
    await asyncio.wait_for(entered.wait(), timeout=5)

    # When a second caller asks while it is still running
    second = asyncio.create_task(manager.shutdown("second"))
    await asyncio.sleep(0)
    assert not second.done()  # it waits for the first, not a fresh run
    release.set()

    # Then both get the one report and the resource stopped once
    r1, r2 = await asyncio.wait_for(asyncio.gather(first, second), timeout=5)
    assert r1 is r2
    assert r1.reason == "first"
    assert calls == 1


async def test_cancelling_a_caller_does_not_interrupt_shutdown() -> None:
    # Given a shutdown blocked in a resource
    entered = asyncio.Event()
    release = asyncio.Event()
    calls: list[str] = []

    async def slow() -> None:
        entered.set()
        await release.wait()

    manager = ShutdownManager()
    manager.register("slow", slow, priority=1)
    manager.register("after", recorder(calls, "after"), priority=2)
    caller = asyncio.create_task(manager.shutdown("test"))
    await asyncio.wait_for(entered.wait(), timeout=5)

    # When the caller is cancelled
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()

    # Then shutdown still runs to the end
    report = await asyncio.wait_for(manager.wait_for_shutdown(), timeout=5)
    assert report.stopped == ["slow", "after"]
    assert calls == ["after"]


async def test_state_transitions() -> None:
    # Given a manager with a resource we can hold mid-stop
    entered = asyncio.Event()
    release = asyncio.Event()
    seen: list[ShutdownState] = []
    manager = ShutdownManager()

    async def slow() -> None:
        seen.append(manager.state)
        entered.set()
        await release.wait()

    manager.register("slow", slow)
    assert manager.state is ShutdownState.RUNNING
    assert manager.state == "running"

    # When shutdown starts
    task = asyncio.create_task(manager.shutdown("test"))
    await asyncio.wait_for(entered.wait(), timeout=5)

    # Then it is shutting down while resources stop, and stopped after
    assert manager.state is ShutdownState.SHUTTING_DOWN
    assert manager.state == "shutting-down"
    release.set()
    await asyncio.wait_for(task, timeout=5)
    assert seen == [ShutdownState.SHUTTING_DOWN]
    assert manager.state is ShutdownState.STOPPED
    assert manager.state == "stopped"


async def test_wait_for_shutdown_returns_the_report() -> None:
    # Given a waiter that starts before anyone asks for shutdown
    manager = ShutdownManager()
    manager.register("only", lambda: None)
    waiter = asyncio.create_task(manager.wait_for_shutdown())
    await asyncio.sleep(0)
    assert not waiter.done()

    # When shutdown is requested (as a signal handler would)
    manager.request("SIGTERM")

    # Then the waiter gets the same report as a direct caller
    report = await asyncio.wait_for(waiter, timeout=5)
    assert report.reason == "SIGTERM"
    assert report.stopped == ["only"]
    assert await manager.shutdown("again") is report
    assert manager.report is report


async def test_abort_event_is_set_when_shutdown_starts() -> None:
    # Given in-flight work that watches the abort signal
    manager = ShutdownManager()
    observed_in_stop: list[bool] = []
    manager.register("probe", lambda: observed_in_stop.append(manager.abort_event.is_set()))

    async def in_flight() -> str:
        await manager.abort_event.wait()
        return "aborted"

    work = asyncio.create_task(in_flight())
    assert not manager.aborted

    # When shutdown starts
    manager.request("SIGTERM")

    # Then the signal is visible at once, before any resource stops
    assert manager.aborted
    assert await asyncio.wait_for(work, timeout=5) == "aborted"
    await asyncio.wait_for(manager.wait_for_shutdown(), timeout=5)
    assert observed_in_stop == [True]


def test_register_validation() -> None:
    # Given a manager with one resource
    manager = ShutdownManager()
    manager.register("a", lambda: None)

    # Then duplicates, empty ids and non-positive timeouts are refused
    with pytest.raises(ValueError, match="already registered"):
        manager.register("a", lambda: None)
    with pytest.raises(ValueError):
        manager.register("", lambda: None)
    with pytest.raises(ValueError):
        manager.register("b", lambda: None, timeout=0)


async def test_unregister_and_late_register() -> None:
    # Given two resources, one of which stopped on its own
    calls: list[str] = []
    manager = ShutdownManager()
    manager.register("kept", recorder(calls, "kept"))
    manager.register("gone", recorder(calls, "gone"))
    manager.unregister("gone")
    manager.unregister("never-registered")  # ignored, not an error
    assert manager.resource_ids == ["kept"]

    # When shutting down
    report = await manager.shutdown("test")

    # Then only the registered one stopped, and late registration is refused
    assert calls == ["kept"]
    assert [r.id for r in report.resources] == ["kept"]
    with pytest.raises(ShutdownStarted):
        manager.register("late", lambda: None)


async def test_empty_manager_completes() -> None:
    report = await ShutdownManager().shutdown("nothing registered")
    assert report.state is ShutdownOutcome.COMPLETED
    assert report.resources == []


async def test_report_to_dict_is_json_ready() -> None:
    # Given a shutdown with a stop, a failure and a time-out
    def broken() -> None:
        raise ValueError("bad")

    manager = ShutdownManager()
    manager.register("ok", lambda: None, priority=1)
    manager.register("bad", broken, priority=2)
    manager.register("slow", hang_until_cancelled, priority=3, timeout=0.01)
    report = await manager.shutdown("test")

    # When serialised
    data = json.loads(json.dumps(report.to_dict()))

    # Then it carries every field with plain values
    assert data["reason"] == "test"
    assert data["state"] == "completed-with-errors"
    assert data["stopped"] == ["ok"]
    assert data["failed"] == {"bad": "ValueError: bad"}
    assert data["timed_out"] == ["slow"]
    assert isinstance(data["duration_s"], float)
    assert [(r["id"], r["priority"], r["status"]) for r in data["resources"]] == [
        ("ok", 1, "stopped"),
        ("bad", 2, "failed"),
        ("slow", 3, "timed-out"),
    ]
    assert data["resources"][0]["error"] is None


async def test_logs_key_value_events() -> None:
    # Given one resource
    manager = ShutdownManager()
    manager.register("only", lambda: None)

    # When shutting down
    with capture_logs() as logs:
        await manager.shutdown("SIGTERM")

    # Then the canonical events carry fields, not formatted text
    events = [e["event"] for e in logs]
    assert events[0] == "shutdown.started"
    assert "shutdown.resource.stopped" in events
    assert events[-1] == "shutdown.finished"
    finished = logs[-1]
    assert finished["reason"] == "SIGTERM" and finished["state"] == "completed"


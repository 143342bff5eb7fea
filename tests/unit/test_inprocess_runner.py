"""InProcessRunner: outcomes, cooperative cancellation, abandonment, timeouts, log context, threads.

No Redis: the runner gets a recording RunEvents and a recording child-enqueue. Waits are on
events the handlers set, each under a deadline; the only timers are the runner's own
(timeouts and grace periods of a few tens of milliseconds).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from structlog.contextvars import bound_contextvars, get_contextvars, merge_contextvars
from structlog.testing import capture_logs

from runners.base import CancelSignal, RunRequest, RunResult, RunStatus
from runners.inprocess import InProcessRunner
from runners.invoke import result_json
from supervisor import Context, Failure, PermanentError, Retry, job
from supervisor.handler import JOB_ATTR, JobType

pytestmark = pytest.mark.timeout(10)
WAIT_S = 5.0  # deadline for anything a test waits on
SIGNALS = [CancelSignal, asyncio.Event]  # what the dispatcher hands over now, and what it used to
MARKER: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
JOB_KEYS = {"job_id", "job_name", "attempt", "trace_id", "request_id"}


class Events:
    """RunEvents that records calls and the thread they were made on."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[float, str | None, str | None]] = []
        self.heartbeats = 0
        self.threads: set[int] = set()

    def progress(self, percent: float, message: str | None = None, step: str | None = None) -> None:
        self.progress_calls.append((percent, message, step))
        self.threads.add(threading.get_ident())

    def heartbeat(self) -> None:
        self.heartbeats += 1
        self.threads.add(threading.get_ident())

    def log(self, line: str, stream: str = "stdout") -> None:
        pass


class Harness:
    """One runner serving the handlers of one test."""

    def __init__(self) -> None:
        self.types: dict[str, JobType] = {}
        self.enqueued: list[tuple[str, Any]] = []
        self.events = Events()
        self.runner: InProcessRunner | None = None

    def serve(self, fn: Callable[..., Any], name: str = "t.unit", grace_s: float = 10.0) -> InProcessRunner:
        job(name)(fn)
        self.types[name] = JobType.from_function(fn, getattr(fn, JOB_ATTR)[-1], "test")
        self.runner = InProcessRunner(self.types.get, self._enqueue, threads=4, cancel_grace_s=grace_s)
        return self.runner

    async def _enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> str:
        self.enqueued.append((name, payload))
        return f"child-{len(self.enqueued)}"

    async def run(self, cancel: asyncio.Event | None = None, **fields: Any) -> RunResult:
        assert self.runner is not None
        return await self.runner.run(request(**fields), self.events, cancel if cancel is not None else CancelSignal())


def request(job_id: str = "j1", name: str = "t.unit", timeout_s: float | None = None,
            context: dict[str, str] | None = None) -> RunRequest:
    return RunRequest(job_id=job_id, name=name, attempt=2, payload=None, payload_json="{}",
                      context=context if context is not None else {"trace_id": "t" * 32, "request_id": "r1"},
                      timeout_s=timeout_s)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    if h.runner is not None:
        await h.runner.close()


async def cancel_once_started(harness: Harness, cancel: asyncio.Event, started: asyncio.Event) -> asyncio.Task[Any]:
    """Start a run, wait until its handler has started, then request cancellation; the run."""
    run = asyncio.create_task(harness.run(cancel, timeout_s=30))
    await within(started.wait())
    cancel.set()
    return run


async def within(aw: Any) -> Any:
    return await asyncio.wait_for(aw, WAIT_S)


async def thread_event(event: threading.Event) -> None:
    """Wait for a threading.Event without blocking the loop (fails after the deadline)."""
    assert await asyncio.to_thread(event.wait, WAIT_S), "the handler's thread never got there"


# --- outcomes ------------------------------------------------------------------------


@pytest.mark.parametrize(("returns", "expected"), [
    (lambda: {"n": 1}, RunResult(RunStatus.COMPLETED, result={"n": 1})),
    (lambda: None, RunResult(RunStatus.COMPLETED)),
    (lambda: Failure("card declined", {"code": 7}),
     RunResult(RunStatus.PERMANENT, result={"code": 7}, error="card declined")),
    (lambda: {1, 2}, RunResult(RunStatus.PERMANENT,
                               error="result is not JSON-serializable: Object of type set is not JSON serializable")),
])
async def test_return_values_map_to_outcomes(harness: Harness, returns: Callable[[], Any],
                                             expected: RunResult) -> None:
    async def handler(payload: dict[str, Any], ctx: Context) -> Any:
        return returns()

    harness.serve(handler)
    assert await harness.run() == expected


@pytest.mark.parametrize(("exc", "status", "error"), [
    (ValueError("boom"), RunStatus.FAILED, "ValueError: boom"),
    (PermanentError("no"), RunStatus.PERMANENT, "PermanentError: no"),
    (Retry(delay=3), RunStatus.RETRY, None),
])
async def test_exceptions_map_to_outcomes(harness: Harness, exc: Exception, status: RunStatus,
                                          error: str | None) -> None:
    async def handler(payload: dict[str, Any], ctx: Context) -> None:
        await asyncio.sleep(0)
        raise exc

    harness.serve(handler)
    result = await harness.run()
    assert result.status is status
    if error is not None:
        assert result.error == error
    if status is RunStatus.RETRY:
        assert result.retry_delay_s == 3


def test_result_json_checks_what_it_does_not_dump() -> None:
    assert result_json("x") == "x" and result_json(2**40) == 2**40 and result_json(None) is None
    with pytest.raises(ValueError):  # too many digits for JSON: the fast path must not let it through
        result_json(10**5000)
    with pytest.raises(TypeError):
        result_json(object())


async def test_async_handler_runs_in_the_callers_task(harness: Harness) -> None:
    # Given an async handler that notes the task it runs in
    seen: list[asyncio.Task[Any] | None] = []

    async def handler(payload: dict[str, Any], ctx: Context) -> str:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        return "ok"

    harness.serve(handler)
    # When it runs
    result = await harness.run(timeout_s=30)
    # Then no task of its own was made for it
    assert result.status is RunStatus.COMPLETED
    assert seen == [asyncio.current_task()]


async def test_a_cancelled_error_of_the_handlers_own_is_a_failure_not_a_cancellation(harness: Harness) -> None:
    # Given a handler that awaits a future someone else cancels, recovers, and suspends again
    async def recovers(payload: dict[str, Any], ctx: Context) -> str:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.cancel)
        try:
            await fut
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0)  # must not be taken for a handler that ignores a stop
        return "recovered"

    async def gives_up(payload: dict[str, Any], ctx: Context) -> None:
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.cancel)
        await fut

    harness.serve(recovers, "t.recovers")
    harness.serve(gives_up, "t.gives-up")
    # Then the run is not cancelled: it completes, or fails like any other exception
    assert await harness.run(name="t.recovers") == RunResult(RunStatus.COMPLETED, result="recovered")
    assert (await harness.run(name="t.gives-up")).status is RunStatus.FAILED


# --- cancellation --------------------------------------------------------------------


@pytest.mark.parametrize("make_signal", SIGNALS)
async def test_cancel_while_running_is_cooperative(harness: Harness, make_signal: type[asyncio.Event]) -> None:
    # Given an async handler waiting on its cancel event
    started = asyncio.Event()

    async def handler(payload: dict[str, Any], ctx: Context) -> str:
        assert not ctx.cancelled
        started.set()
        await ctx.cancel_event.wait()
        assert ctx.cancelled
        return "stopped early"

    harness.serve(handler)
    cancel = make_signal()
    # When cancel is requested, once the handler runs
    run = await cancel_once_started(harness, cancel, started)
    # Then the handler returns, and the run ends CANCELLED however it returned
    assert await within(run) == RunResult(RunStatus.CANCELLED, error="cancelled")


@pytest.mark.parametrize("make_signal", SIGNALS)
async def test_cancel_ignored_is_abandoned_after_grace(harness: Harness, make_signal: type[asyncio.Event]) -> None:
    # Given an async handler that ignores ctx.cancelled
    started = asyncio.Event()
    seen: list[str] = []

    async def handler(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append(f"CancelledError, ctx.cancelled={ctx.cancelled}")
            raise

    harness.serve(handler, grace_s=0.05)
    cancel = make_signal()
    # When cancel is requested, once the handler runs
    run = await cancel_once_started(harness, cancel, started)
    # Then after the grace period the handler is cancelled and the run ends CANCELLED
    assert await within(run) == RunResult(RunStatus.CANCELLED, error="cancelled; the handler ignored it")
    assert seen == ["CancelledError, ctx.cancelled=True"]
    assert not run.cancelled()


async def test_handler_that_swallows_the_stop_is_left_to_finish_alone(harness: Harness) -> None:
    # Given a handler that swallows CancelledError and then awaits more (a slow cleanup)
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handler(payload: dict[str, Any], ctx: Context) -> str:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()
        finished.set()
        return "late"

    harness.serve(handler, grace_s=0.05)
    cancel = CancelSignal()
    # When cancel is requested once the handler runs, and the grace period passes
    run = await cancel_once_started(harness, cancel, started)
    # Then the run ends without waiting for the handler
    assert await within(run) == RunResult(RunStatus.CANCELLED, error="cancelled; the handler ignored it")
    assert not finished.is_set()
    # And the handler goes on by itself until it ends
    release.set()
    await within(finished.wait())


async def test_cancel_before_the_run_starts(harness: Harness) -> None:
    # Given a cancel signal already set
    seen: list[bool] = []

    async def handler(payload: dict[str, Any], ctx: Context) -> str:
        seen.append(ctx.cancelled)
        return "ran anyway"

    harness.serve(handler)
    cancel = CancelSignal()
    cancel.set()
    # Then the handler sees it from the start and the run ends CANCELLED
    assert await harness.run(cancel) == RunResult(RunStatus.CANCELLED, error="cancelled")
    assert seen == [True]


async def test_grace_period_ends_at_the_timeout(harness: Harness) -> None:
    # Given a long grace period, a short timeout and a handler ignoring cancellation
    async def handler(payload: dict[str, Any], ctx: Context) -> None:
        await asyncio.sleep(3600)

    harness.serve(handler, grace_s=3600)
    cancel = CancelSignal()
    cancel.set()
    # Then the run ends at the timeout, as CANCELLED (cancel came first)
    result = await within(harness.run(cancel, timeout_s=0.05))
    assert result == RunResult(RunStatus.CANCELLED, error="cancelled; the handler ignored it")


# --- timeouts ------------------------------------------------------------------------


async def test_timeout_cancels_the_handler(harness: Harness) -> None:
    # Given an async handler slower than its timeout
    seen: list[bool] = []

    async def handler(payload: dict[str, Any], ctx: Context) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append(ctx.cancelled)
            raise

    harness.serve(handler)
    # Then the run ends TIMEOUT, with ctx cancelled and the handler cancelled
    assert await within(harness.run(timeout_s=0.05)) == RunResult(RunStatus.TIMEOUT, error="timed out after 0.05s")
    assert seen == [True]


async def test_timeout_stands_however_the_handler_returns(harness: Harness) -> None:
    async def handler(payload: dict[str, Any], ctx: Context) -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "swallowed"
        return "never"

    harness.serve(handler)
    assert (await within(harness.run(timeout_s=0.05))).status is RunStatus.TIMEOUT
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# --- the caller's own cancellation ---------------------------------------------------


@pytest.mark.parametrize("swallow", [False, True])
async def test_outside_cancellation_propagates(harness: Harness, swallow: bool) -> None:
    # Given a running handler (that may swallow CancelledError and go on waiting)
    started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    async def handler(payload: dict[str, Any], ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            if not swallow:
                raise
            await release.wait()
        finally:
            finished.set()

    harness.serve(handler)
    run = asyncio.create_task(harness.run(timeout_s=30))
    await within(started.wait())
    # When the caller's task is cancelled (the dispatcher at shutdown)
    run.cancel()
    await asyncio.wait({run}, timeout=WAIT_S)
    # Then the run raises CancelledError, and the handler was told
    assert run.cancelled()
    assert seen == ["cancelled"]
    release.set()
    await within(finished.wait())


# --- log context ---------------------------------------------------------------------


async def test_log_context_is_bound_for_the_handler_and_does_not_leak(harness: Harness) -> None:
    # Given a handler that logs, and binds a key of its own
    async def handler(payload: dict[str, Any], ctx: Context) -> None:
        structlog.get_logger("t").info("handler.line")
        structlog.contextvars.bind_contextvars(handler_key="h")
        await asyncio.sleep(0)
        ctx.log.info("handler.ctx_line")

    harness.serve(handler)
    with capture_logs(processors=[merge_contextvars]) as logs, bound_contextvars(outer="kept"):
        # When two jobs run one after the other in the same task, logging in between
        await harness.run(job_id="j1", context={"trace_id": "a" * 32, "request_id": "r1"})
        structlog.get_logger("t").info("caller.line")
        await harness.run(job_id="j2", context={"trace_id": "b" * 32})
        after = get_contextvars()
    # Then the handler's lines carry the job's ids (and the caller's context)
    lines = {(e["event"], e.get("job_id")): e for e in logs}
    for job_id, trace_id, request_id in (("j1", "a" * 32, "r1"), ("j2", "b" * 32, None)):
        line = lines["handler.line", job_id]
        assert (line["job_name"], line["attempt"], line["trace_id"], line["request_id"], line["outer"]) == (
            "t.unit", 2, trace_id, request_id, "kept")
        assert "handler_key" not in line
        assert lines["handler.ctx_line", job_id]["handler_key"] == "h"
    # And nothing of the jobs' reaches the caller's later lines or context
    caller = lines["caller.line", None]
    assert caller["outer"] == "kept" and not (JOB_KEYS | {"handler_key"}) & caller.keys()
    assert after == {"outer": "kept"}


# --- sync handlers -------------------------------------------------------------------


async def test_sync_handler_runs_in_a_thread_with_the_context(harness: Harness) -> None:
    # Given a sync handler that reports progress, heartbeats and enqueues a child from its thread
    seen: dict[str, Any] = {}

    def handler(payload: dict[str, Any], ctx: Context) -> dict[str, str]:
        seen.update(thread=threading.get_ident(), marker=MARKER.get(None), log=get_contextvars())
        ctx.progress(50, "half", step="one")
        ctx.heartbeat()
        return {"child": ctx.enqueue("t.child", {"n": 1})}

    harness.serve(handler)
    MARKER.set("from the caller")
    # When it runs
    result = await harness.run(timeout_s=30)
    # Then it ran in another thread, with the caller's context variables and the job's log context
    assert result == RunResult(RunStatus.COMPLETED, result={"child": "child-1"})
    assert seen["thread"] != threading.get_ident()
    assert seen["marker"] == "from the caller"
    assert {k: seen["log"][k] for k in JOB_KEYS} == {
        "job_id": "j1", "job_name": "t.unit", "attempt": 2, "trace_id": "t" * 32, "request_id": "r1"}
    # And its calls reached the daemon on the loop's thread (they were queued before the result)
    assert harness.events.progress_calls == [(50.0, "half", "one")]
    assert harness.events.heartbeats == 1
    assert harness.events.threads == {threading.get_ident()}
    assert harness.enqueued == [("t.child", {"n": 1})]
    assert not JOB_KEYS & get_contextvars().keys()


async def test_async_handler_reports_on_the_loop(harness: Harness) -> None:
    async def handler(payload: dict[str, Any], ctx: Context) -> str:
        await ctx.progress(40, "resizing", step="resize")
        ctx.heartbeat()
        return str(await ctx.enqueue("t.child", {"n": 2}))

    harness.serve(handler)
    assert await harness.run() == RunResult(RunStatus.COMPLETED, result="child-1")
    assert harness.events.progress_calls == [(40.0, "resizing", "resize")]
    assert harness.events.heartbeats == 1


async def test_sync_cancel_is_cooperative(harness: Harness) -> None:
    # Given a sync handler waiting on its (threading) cancel event
    started = threading.Event()

    def handler(payload: dict[str, Any], ctx: Context) -> str:
        assert isinstance(ctx.cancel_event, threading.Event)
        started.set()
        assert ctx.cancel_event.wait(WAIT_S)
        return "stopped early"

    harness.serve(handler)
    cancel = CancelSignal()
    run = asyncio.create_task(harness.run(cancel, timeout_s=30))
    await thread_event(started)
    # When cancel is requested
    cancel.set()
    # Then the handler's thread wakes and the run ends CANCELLED
    assert await within(run) == RunResult(RunStatus.CANCELLED, error="cancelled")


@pytest.mark.parametrize("ending", ["timeout", "ignored cancel"])
async def test_sync_handler_that_will_not_stop_is_abandoned(harness: Harness, ending: str) -> None:
    # Given a sync handler that blocks until the test releases it, ignoring ctx.cancelled
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def handler(payload: dict[str, Any], ctx: Context) -> str:
        started.set()
        release.wait(WAIT_S)
        seen.append(ctx.cancelled)
        finished.set()
        return "late"

    harness.serve(handler, grace_s=0.05)
    cancel = CancelSignal()
    run = asyncio.create_task(harness.run(cancel, timeout_s=0.05 if ending == "timeout" else 30))
    await thread_event(started)
    if ending == "ignored cancel":
        cancel.set()
    # Then the run ends without its thread, which cannot be stopped
    expected = (RunResult(RunStatus.TIMEOUT, error="timed out after 0.05s") if ending == "timeout"
                else RunResult(RunStatus.CANCELLED, error="cancelled; the handler ignored it"))
    assert await within(run) == expected
    assert not finished.is_set()
    release.set()
    await thread_event(finished)
    assert seen == [True]


# --- Context and CancelSignal --------------------------------------------------------


@pytest.mark.parametrize("ask_first", [True, False])
def test_sync_cancel_event_is_set_from_another_thread(ask_first: bool) -> None:
    # Given a sync handler's Context, whose Event may be asked for before or after the cancel
    ctx = Context.for_test(is_async=False)
    event = ctx.cancel_event if ask_first else None
    # When another thread cancels it
    canceller = threading.Thread(target=ctx.cancel)
    canceller.start()
    canceller.join(WAIT_S)
    # Then the handler sees it either way
    assert ctx.cancelled
    assert (event or ctx.cancel_event).wait(WAIT_S)
    assert ctx.cancel_event is ctx.cancel_event


async def test_cancel_signal_calls_back_once() -> None:
    calls: list[str] = []
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    signal = CancelSignal()

    def fails() -> None:
        raise RuntimeError("runner bug")

    signal.add_callback(fails)
    signal.add_callback(lambda: calls.append("a"))
    def removed() -> None:
        calls.append("removed")

    signal.add_callback(removed)
    signal.remove_callback(removed)
    signal.remove_callback(removed)  # not registered: no error
    # When it is set (twice)
    signal.set()
    signal.set()
    # Then each callback ran once, a failing one did not stop the others nor the setter
    assert calls == ["a"] and signal.is_set()
    assert [type(e["exception"]) for e in errors] == [RuntimeError]
    # And a callback added once it is set runs at once
    signal.add_callback(lambda: calls.append("late"))
    assert calls == ["a", "late"]
    await within(signal.wait())

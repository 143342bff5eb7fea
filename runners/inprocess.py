"""The `inprocess` runner: async handlers on the daemon's event loop, sync ones in a thread pool.

Lowest overhead, no isolation: a handler that blocks the loop or leaks memory
affects the daemon. A sync handler past its `timeout` is reported as timed
out, but its thread cannot be killed; use the `process` runtime when a hard
limit matters.

An async handler runs inside the task that awaits `run` (the dispatcher's task
for the job), not in a task of its own: the loop does one step less per job and
holds no extra task. Each of its steps runs in the run's own copy of the
context, as a task's would, so the job's log context and whatever the handler
binds stay out of the caller's context.

Looking the handler up, building its Context and mapping its outcome are
`runners.invoke`'s, as in every Python runtime; this module owns where the call
runs and how cancel, timeout and grace act on it.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from runners.base import CancelSignal, RunEvents, RunRequest, RunResult, RunStatus
from runners.invoke import (
    ChildEnqueue,
    arguments,
    bind_log_context,
    outcome_of,
    outcome_of_exception,
    prepare,
)
from supervisor.context import Context
from supervisor.handler import JobType

log = structlog.get_logger(__name__)


class _Sink:
    """Context calls -> RunEvents / child enqueue, safe from the loop thread or a worker thread."""

    __slots__ = ("_enqueue", "_events", "_loop")

    def __init__(self, events: RunEvents, loop: asyncio.AbstractEventLoop, enqueue: ChildEnqueue) -> None:
        self._events = events
        self._loop = loop
        self._enqueue = enqueue

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def progress(self, percent: float, message: str | None, step: str | None) -> None:
        if self._on_loop():
            self._events.progress(percent, message, step)
        else:
            self._loop.call_soon_threadsafe(self._events.progress, percent, message, step)

    def heartbeat(self) -> None:
        if self._on_loop():
            self._events.heartbeat()
        else:
            self._loop.call_soon_threadsafe(self._events.heartbeat)

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        coro = self._enqueue(name, payload, options, submit)
        if self._on_loop():
            return coro
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]


class InProcessRunner:
    """Runs handlers in the daemon's own process."""

    kind = "inprocess"

    def __init__(
        self, lookup: Callable[[str], JobType | None], enqueue: ChildEnqueue, threads: int = 32,
        cancel_grace_s: float = 10.0,
    ) -> None:
        self.cancel_grace_s = cancel_grace_s
        self._lookup = lookup
        self._enqueue = enqueue
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="job")
        self._abandoned: set[asyncio.Task[None]] = set()  # async handlers left to finish on their own

    async def run(self, request: RunRequest, events: RunEvents, cancel: asyncio.Event) -> RunResult:
        """Run one attempt in the calling task (async handlers) or the thread pool (sync ones).

        Cancellation is cooperative: the handler sees `ctx.cancelled` and should return.
        Once cancelled, the run ends CANCELLED however the handler ends; one that ignores
        it for `cancel_grace_s` is abandoned (an async handler gets CancelledError; a thread
        cannot be stopped). Past `timeout_s` the run ends TIMEOUT the same way. Cancelling
        the calling task cancels the handler and raises CancelledError here, as usual.
        """
        jt = self._lookup(request.name)
        loop = asyncio.get_running_loop()
        ctx = prepare(jt, request.job_id, request.name, request.attempt, request.payload_json, request.context,
                      request.deadline, _Sink(events, loop, self._enqueue), "this instance")
        if isinstance(ctx, RunResult):
            return ctx
        assert jt is not None  # prepare() found it
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("InProcessRunner.run must be awaited in a task")
        args = arguments(jt, ctx)
        # The run's own context: bound here, it needs no reset and reaches no other job's lines.
        run_context = contextvars.copy_context()
        run_context.run(bind_log_context, request.job_id, request.name, request.attempt, request.context)
        watch = _Watch(task, ctx, cancel, self.cancel_grace_s, request.timeout_s)
        value: Any = None
        error: BaseException | None = None
        try:
            if jt.is_async:
                value = await _drive(jt.handler(*args), run_context, watch, self._finish_alone)
            else:
                value = await loop.run_in_executor(self._pool, run_context.run, jt.handler, *args)
        except BaseException as exc:  # noqa: BLE001 (sorted out below, once the watch is over)
            error = exc
        try:
            owner_cancelled = watch.finish()
            if error is not None and not isinstance(error, (Exception, asyncio.CancelledError)):
                raise error  # KeyboardInterrupt, SystemExit, GeneratorExit: not the handler's outcome
            if owner_cancelled:  # the caller cancelled its task: it expects CancelledError, however the handler ended
                if isinstance(error, asyncio.CancelledError):
                    raise error
                raise asyncio.CancelledError from error
            if watch.ended_by == "timeout":
                return RunResult(RunStatus.TIMEOUT, error=f"timed out after {request.timeout_s:g}s")
            if watch.ended_by == "cancel" or cancel.is_set():
                return RunResult(RunStatus.CANCELLED,
                                 error="cancelled; the handler ignored it" if watch.fired else "cancelled")
            if error is not None:
                return outcome_of_exception(error)
            return outcome_of(value)
        finally:
            del error  # its traceback holds this frame: no cycle for the GC to find

    def _finish_alone(self, coro: Coroutine[Any, Any, Any], signal: Any, run_context: contextvars.Context) -> None:
        """Let a handler that would not stop finish in a task of its own; the run ends without it."""
        task = asyncio.get_running_loop().create_task(_finish(coro, signal), context=run_context)
        self._abandoned.add(task)
        task.add_done_callback(self._forget, context=run_context)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("run.abandoned_handler_failed", error=repr(task.exception()))

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Watch:
    """One run's timeout, cancel request and grace period, acted out on the task that awaits the run.

    To end a run early, the watch cancels that task, which throws CancelledError into the
    handler (async) or stops waiting for the thread (sync). `cancelling()`/`uncancel()` tell
    our own cancellation from the caller's, as `asyncio.timeout` does.
    """

    __slots__ = ("_base", "_cancel", "_ctx", "_done", "_grace_s", "_limit", "_task", "_timer", "_watcher",
                 "ended_by", "fired")

    def __init__(
        self, task: asyncio.Task[Any], ctx: Context, cancel: asyncio.Event, grace_s: float, timeout: float | None,
    ) -> None:
        loop = task.get_loop()
        self._task = task
        self._ctx = ctx
        self._cancel = cancel
        self._grace_s = grace_s
        self._base = task.cancelling()
        self._done = False
        self.ended_by: str | None = None  # "timeout" or "cancel": what ended the run early
        self.fired = False  # we cancelled the task
        self._limit = None if timeout is None else loop.time() + timeout
        self._timer = None if self._limit is None else loop.call_at(self._limit, self._time_out)
        self._watcher: asyncio.Future[Any] | None = None
        if isinstance(cancel, CancelSignal):
            cancel.add_callback(self._cancel_requested)
        elif cancel.is_set():
            self._cancel_requested()
        else:  # a plain asyncio.Event can only be waited on
            self._watcher = asyncio.ensure_future(cancel.wait())
            self._watcher.add_done_callback(self._watched)

    def stopping(self) -> bool:
        """True once the task was asked to stop (by this watch or by its owner)."""
        return self._task.cancelling() > self._base

    def finish(self) -> bool:
        """Stop watching; True when the task's owner cancelled it (the run must raise CancelledError)."""
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        elif isinstance(self._cancel, CancelSignal):
            self._cancel.remove_callback(self._cancel_requested)
        left = self._task.uncancel() if self.fired else self._task.cancelling()
        return left > self._base

    def _cancel_requested(self) -> None:
        if self._done or self.ended_by is not None:
            return
        self.ended_by = "cancel"
        self._ctx._set_cancelled()  # noqa: SLF001 (the runner owns the context)
        if self._timer is not None:
            self._timer.cancel()
        loop = self._task.get_loop()
        at = loop.time() + self._grace_s
        self._timer = loop.call_at(at if self._limit is None else min(at, self._limit), self._stop_task)

    def _watched(self, watcher: asyncio.Future[Any]) -> None:
        if not watcher.cancelled():
            self._cancel_requested()

    def _time_out(self) -> None:
        self.ended_by = "timeout"
        self._ctx._set_cancelled()  # noqa: SLF001  (the runtime owns the Context)
        self._stop_task()

    def _stop_task(self) -> None:
        if not self._done:
            self.fired = True
            self._task.cancel()


FinishAlone = Callable[[Coroutine[Any, Any, Any], Any, contextvars.Context], None]


@types.coroutine
def _drive(
    coro: Coroutine[Any, Any, Any], run_context: contextvars.Context, watch: _Watch, finish_alone: FinishAlone,
) -> Generator[Any, Any, Any]:
    """Await `coro` in the calling task, each step in `run_context` (as a task of its own would do).

    What the task throws in (CancelledError, or the failure of what the handler awaits) goes
    on to the handler. Once the task was asked to stop, the handler gets one step to end:
    if it suspends again (it swallowed CancelledError, or awaits in its cleanup), it is
    handed to `finish_alone`, and the run ends here with CancelledError.
    """
    step: Callable[[Any], Any] = coro.send
    arg: Any = None
    stop_delivered = False
    while True:
        try:
            signal = run_context.run(step, arg)
        except StopIteration as stop:
            return stop.value
        if stop_delivered:
            finish_alone(coro, signal, run_context)
            raise asyncio.CancelledError
        try:
            arg = yield signal
            step = coro.send
        except GeneratorExit:  # the caller's coroutine is being closed
            run_context.run(coro.close)
            raise
        except BaseException as exc:  # noqa: BLE001 (the handler's to deal with)
            arg, step = exc, coro.throw
            stop_delivered = watch.stopping()


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], signal: Any) -> Generator[Any, Any, None]:
    """Go on with a handler that last suspended on `signal` (in the task that awaits this)."""
    step: Callable[[Any], Any]
    while True:
        try:
            arg = yield signal
        except BaseException as exc:  # noqa: BLE001 (the handler's to deal with)
            step, arg = coro.throw, exc
        else:
            step = coro.send
        try:
            signal = step(arg)
        except StopIteration:
            return


async def _finish(coro: Coroutine[Any, Any, Any], signal: Any) -> None:
    await _resume(coro, signal)

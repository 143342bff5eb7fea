"""The `inprocess` runner: async handlers on the daemon's event loop, sync ones in a thread pool.

Lowest overhead, no isolation: a handler that blocks the loop or leaks memory
affects the daemon. A sync handler past its `timeout` is reported as timed
out, but its thread cannot be killed; use the `process` runtime when a hard
limit matters.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel

from runners.base import RunEvents, RunRequest, RunResult, RunStatus
from supervisor.context import Context
from supervisor.errors import InvalidPayload, PermanentError, Retry
from supervisor.handler import Failure, JobType

ChildEnqueue = Callable[[str, Any, dict[str, Any], bool], Awaitable[Any]]


def result_json(value: Any) -> Any:
    """A handler's return value in JSON-ready form (TypeError when it has none)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    json.dumps(value)  # raises TypeError/ValueError for what JSON cannot hold
    return value


def outcome_of(value: Any) -> RunResult:
    """Map a handler's return value to a RunResult."""
    if isinstance(value, Failure):
        return RunResult(RunStatus.PERMANENT, result=value.result, error=value.error)
    try:
        return RunResult(RunStatus.COMPLETED, result=result_json(value))
    except (TypeError, ValueError) as exc:
        return RunResult(RunStatus.PERMANENT, error=f"result is not JSON-serializable: {exc}")


def outcome_of_exception(exc: BaseException) -> RunResult:
    """Map an exception raised by a handler to a RunResult."""
    if isinstance(exc, PermanentError):
        return RunResult(RunStatus.PERMANENT, error=f"PermanentError: {exc}")
    if isinstance(exc, Retry):
        return RunResult(RunStatus.RETRY, error=f"Retry: {exc}", retry_delay_s=exc.delay)
    if isinstance(exc, InvalidPayload):
        return RunResult(RunStatus.PERMANENT, error=str(exc))
    return RunResult(RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")


class _Sink:
    """Context calls -> RunEvents / child enqueue, safe from the loop thread or a worker thread."""

    __slots__ = ("_events", "_loop", "_enqueue")

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

    async def run(self, request: RunRequest, events: RunEvents, cancel: asyncio.Event) -> RunResult:
        jt = self._lookup(request.name)
        if jt is None:
            return RunResult(RunStatus.FAILED, error=f"no handler for {request.name!r} in this instance")
        try:
            payload = jt.payload.from_json(request.payload_json)
        except InvalidPayload as exc:
            return RunResult(RunStatus.PERMANENT, error=str(exc))
        loop = asyncio.get_running_loop()
        ctx = Context(
            job_id=request.job_id, job_name=request.name, attempt=request.attempt, payload=payload,
            context=request.context,
            deadline=datetime.fromtimestamp(request.deadline, tz=UTC) if request.deadline else None,
            sink=_Sink(events, loop, self._enqueue), is_async=jt.is_async,
        )
        args = (payload, ctx) if jt.takes_context else (payload,)
        bound = {
            "job_id": request.job_id, "job_name": request.name, "attempt": request.attempt,
            "trace_id": request.context.get("trace_id"), "request_id": request.context.get("request_id"),
        }
        with structlog.contextvars.bound_contextvars(**bound):
            if jt.is_async:
                work: asyncio.Future[Any] = asyncio.ensure_future(jt.handler(*args))
            else:
                work = loop.run_in_executor(self._pool, contextvars.copy_context().run, jt.handler, *args)
        return await self._supervise(work, ctx, cancel, request.timeout_s, jt.is_async)

    async def _supervise(
        self, work: asyncio.Future[Any], ctx: Context, cancel: asyncio.Event, timeout: float | None,
        cancellable: bool,
    ) -> RunResult:
        """Wait for the handler, passing cancellation in and enforcing the timeout.

        Cancellation is cooperative: the handler sees `ctx.cancelled` and should return.
        Once cancelled, the run ends CANCELLED however the handler ends; one that ignores
        it for `cancel_grace_s` is abandoned (an async task is cancelled; a thread cannot be).
        """
        loop = asyncio.get_running_loop()
        limit = None if timeout is None else loop.time() + timeout
        watcher = asyncio.ensure_future(cancel.wait())
        try:
            done, _ = await asyncio.wait({work, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if work not in done and watcher in done:
                ctx._set_cancelled()  # noqa: SLF001 (the runner owns the context)
                grace = self.cancel_grace_s if limit is None else min(self.cancel_grace_s, limit - loop.time())
                done, _ = await asyncio.wait({work}, timeout=max(grace, 0.0))
                if work not in done:
                    if cancellable:
                        work.cancel()
                    return RunResult(RunStatus.CANCELLED, error="cancelled; the handler ignored it")
            if work not in done:
                if cancellable:
                    work.cancel()
                ctx._set_cancelled()  # noqa: SLF001
                return RunResult(RunStatus.TIMEOUT, error=f"timed out after {timeout:g}s")
        finally:
            watcher.cancel()
        if cancel.is_set():
            return RunResult(RunStatus.CANCELLED, error="cancelled")
        exc = work.exception()
        if exc is not None:
            return outcome_of_exception(exc)
        return outcome_of(work.result())

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

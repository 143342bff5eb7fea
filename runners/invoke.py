"""One invocation of a handler, the same in every Python runtime.

`inprocess` (the daemon's loop or its threads), the `process` pool's workers
(`runners.pool.child`) and `runners.pyjob` (`runtime="subprocess"`) call a handler
the same way: look it up, decode and validate the payload against its model, build
its `Context` (`prepare`), call it (`call`, or the in-process runner's own driving
of the task that awaits the run), and map how it ended to a `RunResult`
(`outcome_of`, `outcome_of_exception`: a failure keeps its bounded stack trace).
The runtimes differ only in where the call runs and where the Context's calls go:
the `ContextSink` each one hands to `prepare`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import BaseModel

from runners.base import RunResult, RunStatus, traceback_text
from supervisor.context import Context, ContextSink
from supervisor.errors import InvalidPayload, PermanentError, Retry
from supervisor.handler import Failure, JobType

#: Performs a handler's `ctx.enqueue`/`ctx.submit` in the daemon: (name, payload, options, submit).
ChildEnqueue = Callable[[str, Any, dict[str, Any], bool], Awaitable[Any]]

_SCALARS = (type(None), bool, str, float)  # json.dumps takes any of these
_INT_LIMIT = 1 << 64  # far below the digits limit of int -> str


def prepare(
    jt: JobType | None, job_id: str, name: str, attempt: int, payload_json: str, context: dict[str, str],
    deadline: float | None, sink: ContextSink, where: str,
) -> Context | RunResult:
    """The Context to call `jt`'s handler with, or the RunResult that ends the run before any call.

    Args:
        jt: the job type looked up by `name` (None: this runtime has no handler for it).
        deadline: the job's deadline, epoch seconds.
        sink: where the Context's calls go (the runtime's own).
        where: names this runtime in the error when there is no handler (`this instance`).
    """
    if jt is None:
        return RunResult(RunStatus.FAILED, error=f"no handler for {name!r} in {where}")
    try:
        payload = jt.payload.from_json(payload_json)
    except InvalidPayload as exc:
        return RunResult(RunStatus.PERMANENT, error=str(exc))
    return Context(
        job_id=job_id, job_name=name, attempt=attempt, payload=payload, context=context,
        deadline=datetime.fromtimestamp(deadline, tz=UTC) if deadline else None,
        sink=sink, is_async=jt.is_async,
    )


def arguments(jt: JobType, ctx: Context) -> tuple[Any, ...]:
    """What the handler is called with: the payload, and the Context when it takes one."""
    return (ctx.payload, ctx) if jt.takes_context else (ctx.payload,)


def call(jt: JobType, ctx: Context) -> RunResult:
    """Call the handler on this thread to its end and say how it ended (pool workers' sync lanes,
    pyjob; an async handler on a fresh event loop, as `asyncio.run`).

    SystemExit and KeyboardInterrupt are not the handler's outcome: they end the process (in a
    pool worker, the daemon then reports the job as a crash and replaces the worker).
    """
    args = arguments(jt, ctx)
    try:
        value = asyncio.run(jt.handler(*args)) if jt.is_async else jt.handler(*args)
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 (the handler's failure)
        return outcome_of_exception(exc)
    return outcome_of(value)


async def call_async(jt: JobType, ctx: Context) -> RunResult:
    """`call` of an async handler on the running event loop (a pool worker's loop thread)."""
    try:
        value = await jt.handler(*arguments(jt, ctx))
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 (the handler's failure)
        return outcome_of_exception(exc)
    return outcome_of(value)


def result_json(value: Any) -> Any:
    """A handler's return value in JSON-ready form (TypeError when it has none)."""
    if type(value) in _SCALARS or (type(value) is int and -_INT_LIMIT < value < _INT_LIMIT):
        return value  # the common cases, without dumping them just to check
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
    """Map an exception raised by a handler to a RunResult (with its stack trace, unless it is a request)."""
    if isinstance(exc, PermanentError):
        return RunResult(RunStatus.PERMANENT, error=f"PermanentError: {exc}", traceback=traceback_text(exc))
    if isinstance(exc, Retry):
        return RunResult(RunStatus.RETRY, error=f"Retry: {exc}", retry_delay_s=exc.delay)
    if isinstance(exc, InvalidPayload):
        return RunResult(RunStatus.PERMANENT, error=str(exc))
    return RunResult(RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}", traceback=traceback_text(exc))


def _log_vars(keys: tuple[str, ...]) -> tuple[contextvars.ContextVar[Any], ...]:
    """structlog's own ContextVars for `keys` (the tokens of a bind name them; the bind itself is thrown away)."""
    tokens = contextvars.Context().run(structlog.contextvars.bind_contextvars, **dict.fromkeys(keys))
    return tuple(tokens[k].var for k in keys)


_JOB_ID, _JOB_NAME, _ATTEMPT, _TRACE_ID, _REQUEST_ID = _log_vars(
    ("job_id", "job_name", "attempt", "trace_id", "request_id"))


def bind_log_context(job_id: str, name: str, attempt: int, context: dict[str, str]) -> None:
    """`bind_contextvars` for the job's ids, in the current context (the run's own) and 5x cheaper."""
    _JOB_ID.set(job_id)
    _JOB_NAME.set(name)
    _ATTEMPT.set(attempt)
    _TRACE_ID.set(context.get("trace_id"))
    _REQUEST_ID.set(context.get("request_id"))


__all__ = ["ChildEnqueue", "arguments", "bind_log_context", "call", "call_async", "outcome_of", "outcome_of_exception",
           "prepare", "result_json"]

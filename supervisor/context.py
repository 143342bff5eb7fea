"""`Context`: what a handler knows about the run it is in, and can do from it.

A Context reaches the daemon through a `ContextSink` (progress, heartbeat,
child jobs). Runners give it a sink wired to the dispatcher; `Context.for_test`
gives it one that records calls, so handlers are testable as plain functions.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Awaitable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog


class ContextSink(Protocol):
    """Where a Context's calls go. Every method may be called from any thread."""

    def progress(self, percent: float, message: str | None, step: str | None) -> None: ...

    def heartbeat(self) -> None: ...

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        """Awaitable when called on the daemon's loop; the result itself from another thread."""


class _Done:
    """An awaitable that is already finished (so `await ctx.progress(...)` works in async code)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_DONE = _Done()


def child_context(parent: dict[str, str], parent_job: str) -> dict[str, str]:
    """Trace context for a job enqueued by a running job: same request and trace.

    `traceparent` is the running attempt's own: the dispatcher sets the run's context to
    its process span, so the child's enqueue span (and with it the child) hangs under it.
    The client gives the child its own span id at enqueue (see `supervisor.observability.telemetry`).
    """
    trace_id = parent.get("trace_id") or secrets.token_hex(16)
    traceparent = parent.get("traceparent") or ""
    if traceparent.count("-") != 3 or traceparent.split("-")[1] != trace_id:
        traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    ctx = {
        "request_id": parent.get("request_id") or secrets.token_hex(8),
        "trace_id": trace_id,
        "traceparent": traceparent,
        "parent_job": parent_job,
    }
    if parent.get("tracestate"):
        ctx["tracestate"] = parent["tracestate"]
    return ctx


class DependencyResults(Mapping[str, Any]):
    """What a job's dependencies returned, by job id and by type name (see `Context.dependency_results`)."""

    def __init__(self, entries: dict[str, dict[str, Any]]) -> None:
        self._by_id = {dep: e.get("result") for dep, e in entries.items()}
        self.states: dict[str, str] = {dep: str(e.get("state")) for dep, e in entries.items()}
        self.by_type: dict[str, list[Any]] = {}
        for e in entries.values():
            self.by_type.setdefault(str(e.get("name")), []).append(e.get("result"))

    @classmethod
    def parse(cls, text: str | None) -> DependencyResults:
        if not text:
            return cls({})
        doc = json.loads(text)
        return cls(doc if isinstance(doc, dict) else {})

    def __getitem__(self, key: str) -> Any:
        if key in self._by_id:
            return self._by_id[key]
        results = self.by_type.get(key)
        if results is None:
            raise KeyError(key)
        if len(results) > 1:
            raise KeyError(f"{key!r}: {len(results)} dependencies of that type; use .by_type[{key!r}]")
        return results[0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, key: object) -> bool:
        return key in self._by_id or key in self.by_type

    def __repr__(self) -> str:
        return f"DependencyResults({self._by_id!r})"


class _CancelFlag:
    """A `threading.Event` that is only built when a handler waits on it.

    Most runs only ever read `ctx.cancelled`, and an Event (a Condition and a lock) costs
    more than the rest of the Context. `set` may come from any thread: it stores the flag
    before it looks for the Event, and `event` stores the Event before it reads the flag,
    so whichever comes second sees the other (the GIL orders them).
    """

    __slots__ = ("_event", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._event: threading.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        event = self._event
        if event is not None:
            event.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._flag or self.event().wait(timeout)

    def event(self) -> threading.Event:
        """The Event itself (built on first use; set if the flag already is)."""
        if self._event is None:
            with _EVENT_LOCK:  # two threads asking at once must get the same Event
                if self._event is None:
                    self._event = threading.Event()
        if self._flag:
            self._event.set()
        return self._event


_EVENT_LOCK = threading.Lock()


class Context:
    """The run a handler is in: ids, attempt, payload, trace context, cancellation, and actions."""

    def __init__(
        self,
        *,
        job_id: str,
        job_name: str,
        attempt: int,
        payload: Any,
        context: dict[str, str],
        deadline: datetime | None,
        sink: ContextSink,
        is_async: bool,
        cancel: threading.Event | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_name = job_name
        self.attempt = attempt
        self.is_redelivery = attempt > 1
        self.payload = payload
        self.context = context
        self.deadline = deadline
        self._sink = sink
        self._is_async = is_async
        self._cancel: threading.Event | _CancelFlag = cancel if cancel is not None else _CancelFlag()
        self._async_cancel: asyncio.Event | None = None
        self._log: Any = None
        self._deps: DependencyResults | None = None

    # --- cancellation ----------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """True once a producer or operator cancelled this job (or its lease was lost)."""
        return self._cancel.is_set()

    @property
    def cancel_event(self) -> Any:
        """An `asyncio.Event` in async handlers, a `threading.Event` in sync ones."""
        if not self._is_async:
            return self._cancel.event() if isinstance(self._cancel, _CancelFlag) else self._cancel
        if self._async_cancel is None:
            self._async_cancel = asyncio.Event()
            if self._cancel.is_set():
                self._async_cancel.set()
        return self._async_cancel

    def _set_cancelled(self) -> None:
        """Called by the runner (on the daemon's loop) when cancellation arrives."""
        self._cancel.set()
        if self._async_cancel is not None:
            self._async_cancel.set()

    # --- reporting -------------------------------------------------------------------

    def progress(self, percent: float, message: str | None = None, step: str | None = None) -> Awaitable[None]:
        """Record progress (0-100) on the job; awaitable, but works without await too."""
        self._sink.progress(max(0.0, min(100.0, float(percent))), message, step)
        return _DONE

    def heartbeat(self) -> Awaitable[None]:
        """Extend the lease now (running jobs are also heartbeated automatically)."""
        self._sink.heartbeat()
        return _DONE

    # --- dependencies ----------------------------------------------------------------

    @property
    def dependency_results(self) -> DependencyResults:
        """The results of the jobs this one waited for (`depends_on`, a workflow's earlier steps):
        `ctx.dependency_results[job_id]`, or `[type_name]` for the one dependency of that type;
        `.by_type[type_name]` lists them all; `.states` says how each ended. Empty for a job without."""
        if self._deps is None:
            self._deps = DependencyResults.parse(self.context.get("dependency_results"))
        return self._deps

    # --- child jobs ------------------------------------------------------------------

    def enqueue(self, name: str, payload: Any = None, **options: Any) -> Any:
        """Enqueue a child job that continues this job's request and trace.

        Await it in async handlers; in sync handlers it returns the JobRef directly.
        """
        return self._sink.enqueue(name, payload, self._child_options(options), False)

    def submit(self, name: str, payload: Any = None, **options: Any) -> Any:
        """Like `enqueue`, but returns an outcome instead of raising on rejection."""
        return self._sink.enqueue(name, payload, self._child_options(options), True)

    def _child_options(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("context", child_context(self.context, self.job_id))
        options.setdefault("parent", self.job_id)
        return options

    # --- logging ---------------------------------------------------------------------

    @property
    def log(self) -> Any:
        """A structlog logger bound to this job's ids."""
        if self._log is None:
            self._log = structlog.get_logger("job").bind(
                job_id=self.job_id, job_name=self.job_name, attempt=self.attempt,
                trace_id=self.context.get("trace_id"), request_id=self.context.get("request_id"),
            )
        return self._log

    # --- tests -----------------------------------------------------------------------

    @classmethod
    def for_test(
        cls,
        payload: Any = None,
        *,
        job_name: str = "test.job",
        job_id: str = "000000-0000000000000000",
        attempt: int = 1,
        context: dict[str, str] | None = None,
        deadline: datetime | None = None,
        is_async: bool = True,
        dependency_results: dict[str, dict[str, Any]] | None = None,
    ) -> TestContext:
        """A Context for calling a handler directly in a unit test; it records what the handler did.
        `dependency_results`: what `ctx.dependency_results` holds, by job id:
        {"<id>": {"name": "<type>", "state": "completed", "result": ...}}."""
        sink = RecordingSink()
        context = context or {"request_id": "test-request", "trace_id": "0" * 32}
        if dependency_results is not None:
            context = {**context, "dependency_results": json.dumps(dependency_results)}
        ctx = TestContext(
            job_id=job_id, job_name=job_name, attempt=attempt, payload=payload,
            context=context,
            deadline=deadline, sink=sink, is_async=is_async,
        )
        ctx.recorded = sink
        return ctx


@dataclass
class EnqueuedChild:
    name: str
    payload: Any
    options: dict[str, Any]


@dataclass
class RecordingSink:
    """A ContextSink that records calls instead of talking to Redis."""

    progress_calls: list[tuple[float, str | None, str | None]] = field(default_factory=list)
    heartbeats: int = 0
    enqueued: list[EnqueuedChild] = field(default_factory=list)

    def progress(self, percent: float, message: str | None, step: str | None) -> None:
        self.progress_calls.append((percent, message, step))

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:  # noqa: ARG002  (sink API)
        from supervisor.producers.client import JobRef  # noqa: PLC0415

        self.enqueued.append(EnqueuedChild(name, payload, options))
        ref = JobRef(id=f"test-{len(self.enqueued)}", name=name, existing=False)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return ref

        async def done() -> JobRef:
            return ref

        return done()


class TestContext(Context):
    """A Context from `Context.for_test`: `.recorded` holds progress, heartbeats, child jobs."""

    __test__ = False  # not a pytest test class
    recorded: RecordingSink

    def cancel(self) -> None:
        """Simulate a cancellation request."""
        self._set_cancelled()

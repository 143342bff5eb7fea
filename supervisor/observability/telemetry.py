"""Traces (OpenTelemetry) of the daemon and its producers: the `Tracing` object and W3C trace context.

Trace context. Every job carries a request id and a W3C trace context
(`trace_id`, `traceparent`, `tracestate`) from its enqueue, whether or not
anything exports spans:

- the client opens a producer span `enqueue <name>` whose parent is, in
  order: the `traceparent` of an explicit `context=` (a child job: the process
  span of the job that enqueued it; the admin API: the caller's header), else
  the caller's active span (a web request), else nothing (a fresh trace). The
  job stores that span's context as its `traceparent`. With tracing off the
  client mints the same ids itself (same trace, a new span id), so log lines
  and tasks see a trace either way;
- the dispatcher opens a consumer span `process <name>` per attempt (through
  `supervisor.observability.run_observer`), child of the stored `traceparent`, with events
  `job.started`, `job.progress`, `job.exception`, `job.failed` /
  `job.completed` / `job.cancelled`. The run's `context["traceparent"]` is
  replaced by that span's, so a subprocess task's `TRACEPARENT` and a
  handler's child jobs hang under the process span;
- the scheduler opens a root span `schedule <id>` per fired tick; the tick's
  enqueue span is its child.

Where spans go is a `Tracing` instance, made by whoever composes the program
(the daemon from its settings, a producer's `Client` from the process's own
OpenTelemetry configuration) and handed to the objects that open spans. This
module keeps no state of its own: the functions below it are pure.

Cost when off. `otel_exporter = "none"` installs nothing: unless the process
has a tracer provider of its own (an application embedding the client), every
`Tracing` method returns at a single check and no span object is ever created.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context, trace
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
    TraceState,
)

from supervisor.observability.log import LazyLogger

log = LazyLogger(__name__)  # structlog is imported by the first line: a CLI enqueue logs none

INSTRUMENTATION = "job-supervisor"
MESSAGING_SYSTEM = "job-supervisor"
_MISSING = object()
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ  # read once: OpenTelemetry reads it once too


class Tracing:
    """Where this program's job-supervisor spans go: a tracer provider, the process's global one, or nowhere.

    `Tracing()` records nothing. `Tracing(provider)` sends spans to `provider` (an SDK
    `TracerProvider`; with `owned`, `shutdown` shuts it down). `Tracing.from_process()` follows the
    process's global provider, looked up at each use until one is set (an application may set
    it after making its client). Each span-opening method returns at one check when off.
    """

    __slots__ = ("_follow", "_global", "_owned", "_tracer", "provider")

    def __init__(self, provider: Any = None, *, owned: bool = False, follow_global: bool = False) -> None:
        self.provider: Any = None
        self._tracer: Tracer | None = None
        self._owned = False
        self._follow = follow_global
        self._global: Any = None  # the process's global provider, once seen (it can never be replaced)
        if provider is not None:
            self.install(provider, owned=owned)

    @classmethod
    def from_process(cls) -> Tracing:
        """Spans go to the process's global tracer provider, if it has (or later gets) one."""
        return cls(follow_global=True)

    @classmethod
    def from_settings(cls, settings: Any, instance_id: str | None = None) -> Tracing:
        """The daemon's tracing by `settings.otel_exporter` (ConfigError when its packages are missing).

        none: the process's own configuration (nothing installed).
        console: spans as one JSON object per line on stderr (stdout stays the log).
        otlp: OTLP over HTTP to `otel_endpoint` (needs `pip install job-supervisor[otlp]`).
        The provider made for console/otlp also becomes the global one when the process has
        none yet, so spans a handler opens (instrumented HTTP clients, ...) land in the same trace.
        """
        kind = getattr(settings, "otel_exporter", "none")
        if kind == "none":
            return cls.from_process()
        try:
            from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        except ImportError as exc:
            from supervisor.errors import ConfigError  # noqa: PLC0415

            raise ConfigError(f"otel_exporter={kind!r} needs the OpenTelemetry SDK: pip install "
                              f"opentelemetry-sdk ({exc})") from None
        exporter = _exporter(kind, settings)
        attributes: dict[str, Any] = {"service.name": settings.otel_service_name,
                                      "host.name": socket.gethostname(), "process.pid": os.getpid()}
        if instance_id:
            attributes["service.instance.id"] = instance_id
        # shutdown_on_exit=False: `shutdown()` flushes with a bound; an atexit hook would not
        provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        tracing = cls(follow_global=True)
        tracing.install(provider, owned=True, make_global=True)
        log.info("telemetry.tracing", exporter=kind, endpoint=getattr(settings, "otel_endpoint", None),
                 service=settings.otel_service_name)
        return tracing

    def install(self, provider: Any, *, owned: bool = False, make_global: bool = False) -> None:
        """Send spans to `provider` from now on (None: back to the process's configuration, if followed).

        With `make_global`, the provider also becomes the process's global one when it has none yet.
        """
        self.provider, self._owned = provider, owned and provider is not None
        self._tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)
        if make_global and provider is not None and isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
            trace.set_tracer_provider(provider)

    def tracer(self) -> Tracer | None:
        """The tracer spans go to, or None when tracing is off (the common, free case)."""
        t = self._tracer
        if t is not None or not self._follow:
            return t
        if getattr(trace, "_TRACER_PROVIDER", _MISSING) is None and not _ENV_PROVIDER:
            return None  # no global provider set: the API's no-op (a fast check, hot path)
        return self._adopt_global()

    def _adopt_global(self) -> Tracer | None:
        provider = trace.get_tracer_provider()
        if isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
            return None
        self._global = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION)
        return self._tracer

    def enabled(self) -> bool:
        """True when spans are recorded somewhere."""
        return self.tracer() is not None

    def start_enqueue_span(self, name: str, given: dict[str, str] | None) -> Span | None:
        """The producer span `enqueue <name>` (None when tracing is off).

        Parent: the `traceparent` of `given` when it has a valid one (a child job, an API
        caller's header), else the caller's active span, else none (a new trace).
        """
        t = self.tracer()
        if t is None:
            return None
        parent = _remote_context(_given_parent(given), given.get("tracestate")) if given else None
        return t.start_span(f"enqueue {name}", context=parent, kind=SpanKind.PRODUCER, attributes={
            "messaging.system": MESSAGING_SYSTEM, "messaging.operation.type": "send",
            "messaging.destination.name": name, "job.name": name,
        })

    def start_process_span(self, job: Any, runtime: str, instance: str, context: dict[str, str]) -> Span | None:
        """The consumer span `process <name>` of one attempt, child of the job's stored traceparent.

        Rewrites `context` (the run's copy) so `traceparent`/`tracestate` are the process span's:
        subprocess tasks get it as TRACEPARENT, and child jobs hang under it. None when off.
        """
        t = self.tracer()
        if t is None:
            return None
        parent = _remote_context(context.get("traceparent"), context.get("tracestate"))
        span = t.start_span(
            f"process {job.name}", context=parent if parent is not None else otel_context.Context(),
            kind=SpanKind.CONSUMER, attributes={
                "messaging.system": MESSAGING_SYSTEM, "messaging.operation.type": "process",
                "messaging.destination.name": job.name, "messaging.message.id": job.id,
                "job.id": job.id, "job.name": job.name, "job.attempt": job.attempt, "job.runtime": runtime,
                "job.instance": instance, "job.request_id": context.get("request_id") or "",
            })
        span.add_event("job.started", {"job.attempt": job.attempt, "job.redelivery": job.attempt > 1})
        _write_span_context(context, span.get_span_context())
        return span

    def remote_parent(self, context: dict[str, str]) -> Any:
        """A context manager making the run's traceparent the current (remote) span, for code that
        runs a handler outside the daemon (pool workers): spans the handler opens with a tracer
        provider of its own join the job's trace. Free when nothing records spans."""
        if self.tracer() is None:
            return _NO_CONTEXT
        parent = _remote_context(context.get("traceparent"), context.get("tracestate"))
        return _NO_CONTEXT if parent is None else _remote(parent)

    @contextmanager
    def schedule_span(self, schedule_id: str, job_name: str, tick: float) -> Iterator[Span | None]:
        """A root span `schedule <id>` around one tick's enqueue (yields None when tracing is off)."""
        t = self.tracer()
        if t is None:
            yield None
            return
        with t.start_as_current_span(
            f"schedule {schedule_id}", context=otel_context.Context(), kind=SpanKind.INTERNAL,
            attributes={"job.schedule": schedule_id, "job.name": job_name, "job.schedule.tick": int(tick)},
        ) as span:
            yield span

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """At daemon stop: flush spans still buffered (and shut down a provider we own).

        The flush runs in a daemon thread and is waited for at most `timeout_s`: an unreachable
        collector (whose exporter retries for its own timeout) costs the stop that much, no more.
        """
        provider, owned = self.provider or self._global, self._owned
        if provider is not None and hasattr(provider, "force_flush"):
            def flush() -> None:
                try:
                    provider.force_flush()
                    if owned:
                        provider.shutdown()
                except Exception as exc:  # noqa: BLE001  (an exporter's failure is logged, not raised)
                    log.warning("telemetry.flush_failed", error=str(exc))

            thread = threading.Thread(target=flush, name="telemetry-flush", daemon=True)
            thread.start()
            deadline = time.monotonic() + timeout_s
            while thread.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110  (a thread has no awaitable)
                await asyncio.sleep(0.02)
            if thread.is_alive():
                log.warning("telemetry.flush_timeout", timeout_s=timeout_s,
                            note="the trace exporter did not finish; spans still buffered are dropped")
        if owned:
            self.install(None)


def _exporter(kind: str, settings: Any) -> Any:
    """The span exporter of `otel_exporter` = console or otlp."""
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + os.linesep)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    except ImportError:
        from supervisor.errors import ConfigError  # noqa: PLC0415

        raise ConfigError(
            "otel_exporter='otlp' needs the OTLP exporter: pip install 'job-supervisor[otlp]' "
            "(or opentelemetry-exporter-otlp-proto-http)") from None
    endpoint = settings.otel_endpoint
    if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()


# --- trace context -------------------------------------------------------------------------

_INVALID_TRACE = "0" * 32


def _hex(bits: int, width: int) -> str:
    value = 0
    while not value:  # an all-zero id is invalid in W3C trace context
        value = random.getrandbits(bits)
    return f"{value:0{width}x}"


def new_request_id() -> str:
    return _hex(64, 16)


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace_id, span_id, flags) of a valid W3C traceparent, else None."""
    if not value or len(value) < 55:
        return None
    parts = value.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    if parts[1] == _INVALID_TRACE or parts[2] == "0000000000000000":
        return None
    return parts[1].lower(), parts[2].lower(), parts[3]


def _write_span_context(ctx: dict[str, str], sc: Any) -> bool:
    """Store a valid span context as the job's trace ids (W3C); False when it is invalid."""
    if not sc.is_valid:
        return False
    ctx["trace_id"] = f"{sc.trace_id:032x}"
    ctx["traceparent"] = _traceparent(sc)
    state = sc.trace_state.to_header() if sc.trace_state else ""
    if state:
        ctx["tracestate"] = state
    return True


def _traceparent(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def _remote_context(traceparent: str | None, tracestate: str | None) -> Any:
    """An OpenTelemetry Context whose current span is the remote parent, or None if invalid."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    try:
        sc = SpanContext(
            trace_id=int(trace_id, 16), span_id=int(span_id, 16), is_remote=True,
            trace_flags=TraceFlags(int(flags, 16) & 0xFF),
            trace_state=TraceState.from_header([tracestate]) if tracestate else TraceState(),
        )
    except ValueError:
        return None
    return trace.set_span_in_context(NonRecordingSpan(sc), otel_context.Context())


def _given_parent(given: dict[str, str]) -> str | None:
    """The traceparent `given` continues: its own, or one made up for a bare 32-hex `trace_id`."""
    tp = given.get("traceparent")
    if tp:
        return tp
    tid = given.get("trace_id")
    if tid and len(tid) == 32 and tid != _INVALID_TRACE:
        try:
            int(tid, 16)
        except ValueError:
            return None
        return f"00-{tid.lower()}-{_hex(64, 16)}-01"
    return None


def job_context(given: dict[str, str] | None, span: Span | None) -> dict[str, str]:
    """The context a new job stores: request id, trace id, traceparent (its enqueue span), tracestate.

    With `span` (tracing on) the traceparent is the producer span's. Without, the ids are
    minted here: the trace of `given`'s traceparent or of the caller's active span goes on
    with a new span id; otherwise a fresh trace starts.
    """
    ctx = dict(given) if given else {}
    if not ctx.get("request_id"):
        ctx["request_id"] = new_request_id()
    if span is not None:
        if _write_span_context(ctx, span.get_span_context()):
            return ctx
    parsed = parse_traceparent(_given_parent(ctx))
    if parsed is not None:
        trace_id, flags = parsed[0], parsed[2]
    else:
        sc = trace.get_current_span().get_span_context()
        if sc.is_valid:
            trace_id, flags = f"{sc.trace_id:032x}", f"{int(sc.trace_flags):02x}"
            state = sc.trace_state.to_header() if sc.trace_state else ""
            if state and not ctx.get("tracestate"):
                ctx["tracestate"] = state
        else:
            trace_id, flags = _hex(128, 32), "01"
    ctx["trace_id"] = trace_id
    ctx["traceparent"] = f"00-{trace_id}-{_hex(64, 16)}-{flags}"
    return ctx


def fresh_job_context_json(random_hex: str | None = None) -> str:
    """`job_context(None, None)` as compact JSON, made directly (the hot path of a plain enqueue).

    `random_hex`: 64 random hex digits for the request, trace and span ids, when the caller
    drew them together with randomness of its own (one draw per job); else drawn here.
    """
    if in_caller_trace():  # continue the caller's trace (the general path handles tracestate)
        return json.dumps(job_context(None, None), separators=(",", ":"))
    return new_job_context_json(random_hex)


def in_caller_trace() -> bool:
    """Whether the caller has an active span, whose trace enqueued jobs continue. An empty
    context (nothing attached, the common case) has no span: the lookup is skipped."""
    return bool(otel_context.get_current()) and trace.get_current_span().get_span_context().is_valid


def new_job_context_json(random_hex: str | None = None) -> str:
    """`fresh_job_context_json` for a caller that checked `in_caller_trace()` already (once for
    a whole batch): a new request id and trace, as compact JSON."""
    bits = random_hex or f"{random.getrandbits(256):064x}"  # request id, trace id and span id from one draw
    request_id, trace_id, span_id = bits[:16], bits[16:48], bits[48:]
    if trace_id == _INVALID_TRACE or span_id == "0" * 16:  # all-zero ids are invalid (p = 2^-64)
        return new_job_context_json()
    return (f'{{"request_id":"{request_id}","trace_id":"{trace_id}",'
            f'"traceparent":"00-{trace_id}-{span_id}-01"}}')


def end_enqueue_span(span: Span, job_id: str | None = None, outcome: str | None = None,
                     error: BaseException | None = None) -> None:
    if job_id:
        span.set_attribute("messaging.message.id", job_id)
        span.set_attribute("job.id", job_id)
    if outcome:
        span.set_attribute("job.enqueue.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


# --- span helpers (pure) ------------------------------------------------------------------


class _NoContext:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None


_NO_CONTEXT = _NoContext()


@contextmanager
def _remote(parent: Any) -> Iterator[None]:
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


def attach(span: Span) -> object:
    """Make `span` the current span (in-process handlers' own spans nest under it)."""
    return otel_context.attach(trace.set_span_in_context(span))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]


class TracedEvents:
    """RunEvents that also record progress on the process span (used only when tracing is on)."""

    __slots__ = ("_events", "_span")

    def __init__(self, events: Any, span: Span) -> None:
        self._events = events
        self._span = span

    def progress(self, percent: float, message: str | None = None, step: str | None = None) -> None:
        attrs: dict[str, Any] = {"job.progress.percent": float(percent)}
        if message is not None:
            attrs["job.progress.message"] = str(message)
        if step is not None:
            attrs["job.progress.step"] = str(step)
        self._span.add_event("job.progress", attrs)
        self._events.progress(percent, message, step)

    def heartbeat(self) -> None:
        self._events.heartbeat()

    def log(self, line: str, stream: str = "stdout") -> None:
        self._events.log(line, stream)


def record_exception(span: Span | None, exc: BaseException) -> None:
    """A runner's own error (a bug, not the handler's failure), as `job.exception`."""
    if span is None:
        return
    import traceback  # noqa: PLC0415

    span.add_event("job.exception", {
        "exception.type": type(exc).__name__, "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(exc)),
    })


def _split_error(error: str) -> tuple[str, str]:
    head, sep, tail = error.partition(": ")
    if sep and head and all(part.isidentifier() for part in head.split(".")):
        return head, tail
    return "JobError", error


def end_process_span(
    span: Span, status: str | None, error: str | None, outcome: str, stacktrace: str | None = None,
) -> None:
    """Record how the attempt ended (events, status, `job.outcome`) and end the span.

    `status` is the run's `RunStatus` (compared by value: this module imports no runner code).
    `stacktrace` is the failed attempt's stored trace (`RunResult.traceback`), given as the
    `job.exception` event's `exception.stacktrace`.
    """
    span.set_attribute("job.outcome", outcome)
    if status == "completed":
        span.add_event("job.completed")
        if outcome == "completed":
            span.set_status(Status(StatusCode.OK))
    elif status == "cancelled":
        span.add_event("job.cancelled", {"job.error": error or "cancelled"})
    elif status is not None:
        text = error or str(status)
        if status != "retry":  # Retry(...) is the handler's request, not an exception
            etype, message = ("TimeoutError", text) if status == "timeout" else _split_error(text)
            attributes = {"exception.type": etype, "exception.message": message}
            if stacktrace:
                attributes["exception.stacktrace"] = stacktrace
            span.add_event("job.exception", attributes)
        span.add_event("job.failed", {"job.outcome": outcome, "job.error": text,
                                      "job.retryable": status != "permanent"})
        span.set_status(Status(StatusCode.ERROR, text[:500]))
    span.end()


def span_error(span: Span | None, exc: BaseException) -> None:
    if span is not None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)))


__all__ = [
    "TracedEvents", "Tracing", "attach", "detach", "end_enqueue_span", "end_process_span", "fresh_job_context_json",
    "in_caller_trace", "job_context", "new_job_context_json", "new_request_id", "parse_traceparent",
    "record_exception", "span_error",
]

"""Traces (OpenTelemetry) and metrics (Prometheus) of the daemon and its producers.

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
- the dispatcher opens a consumer span `process <name>` per attempt, child of
  the stored `traceparent`, with events `job.started`, `job.progress`,
  `job.exception`, `job.failed` / `job.completed` / `job.cancelled`. The run's
  `context["traceparent"]` is replaced by that span's, so a subprocess task's
  `TRACEPARENT` and a handler's child jobs hang under the process span;
- the scheduler opens a root span `schedule <id>` per fired tick; the tick's
  enqueue span is its child.

Cost when off. `otel_exporter = "none"` installs nothing: unless the process
has a tracer provider of its own (an application embedding the client), every
helper here returns at a single check and no span object is ever created.

Metrics (prometheus_client's default registry, created on first use so a
producer that only imports the client registers nothing): `jobs_total{type,
outcome}`, `job_run_seconds{type}`, `job_queue_wait_seconds{type}`,
`jobs_in_flight{type}`, `redeliveries_total{type}`, `queue_depth{type,state}`,
`worker_rss_bytes{pid,role}`, `scheduler_ticks_total{schedule}`. Label
children are bound once per type and cached.
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
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
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

from runners.base import RunStatus

log = structlog.get_logger(__name__)

INSTRUMENTATION = "job-supervisor"
MESSAGING_SYSTEM = "job-supervisor"

# --- tracer selection ----------------------------------------------------------------------

_own_tracer: Tracer | None = None  # set by configure() / install_tracer_provider()
_own_provider: Any = None
_owned: bool = False  # we created the provider (and shut it down at exit)
_global_provider: Any = None  # a real global provider seen once (it can never be replaced)
_global_tracer: Tracer | None = None
_metrics_server: Any = None
_MISSING = object()
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def tracer() -> Tracer | None:
    """The tracer spans go to, or None when tracing is off (the common, free case)."""
    if _own_tracer is not None:
        return _own_tracer
    global _global_provider, _global_tracer
    if _global_tracer is not None:
        return _global_tracer
    if getattr(trace, "_TRACER_PROVIDER", _MISSING) is None and not _ENV_PROVIDER:
        return None  # no global provider set: the API's no-op (a fast check, hot path)
    provider = trace.get_tracer_provider()
    if isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
        return None
    _global_provider = provider
    _global_tracer = provider.get_tracer(INSTRUMENTATION)
    return _global_tracer


def tracing() -> bool:
    """True when spans are recorded somewhere."""
    return tracer() is not None


def install_tracer_provider(provider: Any, *, owned: bool = False, make_global: bool = True) -> None:
    """Send this process's job-supervisor spans to `provider` (an SDK TracerProvider).

    Tests use it with an in-memory exporter; `configure` uses it for the exporter setting.
    With `make_global`, the provider also becomes the global one when the process has none
    yet, so spans a handler opens (instrumented HTTP clients, ...) land in the same trace.
    """
    global _own_tracer, _own_provider, _owned
    _own_provider, _owned = provider, owned
    _own_tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)
    if make_global and provider is not None and isinstance(trace.get_tracer_provider(), ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def set_span_exporter_for_tests(exporter: Any) -> Any:
    """Install a TracerProvider that exports every span synchronously to `exporter`; returns it.

    Not made global (OpenTelemetry cannot unset that): `reset_for_tests()` turns tracing off again.
    """
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install_tracer_provider(provider, make_global=False)
    return provider


def reset_for_tests() -> None:
    """Forget an installed provider (the global one, if any, stays: OpenTelemetry cannot unset it)."""
    global _own_tracer, _own_provider, _owned
    _own_tracer, _own_provider, _owned = None, None, False


def configure(settings: Any, instance_id: str | None = None) -> None:
    """Set up tracing by `settings.otel_exporter` and, with `metrics_port`, a /metrics endpoint.

    none: nothing is installed (a provider installed earlier, e.g. by a test, stays).
    console: spans as one JSON object per line on stderr (stdout stays the log).
    otlp: OTLP over HTTP to `otel_endpoint` (needs `pip install job-supervisor[otlp]`).
    """
    from supervisor.errors import ConfigError  # noqa: PLC0415

    metrics()  # register the metric families, so /metrics lists them from the start
    kind = getattr(settings, "otel_exporter", "none")
    if kind != "none":
        try:
            from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigError(f"otel_exporter={kind!r} needs the OpenTelemetry SDK: pip install "
                              f"opentelemetry-sdk ({exc})") from None
        if kind == "console":
            exporter: Any = ConsoleSpanExporter(
                out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + os.linesep)
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter,
                )
            except ImportError:
                raise ConfigError(
                    "otel_exporter='otlp' needs the OTLP exporter: pip install 'job-supervisor[otlp]' "
                    "(or opentelemetry-exporter-otlp-proto-http)") from None
            endpoint = settings.otel_endpoint
            if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
                endpoint = endpoint.rstrip("/") + "/v1/traces"
            exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        attributes: dict[str, Any] = {"service.name": settings.otel_service_name,
                                      "host.name": socket.gethostname(), "process.pid": os.getpid()}
        if instance_id:
            attributes["service.instance.id"] = instance_id
        # shutdown_on_exit=False: `shutdown()` flushes with a bound; an atexit hook would not
        provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        install_tracer_provider(provider, owned=True)
        log.info("telemetry.tracing", exporter=kind, endpoint=getattr(settings, "otel_endpoint", None),
                 service=settings.otel_service_name)
    port = getattr(settings, "metrics_port", None)
    if port:
        start_metrics_server(port)


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve prometheus_client's default registry on http://ADDR:PORT/metrics (a daemon thread)."""
    global _metrics_server
    import prometheus_client  # noqa: PLC0415

    if _metrics_server is not None:
        return
    try:
        started = prometheus_client.start_http_server(port, addr=addr)
    except OSError as exc:  # observability must not stop the work
        log.error("metrics.unavailable", port=port, addr=addr, error=str(exc))
        return
    _metrics_server = started[0] if isinstance(started, tuple) else started
    log.info("metrics.listening", url=f"http://{addr}:{port}/metrics")


async def shutdown(timeout_s: float = 5.0) -> None:
    """At daemon stop: flush spans still buffered and stop the /metrics endpoint.

    The flush runs in a daemon thread and is waited for at most `timeout_s`: an unreachable
    collector (whose exporter retries for its own timeout) costs the stop that much, no more.
    """
    global _metrics_server
    provider, owned = _own_provider or _global_provider, _owned
    if provider is not None and hasattr(provider, "force_flush"):
        def flush() -> None:
            try:
                provider.force_flush()
                if owned:
                    provider.shutdown()
            except Exception as exc:  # noqa: BLE001
                log.warning("telemetry.flush_failed", error=str(exc))

        thread = threading.Thread(target=flush, name="telemetry-flush", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if thread.is_alive():
            log.warning("telemetry.flush_timeout", timeout_s=timeout_s,
                        note="the trace exporter did not finish; spans still buffered are dropped")
    if owned:
        reset_for_tests()
    if _metrics_server is not None:
        server, _metrics_server = _metrics_server, None
        try:
            server.shutdown()
            server.server_close()
        except Exception:  # noqa: BLE001,S110
            pass


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


def start_enqueue_span(name: str, given: dict[str, str] | None) -> Span | None:
    """The producer span `enqueue <name>` (None when tracing is off).

    Parent: the `traceparent` of `given` when it has a valid one (a child job, an API
    caller's header), else the caller's active span, else none (a new trace).
    """
    t = tracer()
    if t is None:
        return None
    parent = _remote_context(_given_parent(given), given.get("tracestate")) if given else None
    return t.start_span(f"enqueue {name}", context=parent, kind=SpanKind.PRODUCER, attributes={
        "messaging.system": MESSAGING_SYSTEM, "messaging.operation.type": "send",
        "messaging.destination.name": name, "job.name": name,
    })


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


# --- the process span (dispatcher) ---------------------------------------------------------


def start_process_span(job: Any, runtime: str, instance: str, context: dict[str, str]) -> Span | None:
    """The consumer span `process <name>` of one attempt, child of the job's stored traceparent.

    Rewrites `context` (the run's copy) so `traceparent`/`tracestate` are the process span's:
    subprocess tasks get it as TRACEPARENT, and child jobs hang under it. None when off.
    """
    t = tracer()
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


def remote_parent(context: dict[str, str]) -> Any:
    """A context manager making the run's traceparent the current (remote) span, for code that
    runs a handler outside the daemon (pool workers): spans the handler opens with a tracer
    provider of its own join the job's trace. Free when the process has no provider."""
    if tracer() is None:
        return _NO_CONTEXT
    parent = _remote_context(context.get("traceparent"), context.get("tracestate"))
    return _NO_CONTEXT if parent is None else _remote(parent)


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
    span: Span, status: RunStatus | None, error: str | None, outcome: str, stacktrace: str | None = None,
) -> None:
    """Record how the attempt ended (events, status, `job.outcome`) and end the span.

    `stacktrace` is the failed attempt's stored trace (`RunResult.traceback`), given as the
    `job.exception` event's `exception.stacktrace`.
    """
    span.set_attribute("job.outcome", outcome)
    if status is RunStatus.COMPLETED:
        span.add_event("job.completed")
        if outcome == "completed":
            span.set_status(Status(StatusCode.OK))
    elif status is RunStatus.CANCELLED:
        span.add_event("job.cancelled", {"job.error": error or "cancelled"})
    elif status is not None:
        text = error or status.value
        if status is not RunStatus.RETRY:  # Retry(...) is the handler's request, not an exception
            etype, message = ("TimeoutError", text) if status is RunStatus.TIMEOUT else _split_error(text)
            attributes = {"exception.type": etype, "exception.message": message}
            if stacktrace:
                attributes["exception.stacktrace"] = stacktrace
            span.add_event("job.exception", attributes)
        span.add_event("job.failed", {"job.outcome": outcome, "job.error": text,
                                      "job.retryable": status is not RunStatus.PERMANENT})
        span.set_status(Status(StatusCode.ERROR, text[:500]))
    span.end()


# --- schedule spans (scheduler) ------------------------------------------------------------


@contextmanager
def schedule_span(schedule_id: str, job_name: str, tick: float) -> Iterator[Span | None]:
    """A root span `schedule <id>` around one tick's enqueue (yields None when tracing is off)."""
    t = tracer()
    if t is None:
        yield None
        return
    with t.start_as_current_span(
        f"schedule {schedule_id}", context=otel_context.Context(), kind=SpanKind.INTERNAL,
        attributes={"job.schedule": schedule_id, "job.name": job_name, "job.schedule.tick": int(tick)},
    ) as span:
        yield span


def span_error(span: Span | None, exc: BaseException) -> None:
    if span is not None:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, str(exc)))


# --- metrics -------------------------------------------------------------------------------

RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)


class TypeMetrics:
    """Per-attempt numbers of one job type, kept as plain ints and floats.

    Only the dispatcher's event loop thread writes them (a few integer adds and one C
    `bisect` per attempt, no locks); `_JobCollector` turns them into Prometheus families
    when /metrics is scraped (from any thread: a scrape may see one attempt half-counted).
    """

    __slots__ = ("name", "in_flight", "redeliveries", "outcomes", "run_buckets", "run_sum", "wait_buckets",
                 "wait_sum")

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight = 0
        self.redeliveries = 0
        self.outcomes: dict[str, int] = {}
        self.run_buckets = [0] * (len(RUN_BUCKETS) + 1)  # the last one is +Inf
        self.run_sum = 0.0
        self.wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)
        self.wait_sum = 0.0

    def started(self, attempt: int) -> None:
        self.in_flight += 1
        if attempt > 1:
            self.redeliveries += 1

    def done(self) -> None:
        self.in_flight -= 1

    def finished(self, outcome: str, duration_s: float | None, wait_s: float | None) -> None:
        outcomes = self.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if duration_s is not None:
            self.run_buckets[bisect_left(RUN_BUCKETS, duration_s)] += 1
            self.run_sum += duration_s
        if wait_s is not None:
            if wait_s < 0.0:
                wait_s = 0.0
            self.wait_buckets[bisect_left(WAIT_BUCKETS, wait_s)] += 1
            self.wait_sum += wait_s


# Every metric name starts with this, so ours never collide with another exporter's.
PREFIX = "job_supervisor_"

_types: dict[str, TypeMetrics] = {}


def type_metrics(name: str) -> TypeMetrics:
    tm = _types.get(name)
    if tm is None:
        metrics()  # the collector is registered before the first attempt is counted
        tm = _types[name] = TypeMetrics(name)
    return tm


def _histogram(family: Any, name: str, bounds: tuple[float, ...], counts: list[int], total: float) -> None:
    cumulative, acc = [], 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        acc += n
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), acc))
    family.add_metric([name], cumulative, sum_value=total)


class _JobCollector:
    """jobs_total, job_run_seconds, job_queue_wait_seconds, jobs_in_flight, redeliveries_total."""

    def _families(self) -> list[Any]:
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        return [
            CounterMetricFamily(PREFIX + "jobs", "Attempts that ended, by job type and outcome (completed, failed "
                                        "(retryable), permanent, retry, timeout, cancelled, expired).",
                                labels=["type", "outcome"]),
            HistogramMetricFamily(PREFIX + "job_run_seconds", "Run time of one attempt, in seconds.", labels=["type"]),
            HistogramMetricFamily(PREFIX + "job_queue_wait_seconds", "From the job's creation to the start of the "
                                                            "attempt, in seconds.", labels=["type"]),
            GaugeMetricFamily(PREFIX + "jobs_in_flight", "Attempts running in this instance.", labels=["type"]),
            CounterMetricFamily(PREFIX + "redeliveries", "Attempts that started as a redelivery (attempt > 1).",
                                labels=["type"]),
        ]

    def describe(self) -> list[Any]:
        return self._families()

    def collect(self) -> list[Any]:
        jobs, run, wait, in_flight, redeliveries = families = self._families()
        for tm in list(_types.values()):
            for outcome, n in list(tm.outcomes.items()):
                jobs.add_metric([tm.name, outcome], n)
            _histogram(run, tm.name, RUN_BUCKETS, list(tm.run_buckets), tm.run_sum)
            _histogram(wait, tm.name, WAIT_BUCKETS, list(tm.wait_buckets), tm.wait_sum)
            in_flight.add_metric([tm.name], tm.in_flight)
            redeliveries.add_metric([tm.name], tm.redeliveries)
        return families


class _Metrics:
    """The metric families, in prometheus_client's default registry."""

    def __init__(self) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge  # noqa: PLC0415

        self.collector = _JobCollector()
        REGISTRY.register(self.collector)
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Jobs per type and index (ready, sched, active, and each "
                                                "finished state), read from Redis every few seconds.",
                                 ["type", "state"])
        self.worker_rss = Gauge(PREFIX + "worker_rss_bytes", "Resident memory of the daemon and its pool workers.",
                                ["pid", "role"])
        self.ticks = Counter(PREFIX + "scheduler_ticks_total", "Cron ticks this instance enqueued.", ["schedule"])


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def schedule_fired(schedule_id: str) -> None:
    metrics().ticks.labels(schedule_id).inc()


_self_proc: Any = None
_gauged: dict[str, set[tuple[str, ...]]] = {"depth": set(), "rss": set()}


async def update_gauges(broker: Any, workers_info: Callable[[], list[dict[str, Any]]] | None = None) -> None:
    """queue_depth from `Broker.counts` of every published type; worker_rss_bytes of us and our workers."""
    global _self_proc
    m = metrics()
    seen: set[tuple[str, ...]] = set()
    for name in await broker.type_names():
        for state, n in (await broker.counts(name)).items():
            m.queue_depth.labels(name, state).set(n)
            seen.add((name, state))
    for gone in _gauged["depth"] - seen:
        m.queue_depth.remove(*gone)
    _gauged["depth"] = seen
    import psutil  # noqa: PLC0415

    rss: set[tuple[str, ...]] = set()
    try:
        if _self_proc is None:
            _self_proc = psutil.Process()
        key = (str(_self_proc.pid), "daemon")
        m.worker_rss.labels(*key).set(_self_proc.memory_info().rss)
        rss.add(key)
    except psutil.Error:
        pass
    for w in (workers_info() if workers_info is not None else []):
        if w.get("pid") and w.get("rss_bytes") is not None:
            key = (str(w["pid"]), "worker")
            m.worker_rss.labels(*key).set(w["rss_bytes"])
            rss.add(key)
    for gone in _gauged["rss"] - rss:
        m.worker_rss.remove(*gone)
    _gauged["rss"] = rss


async def run_gauges(broker: Any, workers_info: Callable[[], list[dict[str, Any]]] | None = None,
                     interval_s: float = 5.0) -> None:
    """Refresh the gauges every `interval_s` until cancelled (Redis outages are waited out).

    Each round runs in its own task behind a shield: cancelling the loop (daemon stop) returns
    at once even while redis-py is still opening a connection, which it does not abandon promptly.
    """
    while True:
        started = time.monotonic()
        work = asyncio.ensure_future(update_gauges(broker, workers_info))
        work.add_done_callback(_quiet)
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            work.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 (Redis down or a worker gone: next round)
            log.debug("metrics.update_failed", error=str(exc))
        await asyncio.sleep(max(interval_s - (time.monotonic() - started), 0.05))


def _quiet(task: asyncio.Future[None]) -> None:
    """Retrieve the outcome of an abandoned round, so asyncio does not report it."""
    if not task.cancelled():
        task.exception()


__all__ = [
    "TracedEvents", "TypeMetrics", "configure", "end_enqueue_span", "end_process_span", "install_tracer_provider",
    "job_context", "metrics", "remote_parent", "new_request_id", "parse_traceparent", "record_exception", "run_gauges",
    "schedule_fired", "schedule_span", "set_span_exporter_for_tests", "shutdown", "span_error",
    "start_enqueue_span", "start_metrics_server", "start_process_span", "tracer", "tracing", "type_metrics",
    "update_gauges",
]

"""What the dispatcher reports about each attempt: its process span and its per-type metrics.

The daemon makes one `RunObserver` from its `Tracing` and `Metrics` and hands it to the
dispatcher, which calls it when an attempt starts, when its outcome is known (`finished`,
or `expired` past the job's deadline) and when the attempt is over (`ended`). Per attempt
it costs a few integer adds and, with tracing off, one check: nothing is allocated.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import Span

from supervisor.observability.metrics import Metrics
from supervisor.observability.telemetry import TracedEvents, Tracing, attach, detach, end_process_span, record_exception


class RunObserver:
    """Tracing and metrics of the attempts of one daemon (called on its event loop only)."""

    __slots__ = ("_instance", "_metrics", "_tracing", "_types")

    def __init__(self, tracing: Tracing, metrics: Metrics, instance_id: str) -> None:
        self._tracing = tracing
        self._metrics = metrics
        self._types = metrics.types
        self._instance = instance_id

    def started(self, job: Any, runtime: str, context: dict[str, str] | None) -> Span | None:
        """An attempt starts: it counts in flight (and as a redelivery after the first), and gets
        its process span, whose traceparent replaces the one in `context` (the run's copy). None
        when tracing is off, or without a `context` (a record that could not be read)."""
        tm = self._types.get(job.name) or self._metrics.type_metrics(job.name)  # inlined: per attempt
        tm.in_flight += 1
        if job.attempt > 1:
            tm.redeliveries += 1
        if context is None or self._tracing.tracer() is None:
            return None
        return self._tracing.start_process_span(job, runtime, self._instance, context)

    @staticmethod
    def traced(events: Any, span: Span) -> Any:
        """`events` that also record progress on the attempt's span."""
        return TracedEvents(events, span)

    @staticmethod
    def attach(span: Span) -> object:
        """Make `span` current while an in-process handler runs (its own spans nest under it)."""
        return attach(span)

    @staticmethod
    def detach(token: object) -> None:
        detach(token)

    @staticmethod
    def runner_error(span: Span | None, exc: BaseException) -> None:
        """A runner's own error (a bug, not the handler's failure) on the attempt's span."""
        record_exception(span, exc)

    def finished(self, name: str, outcome: str, duration_s: float | None, wait_s: float | None) -> None:
        """The attempt's outcome is known: counted with its run time and queue wait."""
        (self._types.get(name) or self._metrics.type_metrics(name)).finished(outcome, duration_s, wait_s)

    def expired(self, name: str, duration_s: float | None, wait_s: float | None) -> None:
        """The attempt ran past the job's deadline: the job expired."""
        (self._types.get(name) or self._metrics.type_metrics(name)).finished("expired", duration_s, wait_s)

    def ended(self, name: str, span: Span | None, status: str | None, error: str | None, outcome: str,
              stacktrace: str | None = None) -> None:
        """The attempt is over (whatever its outcome): no longer in flight; its span ends."""
        (self._types.get(name) or self._metrics.type_metrics(name)).in_flight -= 1
        if span is not None:
            end_process_span(span, status, error, outcome, stacktrace)


__all__ = ["RunObserver"]

"""The daemon's Prometheus metrics: one `Metrics` object, made by the daemon and handed to who counts.

Families (every name starts with `job_supervisor_`, so ours never collide with another
exporter's): `jobs_total{type,outcome}`, `job_run_seconds{type}`,
`job_queue_wait_seconds{type}`, `jobs_in_flight{type}`, `redeliveries_total{type}`,
`queue_depth{type,state}`, `worker_rss_bytes{pid,role}`, `scheduler_ticks_total{schedule}`.
They live in prometheus_client's default registry unless another is given, so handlers'
own metrics are served beside them. Per-attempt numbers are plain ints and floats per type
(`TypeMetrics`, written by `supervisor.observability.run_observer`), turned into families at scrape time.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

#: Every metric name starts with this.
PREFIX = "job_supervisor_"
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)


class TypeMetrics:
    """Per-attempt numbers of one job type, kept as plain ints and floats.

    Only the dispatcher's event loop thread writes them (a few integer adds and one C
    `bisect` per attempt, no locks); `_JobCollector` turns them into Prometheus families
    when /metrics is scraped (from any thread: a scrape may see one attempt half-counted).
    """

    __slots__ = ("in_flight", "name", "outcomes", "redeliveries", "run_buckets", "run_sum", "wait_buckets",
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

    def finished(self, outcome: str, duration_s: float | None, wait_s: float | None) -> None:
        outcomes = self.outcomes
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if duration_s is not None:
            self.run_buckets[bisect_left(RUN_BUCKETS, duration_s)] += 1
            self.run_sum += duration_s
        if wait_s is not None:
            if wait_s < 0.0:  # noqa: PLR1730  (per job: a compare costs less than a max() call)
                wait_s = 0.0
            self.wait_buckets[bisect_left(WAIT_BUCKETS, wait_s)] += 1
            self.wait_sum += wait_s


def _histogram(family: Any, name: str, bounds: tuple[float, ...], counts: list[int], total: float) -> None:
    cumulative, acc = [], 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        acc += n
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), acc))
    family.add_metric([name], cumulative, sum_value=total)


class _JobCollector:
    """jobs_total, job_run_seconds, job_queue_wait_seconds, jobs_in_flight, redeliveries_total."""

    def __init__(self, types: dict[str, TypeMetrics]) -> None:
        self._types = types

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
        for tm in list(self._types.values()):
            for outcome, n in list(tm.outcomes.items()):
                jobs.add_metric([tm.name, outcome], n)
            _histogram(run, tm.name, RUN_BUCKETS, list(tm.run_buckets), tm.run_sum)
            _histogram(wait, tm.name, WAIT_BUCKETS, list(tm.wait_buckets), tm.wait_sum)
            in_flight.add_metric([tm.name], tm.in_flight)
            redeliveries.add_metric([tm.name], tm.redeliveries)
        return families


class Metrics:
    """The metric families of one daemon, registered in `registry` (default: prometheus_client's).

    `exported=False`: nothing can scrape this process (no `metrics_port`, no admin API), so
    prometheus_client is not even imported (a start costs less) and nothing is registered; the
    per-type numbers are kept all the same.
    """

    def __init__(self, registry: Any = None, *, exported: bool = True) -> None:
        self.types: dict[str, TypeMetrics] = {}  # job type -> its per-attempt numbers
        self._server: Any = None
        self._self_proc: Any = None
        self._gauged: dict[str, set[tuple[str, ...]]] = {"depth": set(), "rss": set()}
        self.exported = exported
        self.registry: Any = None
        self.queue_depth: Any = None
        self.worker_rss: Any = None
        self.ticks: Any = None
        if not exported:
            return
        from prometheus_client import REGISTRY, Counter, Gauge  # noqa: PLC0415

        self.registry = REGISTRY if registry is None else registry
        self._collector = _JobCollector(self.types)
        self.registry.register(self._collector)
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Jobs per type and index (ready, sched, active, and each "
                                                "finished state), read from Redis every few seconds.",
                                 ["type", "state"], registry=self.registry)
        self.worker_rss = Gauge(PREFIX + "worker_rss_bytes", "Resident memory of the daemon and its pool workers.",
                                ["pid", "role"], registry=self.registry)
        self.ticks = Counter(PREFIX + "scheduler_ticks_total", "Cron ticks this instance enqueued.", ["schedule"],
                             registry=self.registry)

    def type_metrics(self, name: str) -> TypeMetrics:
        """The numbers of job type `name` (made on its first attempt)."""
        tm = self.types.get(name)
        if tm is None:
            tm = self.types[name] = TypeMetrics(name)
        return tm

    def schedule_fired(self, schedule_id: str) -> None:
        if self.ticks is not None:
            self.ticks.labels(schedule_id).inc()

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve the registry on http://ADDR:PORT/metrics (a daemon thread); an error is logged, not raised."""
        if self._server is not None or not self.exported:
            return
        import prometheus_client  # noqa: PLC0415

        try:
            started = prometheus_client.start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:  # observability must not stop the work
            log.error("metrics.unavailable", port=port, addr=addr, error=str(exc))
            return
        self._server = started[0] if isinstance(started, tuple) else started
        log.info("metrics.listening", url=f"http://{addr}:{port}/metrics")

    def stop_serving(self) -> None:
        """Stop the /metrics endpoint of `serve`, if any."""
        if self._server is not None:
            server, self._server = self._server, None
            try:
                server.shutdown()
                server.server_close()
            except Exception:  # noqa: BLE001,S110  (best effort at stop)
                pass

    def unregister(self) -> None:
        """Take our families out of the registry (so another `Metrics` may register them)."""
        if not self.exported:
            return
        for collector in (self._collector, self.queue_depth, self.worker_rss, self.ticks):
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass

    async def update_gauges(self, broker: Any, workers_info: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        """queue_depth from `Broker.counts` of every published type; worker_rss_bytes of us and our workers."""
        seen: set[tuple[str, ...]] = set()
        for name in await broker.type_names():
            for state, n in (await broker.counts(name)).items():
                self.queue_depth.labels(name, state).set(n)
                seen.add((name, state))
        for gone in self._gauged["depth"] - seen:
            self.queue_depth.remove(*gone)
        self._gauged["depth"] = seen
        import psutil  # noqa: PLC0415

        rss: set[tuple[str, ...]] = set()
        try:
            if self._self_proc is None:
                self._self_proc = psutil.Process()
            key = (str(self._self_proc.pid), "daemon")
            self.worker_rss.labels(*key).set(self._self_proc.memory_info().rss)
            rss.add(key)
        except psutil.Error:
            pass
        for w in (workers_info() if workers_info is not None else []):
            if w.get("pid") and w.get("rss_bytes") is not None:
                key = (str(w["pid"]), "worker")
                self.worker_rss.labels(*key).set(w["rss_bytes"])
                rss.add(key)
        for gone in self._gauged["rss"] - rss:
            self.worker_rss.remove(*gone)
        self._gauged["rss"] = rss

    async def run_gauges(self, broker: Any, workers_info: Callable[[], list[dict[str, Any]]] | None = None,
                         interval_s: float = 5.0) -> None:
        """Refresh the gauges every `interval_s` until cancelled (Redis outages are waited out).

        Each round runs in its own task behind a shield: cancelling the loop (daemon stop) returns
        at once even while redis-py is still opening a connection, which it does not abandon promptly.
        """
        while True:
            started = time.monotonic()
            work = asyncio.ensure_future(self.update_gauges(broker, workers_info))
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


__all__ = ["PREFIX", "RUN_BUCKETS", "WAIT_BUCKETS", "Metrics", "TypeMetrics"]

"""Observability (SPEC §12): one trace per order across every runtime, JSON logs with ids, /metrics.

The trace test runs the daemon in this process (`run_daemon` as a task) with an
in-memory span exporter, and stops it with a real SIGTERM to this process (the
daemon's own handler, installed with `loop.add_signal_handler`). The log and
metrics tests run real daemon subprocesses with tracing off, as in production
by default, and scrape `metrics_port`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from supervisor import Client, SyncClient
from supervisor.config import load_settings
from supervisor.context import child_context
from supervisor.daemon.app import run_daemon
from supervisor.engine.states import State
from supervisor.errors import ConfigError
from supervisor.observability import telemetry
from supervisor.observability.metrics import Metrics
from supervisor.observability.telemetry import Tracing
from tests.conftest import await_until, memory_tracing

# Debian's prometheus package; scripts/test installs it
PROMTOOL = shutil.which("promtool") or "promtool"

TASK_SH = """#!/usr/bin/env bash
echo "task line for $JOB_ID"
echo "::result {\\"traceparent\\": \\"$TRACEPARENT\\", \\"request_id\\": \\"$JOB_REQUEST_ID\\"}"
"""


def write_task(tasks: Path) -> None:
    tasks.mkdir(exist_ok=True)
    path = tasks / "traced_task.sh"
    path.write_text(TASK_SH)
    path.chmod(0o755)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tp(span: Any) -> str:
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """The in-process daemon's metrics, in prometheus_client's registry until the test is over."""
    made = Metrics()
    yield made
    made.unregister()


# --- trace context without an exporter ------------------------------------------------------


def test_job_context_without_tracing_mints_ids_and_continues_given_traces() -> None:
    process = Tracing.from_process()
    assert process.tracer() is None or process.enabled()  # whatever the process has, no crash
    fresh = telemetry.job_context(None, None)
    assert len(fresh["request_id"]) == 16 and len(fresh["trace_id"]) == 32
    assert telemetry.parse_traceparent(fresh["traceparent"])[0] == fresh["trace_id"]  # type: ignore[index]

    given = {"request_id": "req-1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
             "tracestate": "vendor=x"}
    ctx = telemetry.job_context(given, None)
    assert ctx["request_id"] == "req-1" and ctx["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ctx["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert ctx["traceparent"] != given["traceparent"] and ctx["tracestate"] == "vendor=x"

    bare = telemetry.job_context({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}, None)
    assert bare["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and bare["request_id"]

    # A child job continues the running attempt's traceparent (its process span).
    child = child_context({"request_id": "req-1", "trace_id": ctx["trace_id"], "traceparent": ctx["traceparent"]},
                          "job-1")
    assert child["traceparent"] == ctx["traceparent"] and child["parent_job"] == "job-1"


def test_otlp_without_the_extra_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    settings = load_settings(None, otel_exporter="otlp", otel_endpoint="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"job-supervisor\[otlp\]"):
        Tracing.from_settings(settings)


def test_sync_client_continues_the_callers_span_from_its_own_thread(redis_url: str) -> None:
    # A web view (any thread) with an active span enqueues through the blocking client: asyncio
    # carries the calling thread's context to the client's loop (call_soon_threadsafe copies it).
    exporter = InMemorySpanExporter()
    tracing = memory_tracing(exporter)
    with SyncClient(redis_url, allow_unknown=True, tracing=tracing) as client:
        with tracing.provider.get_tracer("test").start_as_current_span("GET /checkout") as view:
            ref = client.enqueue("t.anything", {"x": 1})
            many = client.enqueue_many([("t.anything", {"x": 2})])
        job = client.get(ref.id)
        other = client.get(many[0].id)
    enqueues = [s for s in exporter.get_finished_spans() if s.name == "enqueue t.anything"]
    assert len(enqueues) == 2
    assert all(s.parent is not None and s.parent.span_id == view.context.span_id for s in enqueues)
    assert {job.context["traceparent"], other.context["traceparent"]} == {tp(s) for s in enqueues}
    assert job.context["trace_id"] == f"{view.context.trace_id:032x}"


def test_remote_parent_makes_handler_spans_children_of_the_run() -> None:
    # What a pool worker does around a handler when its process has a tracer provider.
    exporter = InMemorySpanExporter()
    tracing = memory_tracing(exporter)
    run = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    with tracing.remote_parent(run):
        tracing.provider.get_tracer("handler").start_span("SELECT orders").end()
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{span.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert Tracing().remote_parent(run).__class__.__name__ == "_NoContext"  # off: free


# --- one trace, in-process daemon -----------------------------------------------------------


async def test_one_trace_from_request_through_three_runtimes(
    redis_url: str, use_handlers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metrics: Metrics,
) -> None:
    exporter = InMemorySpanExporter()
    tracing = memory_tracing(exporter)
    provider = tracing.provider
    jobs = use_handlers("traced")
    write_task(tmp_path / "tasks")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        None, redis_url=redis_url, jobs_dir=jobs, tasks_dir=tmp_path / "tasks", state_dir=tmp_path / "state",
        instance_name="tele", workers_concurrency=1, presence_interval=0.3, otel_exporter="none",
        metrics_port=free_port(),  # gauges are refreshed only when something can scrape them
        schedules={"traced-tick": {"job": "t.traced-tick", "cron": "* * * * * *"}},
    )
    before = {t: sample("job_supervisor_jobs_total", {"type": t, "outcome": "completed"})
              for t in ("t.traced-echo", "t.traced-parent")}
    runs_before = sample("job_supervisor_job_run_seconds_count", {"type": "t.traced-echo"})
    daemon = asyncio.create_task(run_daemon(settings, tracing=tracing, metrics=metrics))
    try:
        async with Client(redis_url, tracing=tracing) as client:
            await await_until(lambda: client.broker.type_meta("traced_task"), timeout=20, what="types published")
            with provider.get_tracer("test").start_as_current_span("POST /orders") as root:
                ref = await client.enqueue("t.traced-parent", {})
            parent = await client.wait(ref.id, timeout=30)
            middle = await client.wait(parent.result["child"], timeout=30)
            task = await client.wait(middle.result["child"], timeout=30)
            failed = await client.wait((await client.enqueue("t.traced-fails", {})).id, timeout=30)
            echoes = await client.enqueue_many([("t.traced-echo", {"i": i}) for i in range(5)])
            for e in echoes:
                assert (await client.wait(e.id, timeout=30)).state is State.COMPLETED
            await await_until(lambda: any(s.name.startswith("schedule ") for s in exporter.get_finished_spans()),
                              timeout=10, what="a cron tick span")
            await await_until(
                lambda: sample("job_supervisor_queue_depth", {"type": "t.traced-echo", "state": "completed"}) == 5,
                timeout=10, what="job_supervisor_queue_depth gauge")
            rss = [s for m in REGISTRY.collect() if m.name == "job_supervisor_worker_rss_bytes" for s in m.samples]
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler: a graceful drain
        code = await asyncio.wait_for(daemon, 60)
    assert code == 0
    assert [j.state for j in (parent, middle, task)] == [State.COMPLETED] * 3

    spans = exporter.get_finished_spans()

    def one(name: str, job_id: str | None = None) -> Any:
        found = [s for s in spans if s.name == name and (job_id is None or s.attributes.get("job.id") == job_id)]
        assert len(found) == 1, (name, [s.name for s in spans])
        return found[0]

    e1, p1 = one("enqueue t.traced-parent"), one("process t.traced-parent")
    e2, p2 = one("enqueue t.traced-middle"), one("process t.traced-middle")
    e3, p3 = one("enqueue traced_task"), one("process traced_task")
    chain = [root, e1, p1, e2, p2, e3, p3]
    # One trace, each span the child of the one before: request -> enqueue -> process -> enqueue -> ...
    assert {s.context.trace_id for s in chain} == {root.context.trace_id}
    for parent_span, child_span in itertools.pairwise(chain):
        assert child_span.parent is not None and child_span.parent.span_id == parent_span.context.span_id, \
            (child_span.name, parent_span.name)
    assert [s.kind for s in (e1, p1, e2, p2, e3, p3)] == [SpanKind.PRODUCER, SpanKind.CONSUMER] * 3
    # The job records carry the trace: stored traceparent = its enqueue span.
    assert parent.context["traceparent"] == tp(e1) and middle.context["traceparent"] == tp(e2)
    assert task.context["traceparent"] == tp(e3)
    assert {j.context["trace_id"] for j in (parent, middle, task)} == {f"{root.context.trace_id:032x}"}
    assert len({j.context["request_id"] for j in (parent, middle, task)}) == 1
    # Each run saw its own process span's traceparent (the task through TRACEPARENT).
    assert parent.result["traceparent"] == tp(p1) and middle.result["traceparent"] == tp(p2)
    assert task.result["traceparent"] == tp(p3)
    assert task.result["request_id"] == parent.context["request_id"]
    # Attributes and events of the process spans.
    assert p1.attributes["job.id"] == parent.id and p1.attributes["job.attempt"] == 1
    assert p2.attributes["job.runtime"] == "process" and p3.attributes["job.runtime"] == "subprocess"
    assert p1.attributes["job.instance"].startswith("tele:")
    for p in (p1, p2, p3):
        names = [e.name for e in p.events]
        assert names[0] == "job.started" and names[-1] == "job.completed", names
        assert p.attributes["job.outcome"] == "completed"
    progress = [e for e in p1.events if e.name == "job.progress"]
    assert progress and progress[0].attributes["job.progress.percent"] == 50.0
    assert progress[0].attributes["job.progress.step"] == "enqueue"
    pf = one("process t.traced-fails", failed.id)
    assert [e.name for e in pf.events] == ["job.started", "job.exception", "job.failed"]
    assert pf.events[1].attributes["exception.type"] == "PermanentError"
    assert pf.events[1].attributes["exception.message"] == "card declined"
    assert pf.status.status_code is StatusCode.ERROR and pf.attributes["job.outcome"] == "permanent"
    # enqueue_many: one producer span per job; without an active span each job starts its own trace.
    echo_spans = [s for s in spans if s.name == "process t.traced-echo"]
    assert len(echo_spans) == 5 and len({s.context.trace_id for s in echo_spans}) == 5
    # A cron tick: a root span `schedule <id>` whose enqueue span is its child.
    tick = next(s for s in spans if s.name.startswith("schedule "))
    assert tick.parent is None and tick.attributes["job.name"] == "t.traced-tick"
    tick_enqueue = [s for s in spans if s.name == "enqueue t.traced-tick" and s.parent is not None
                    and s.parent.span_id == tick.context.span_id]
    assert tick_enqueue
    # Metrics count what ran.
    echo_total = sample("job_supervisor_jobs_total", {"type": "t.traced-echo", "outcome": "completed"})
    parent_total = sample("job_supervisor_jobs_total", {"type": "t.traced-parent", "outcome": "completed"})
    assert echo_total - before["t.traced-echo"] == 5
    assert parent_total - before["t.traced-parent"] == 1
    assert sample("job_supervisor_job_run_seconds_count", {"type": "t.traced-echo"}) - runs_before == 5
    assert sample("job_supervisor_jobs_in_flight", {"type": "t.traced-echo"}) == 0
    assert sample("job_supervisor_scheduler_ticks_total", {"schedule": tick.attributes["job.schedule"]}) >= 1
    assert any(s.labels["role"] == "daemon" and s.value > 0 for s in rss)
    assert any(s.labels["role"] == "worker" and s.value > 0 for s in rss)


# --- logs and /metrics of a real daemon (tracing off) ---------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_logs_are_json_with_job_and_trace_ids_and_metrics_count_what_ran(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path,
) -> None:
    use_handlers("traced")
    write_task(tmp_path / "tasks")
    port = free_port()
    d = daemon(env={"JOB_SUPERVISOR_METRICS_PORT": str(port), "WORKERS_CONCURRENCY": "1",
                    "JOB_SUPERVISOR_PRESENCE_INTERVAL": "0.3"})
    async with Client(redis_url) as client:
        parent = await client.wait((await client.enqueue("t.traced-parent", {})).id, timeout=30)
        middle = await client.wait(parent.result["child"], timeout=30)
        task = await client.wait(middle.result["child"], timeout=30)
        pyjob_parent = await client.wait((await client.enqueue("t.traced-parent", {"task": "t.traced-pyjob"})).id,
                                         timeout=30)
        pyjob = await client.wait((await client.wait(pyjob_parent.result["child"], timeout=30)).result["child"],
                                  timeout=30)
        # Scraped while jobs run: in flight, then counted.
        sleepers = await client.enqueue_many([("t.traced-sleep", {"seconds": 1.5}) for _ in range(3)])
        await await_until(lambda: value(scrape(port), "job_supervisor_jobs_in_flight", type="t.traced-sleep") == 3,
                          timeout=10, what="3 jobs in flight")
        n = 7
        for ref in await client.enqueue_many([("t.traced-echo", {"i": i}) for i in range(n)]):
            assert (await client.wait(ref.id, timeout=30)).state is State.COMPLETED
        for ref in sleepers:
            await client.wait(ref.id, timeout=30)
        records = await client.list("t.traced-echo", State.COMPLETED, limit=100)
        await await_until(lambda: value(scrape(port), "job_supervisor_queue_depth", type="t.traced-echo",
                                        state="completed") == n,
                          timeout=10, what="job_supervisor_queue_depth")
        m = scrape(port)
        exposition = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert len(records) == n
    # Prometheus's own linter on what a scraper gets: names, prefixes, units, help texts.
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=30,
                          check=False)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    ours = {fam.name for fam in text_string_to_metric_families(exposition.decode())
            if not fam.name.startswith(("python_", "process_"))}
    assert ours and all(name.startswith("job_supervisor_") for name in ours), ours
    assert value(m, "job_supervisor_jobs_total", type="t.traced-echo", outcome="completed") == n == len(records)
    assert value(m, "job_supervisor_job_run_seconds_count", type="t.traced-echo") == n
    assert value(m, "job_supervisor_job_queue_wait_seconds_count", type="t.traced-echo") == n
    assert value(m, "job_supervisor_jobs_total", type="t.traced-sleep", outcome="completed") == 3
    assert value(m, "job_supervisor_jobs_in_flight", type="t.traced-sleep") == 0
    assert value(m, "job_supervisor_jobs_total", type="traced_task", outcome="completed") == 1
    assert value(m, "job_supervisor_jobs_total", type="t.traced-middle", outcome="completed") == 2
    rss = {labels: v for (name, labels), v in m.items() if name == "job_supervisor_worker_rss_bytes"}
    assert {dict(k)["role"] for k, v in rss.items() if v > 0} == {"daemon", "worker"}
    assert d.stop() == 0

    lines = d.lines()
    raw = [line for line in lines if line.get("event") == "raw"]
    assert not raw, raw[:5]  # every line is JSON (journald keeps them as they are)
    chain = (parent, middle, task)
    trace_id, request_id = parent.context["trace_id"], parent.context["request_id"]
    assert all(j.context["trace_id"] == trace_id and j.context["request_id"] == request_id for j in chain)

    def logged(event: str, job: Any, **match: Any) -> dict[str, Any]:
        found = [x for x in lines if x.get("event") == event and x.get("job_id") == job.id
                 and all(x.get(k) == v for k, v in match.items())]
        assert found, (event, job.id, [x for x in lines if x.get("event") == event][:3])
        line = found[0]
        assert line["job_name"] == job.name and line["attempt"] == 1, line
        assert line["trace_id"] == job.context["trace_id"] and line["request_id"] == job.context["request_id"], line
        return line

    # inprocess: ctx.log and a plain structlog logger both carry the job's ids
    logged("traced.parent", parent)
    logged("traced.parent.plain", parent)
    # process pool: the same, from the worker's own JSON lines
    assert logged("traced.middle.plain", middle)["worker_pid"] > 0
    logged("traced.middle", middle)
    # subprocess: the task's and the Python job's output lines, tagged by the daemon
    logged("job.output", task, line=f"task line for {task.id}")
    logged("job.output", pyjob, line=f"pyjob line for {pyjob.id}")
    # the one summary line per attempt
    for job in (*chain, pyjob):
        summary = logged("run.finished", job)
        assert summary["outcome"] == "completed" and summary["duration_s"] >= 0
        assert summary["queue_wait_s"] is not None and summary["runtime"] == job_runtime(job.name)
    # with tracing off the task still sees the job's W3C trace context
    assert task.result["traceparent"] == task.context["traceparent"]
    assert task.result["traceparent"].split("-")[1] == trace_id
    assert pyjob.result["request_id"] == pyjob_parent.context["request_id"]


def job_runtime(name: str) -> str:
    return {"t.traced-parent": "inprocess", "t.traced-middle": "process"}.get(name, "subprocess")


# --- exporters of a real daemon -------------------------------------------------------------


async def test_console_exporter_writes_one_json_span_per_line(
    redis_url: str, use_handlers: Any, daemon: Any,
) -> None:
    use_handlers("traced")
    d = daemon(env={"JOB_SUPERVISOR_OTEL_EXPORTER": "console"})
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.traced-echo", {})).id, timeout=30)
    assert d.stop() == 0  # the stop flushes the batch of spans
    spans = [x for x in d.lines() if "context" in x and "kind" in x and "name" in x]
    process = [s for s in spans if s["name"] == "process t.traced-echo"]
    assert process, spans[:3]
    assert process[0]["context"]["trace_id"] == "0x" + job.context["trace_id"]
    assert process[0]["kind"] == "SpanKind.CONSUMER"
    assert [e["name"] for e in process[0]["events"]] == ["job.started", "job.completed"]


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


async def test_otlp_exporter_sends_spans_to_a_collector(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _Collector.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        use_handlers("traced")
        d = daemon(env={"JOB_SUPERVISOR_OTEL_EXPORTER": "otlp",
                        "JOB_SUPERVISOR_OTEL_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
                        "JOB_SUPERVISOR_OTEL_SERVICE_NAME": "orders-worker"})
        async with Client(redis_url) as client:
            job = await client.wait((await client.enqueue("t.traced-echo", {})).id, timeout=30)
        assert d.stop() == 0
    finally:
        server.shutdown()
        server.server_close()
    assert _Collector.received, "the collector got nothing"
    names, services = [], set()
    for path, ctype, body in _Collector.received:
        assert path == "/v1/traces" and ctype == "application/x-protobuf"
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            names += [(s.name, s.trace_id.hex()) for ss in rs.scope_spans for s in ss.spans]
    assert services == {"orders-worker"}
    assert ("process t.traced-echo", job.context["trace_id"]) in names


def test_console_span_lines_are_json() -> None:
    # The console exporter's formatter: one compact JSON object per line.
    from opentelemetry.sdk.trace import TracerProvider

    span = TracerProvider().get_tracer("t").start_span("x")
    span.end()
    line = span.to_json(indent=None)  # type: ignore[attr-defined]
    assert "\n" not in line and json.loads(line)["name"] == "x"

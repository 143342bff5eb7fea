"""Stack traces of failed attempts: stored per attempt in every runtime, bounded, without locals,
shown by `jobs get`, the API and the process span's `job.exception` event. Real Redis, real daemons."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runners.base import TRACEBACK_MAX_BYTES
from supervisor import Client, State
from supervisor.config import load_settings
from supervisor.daemon.app import run_daemon
from supervisor.engine.broker import Broker
from supervisor.operators.api.app import create_app
from tests.conftest import await_until, memory_tracing

SECRET = "tok_live_9f8e7d6c5b4a"  # the card token: held only in the handlers' local variables
TOKEN = "test-token-tb"

# A task that fails inside nested shell functions after 40 KB of stderr noise; the payload
# (with the secret) sits in a variable that is never printed.
TASK_SH = """#!/usr/bin/env bash
payload=$(cat)
for i in $(seq 1 400); do
  echo "noise line $i ...................................................................................." >&2
done
call_provider() { echo "call_provider: provider down" >&2; exit 1; }
authorize() { echo "authorize: charging 4200" >&2; call_provider; }
authorize
"""


def write_task(tasks: Path) -> None:
    tasks.mkdir(exist_ok=True)
    path = tasks / "tb_task.sh"
    path.write_text(TASK_SH)
    path.chmod(0o755)
    (tasks / "tb_task.toml").write_text('name = "tb_task"\nmax_deliver = 1\n')


def assert_python_trace(trace: str | None, runtime: str) -> None:
    assert trace, f"{runtime}: no stack trace stored"
    assert trace.startswith("Traceback (most recent call last):"), trace
    for name in ("in charge", "in _authorize", "in _call_provider"):
        assert name in trace, (runtime, name, trace)
    assert 'raise RuntimeError("provider down")' in trace, trace
    assert trace.rstrip().endswith("RuntimeError: provider down"), trace
    assert SECRET not in trace, f"{runtime}: a local variable's value reached the stored trace"


async def test_each_runtime_stores_the_failed_attempts_trace_without_locals(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path,
) -> None:
    # Given a daemon serving the failing handlers in every runtime, and a failing shell task
    use_handlers("tracebacks")
    write_task(tmp_path / "tasks")
    daemon()
    async with Client(redis_url) as client:
        # When each fails once, the card token in its payload
        names = ["t.tb-inprocess", "t.tb-async", "t.tb-process", "t.tb-subprocess", "tb_task"]
        refs = {n: await client.enqueue(n, {"card_token": SECRET}) for n in names}
        jobs = {n: await client.wait(r.id, timeout=60) for n, r in refs.items()}
    # Then each Python runtime's last attempt holds the handler's formatted traceback, no locals
    for name in names[:-1]:
        job = jobs[name]
        assert job.state is State.DEAD, (name, job.state, job.error)
        assert job.error is not None and SECRET not in job.error
        assert_python_trace(job.attempts[-1].traceback, name)
    # And the task's trace is its last stderr lines, bounded, without the noise that came first
    task = jobs["tb_task"]
    assert task.state is State.DEAD, task.error
    trace = task.attempts[-1].traceback
    assert trace is not None and len(trace.encode()) <= TRACEBACK_MAX_BYTES
    assert trace.endswith("authorize: charging 4200\ncall_provider: provider down"), trace[-300:]
    assert "noise line 400 " in trace and "noise line 1 " not in trace
    assert SECRET not in trace

    # And `jobs get` prints the last attempt's trace; --json carries it per attempt
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env["REDIS_URL"] = redis_url
    job_id = jobs["t.tb-process"].id
    shown = subprocess.run([sys.executable, "-m", "supervisor", "jobs", "get", job_id], capture_output=True,
                           text=True, env=env, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "stack trace (attempt 1):" in shown.stdout
    assert 'raise RuntimeError("provider down")' in shown.stdout and "in _call_provider" in shown.stdout
    # And the API's job view has it in the attempt
    app = create_app(redis_url, TOKEN)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api",
                                     headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20) as api:
            reply = await api.get(f"/jobs/{job_id}")
    finally:
        await app.state.api.aclose()
    assert reply.status_code == 200, reply.text
    assert_python_trace(reply.json()["attempts"][-1]["traceback"], "api")


async def test_a_huge_message_gives_a_bounded_trace_that_keeps_the_frames(
    redis_url: str, use_handlers: Any, daemon: Any,
) -> None:
    # Given a handler raising with a 1 MB message
    use_handlers("tracebacks")
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.tb-huge", {"size": 1_000_000})).id, timeout=30)
    # Then its stored trace holds at most 16 KiB: the frames at its start, the message's end
    trace = job.attempts[-1].traceback
    assert trace is not None
    assert len(trace.encode()) <= TRACEBACK_MAX_BYTES == 16 * 1024
    assert trace.startswith("Traceback (most recent call last):")
    assert "in huge" in trace and "in _explode" in trace and 'raise ValueError("x" * size)' in trace
    assert "bytes cut ...]" in trace and trace.rstrip().endswith("x" * 1000)


async def test_only_the_newest_attempts_keep_their_trace(broker: Broker, redis_url: str) -> None:
    # Given a job that fails 6 times, each failure but the 5th with a trace (text with JSON in it)
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue("t.many", {})
    for i in range(1, 7):
        (job,) = (await broker.claim("t.many", "A", 1, 30_000, 10)).jobs
        trace = f'Traceback: {{"traceback": "x"}} \\ "quoted" attempt {i}\n' if i != 5 else ""
        assert await broker.fail("t.many", 10, [(job.id, job.lease, "retry", f"E{i}", 0, "", trace)]) == ["retry"]
    # Then every attempt keeps its error and times, and only the newest 3 traces are kept (bounded)
    record = await broker.get(ref.id)
    assert [(a.attempt, a.error) for a in record.attempts] == [(i, f"E{i}") for i in range(1, 7)]
    assert all(a.started and a.ended for a in record.attempts)
    assert [a.traceback for a in record.attempts] == [
        None, None, *(f'Traceback: {{"traceback": "x"}} \\ "quoted" attempt {i}\n' for i in (3, 4)), None,
        'Traceback: {"traceback": "x"} \\ "quoted" attempt 6\n']


async def test_a_fail_batch_with_traces_is_one_script_call(
    broker: Broker, redis: aioredis.Redis, redis_url: str,
) -> None:
    # Given three claimed jobs (and the fail script loaded)
    async with Client(redis_url, allow_unknown=True) as client:
        refs = [await client.enqueue("t.batch", {"i": i}) for i in range(3)]
    claimed = (await broker.claim("t.batch", "A", 3, 30_000, 5)).jobs
    assert sorted(j.id for j in claimed) == sorted(r.id for r in refs)
    assert await broker.fail("t.batch", 5, []) == []
    await redis.config_resetstat()
    # When their failures, each with a trace, are settled together
    items = [(j.id, j.lease, "retry", "RuntimeError: provider down", 60_000, "", f"Traceback ... job {j.id}\n")
             for j in claimed]
    assert await broker.fail("t.batch", 5, items) == ["retry"] * 3
    # Then that took one script call, and each record's attempt has its own trace
    stats = await redis.info("commandstats")
    assert sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_eval")) == 1, stats
    for j in claimed:
        job = await broker.get(j.id)
        assert job.attempts[-1].traceback == f"Traceback ... job {j.id}\n"


async def test_the_process_span_exception_event_carries_the_stacktrace(
    redis_url: str, use_handlers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a daemon in this process, tracing to memory
    exporter = InMemorySpanExporter()
    tracing = memory_tracing(exporter)
    jobs_dir = use_handlers("tracebacks")
    write_task(tmp_path / "tasks")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        None, redis_url=redis_url, jobs_dir=jobs_dir, tasks_dir=tmp_path / "tasks", state_dir=tmp_path / "state",
        instance_name="tb", workers_concurrency=1, otel_exporter="none",
    )
    names = ["t.tb-inprocess", "t.tb-process", "t.tb-subprocess", "tb_task"]
    daemon = asyncio.create_task(run_daemon(settings, tracing=tracing))
    try:
        async with Client(redis_url, allow_unknown=True) as client:  # served once its types are published
            await await_until(lambda: client.broker.type_meta("tb_task"), timeout=20, what="types published")
            # When each runtime's handler fails
            jobs = {n: await client.wait((await client.enqueue(n, {"card_token": SECRET})).id, timeout=60)
                    for n in names}
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler: a graceful drain
        code = await asyncio.wait_for(daemon, 60)
    assert code == 0
    # Then each process span's job.exception event has the stored trace as exception.stacktrace
    spans = exporter.get_finished_spans()
    for name, job in jobs.items():
        (span,) = [s for s in spans if s.name == f"process {name}" and s.attributes.get("job.id") == job.id]
        (event,) = [e for e in span.events if e.name == "job.exception"]
        assert event.attributes["exception.stacktrace"] == job.attempts[-1].traceback, name
        if name != "tb_task":
            assert_python_trace(event.attributes["exception.stacktrace"], name)

"""The measurements of `job-supervisor bench`, one function per section, each against a `Bench`.

enqueue (Client one at a time, SyncClient one at a time, enqueue_many), drain per runtime,
idle cost and enqueue-to-start latency (one daemon), cancel-to-handler latency, the CPU of
quick CLI commands, and the backlog test. The method of each is in the package docstring.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from supervisor_bench.figures import percentile, summary
from supervisor_bench.harness import Bench
from supervisor_bench.options import (
    CANCEL_INPROCESS,
    CANCEL_PROCESS,
    CLI_COMMANDS,
    INPROCESS,
    PROCESS,
    SHELL,
    BenchError,
)


def measure_enqueue(b: Bench) -> dict[str, Any]:
    """Enqueue rates with no daemon running: Client one at a time, SyncClient one at a time, bulk."""
    one, one_sync, bulk, mem, dataset, cmds_one, cmds_bulk, scripts_bulk = [], [], [], [], [], [], [], []
    usec_one, usec_bulk = [], []
    n = b.o.jobs
    for i in range(b.o.repeat):
        b.say(f"enqueue: one at a time, {n} jobs (run {i + 1}/{b.o.repeat})")
        b.reset()
        s0 = b.stats()
        one.append(n / b.enqueue_one_by_one(INPROCESS, n))
        s1 = b.stats()
        delta = b.command_delta(s0, s1)
        cmds_one.append(delta["total"] / n)
        usec_one.append(delta["script_usec"] / n)
        b.reset()
        b.say(f"enqueue: one at a time with SyncClient, {n} jobs (run {i + 1}/{b.o.repeat})")
        one_sync.append(n / b.enqueue_one_by_one_sync(INPROCESS, n))
        b.reset()
        b.say(f"enqueue: enqueue_many in chunks of 1000, {n} jobs (run {i + 1}/{b.o.repeat})")
        s0 = b.stats()
        bulk.append(n / b.enqueue_bulk(INPROCESS, n))
        time.sleep(0.2)
        s1 = b.stats()
        delta = b.command_delta(s0, s1)
        cmds_bulk.append(delta["total"] / n)
        scripts_bulk.append(delta["scripts"] / n)
        usec_bulk.append(delta["script_usec"] / n)
        mem.append((s1["used_memory"] - s0["used_memory"]) / n)
        dataset.append((s1["dataset"] - s0["dataset"]) / n)
    b.reset()
    return {
        "jobs": n, "payload_bytes": len(json.dumps(b.payload)),
        "one_at_a_time": summary(one), "one_at_a_time_sync": summary(one_sync), "bulk": summary(bulk),
        "commands_per_job": {"one_at_a_time": statistics.median(cmds_one), "bulk": statistics.median(cmds_bulk),
                             "bulk_scripts": statistics.median(scripts_bulk)},
        "redis_script_us_per_job": {"one_at_a_time": statistics.median(usec_one),
                                    "bulk": statistics.median(usec_bulk)},
        "memory_per_job_bytes": statistics.median(mem), "dataset_per_job_bytes": statistics.median(dataset),
    }


def measure_drain(b: Bench, name: str, n: int) -> dict[str, Any]:
    """Drain rate of `n` already-queued jobs of `name` (`Bench.drain_once`, `repeat` times)."""
    runs = []
    for i in range(b.o.repeat):
        b.say(f"drain: {name}, {n} queued jobs (run {i + 1}/{b.o.repeat})")
        runs.append(b.drain_once(name, n))
    b.reset()
    rates = [r["rate"] for r in runs]
    mid = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]  # the median run's details
    return {
        "jobs": n, "rate": summary(rates), "rss": {k: max(r["rss"][k] for r in runs) for k in runs[0]["rss"]},
        "cpu_percent": mid["cpu_percent"], "start_to_ready_s": statistics.median(r["start_to_ready_s"] for r in runs),
        "commands": mid["commands"],
        "commands_per_job": statistics.median(r["commands"]["per_job"] for r in runs),
        "drain_scripts_per_job": statistics.median(r["commands"]["drain_scripts_per_job"] for r in runs),
        "drain_script_us_per_job": statistics.median(r["commands"]["drain_script_us_per_job"] for r in runs),
        "memory_per_job_bytes": statistics.median(r["memory_per_job_bytes"] for r in runs),
        "other_outcomes": [r["other_outcomes"] for r in runs if r["other_outcomes"]],
        "daemons": b.o.daemons, "handler": b.o.handler,
        **_life_figures(runs),
    }


def _life_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the figures of a job's whole life across runs: spawn to first and last job,
    the steady rate, Redis CPU (INFO cpu) and network bytes per job, the handlers' round trips."""
    def med(get: Any) -> Any:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return statistics.median(values) if values else None

    out: dict[str, Any] = {
        "start_to_first_s": med(lambda r: r.get("start_to_first_s")),
        "start_to_last_s": med(lambda r: r.get("start_to_last_s")),
        "rate_from_start": summary([r["rate_from_start"] for r in runs if r.get("rate_from_start")] or [0.0]),
        "steady_rate": med(lambda r: r.get("steady_rate")),
        "redis_cpu_us_per_job": {k: med(lambda r, k=k: r["redis_cpu_us_per_job"][k])
                                 for k in ("enqueue", "drain", "life")},
        "redis_net_bytes_per_job": {k: med(lambda r, k=k: r["redis_net_bytes_per_job"][k])
                                    for k in ("enqueue", "drain")},
        "enqueue_script_us_per_job": med(lambda r: r["commands"]["enqueue_script_us_per_job"]),
        "enqueue_commands_per_job": med(lambda r: r["commands"]["enqueue_per_job"]),
        "drain_commands_per_job": med(lambda r: r["commands"]["drain_per_job"]),
    }
    if any("roundtrips" in r for r in runs):
        out["roundtrips"] = [r.get("roundtrips") for r in runs]
    return out


def measure_latency(b: Bench) -> dict[str, Any]:
    """One daemon serving every bench type: enqueue-to-start latency. (The idle figure is a
    daemon on the shipped examples: supervisor_bench/idle.py.)"""
    loads = {name: _load_rate(b, name) for name in (INPROCESS, PROCESS) if b.o.serves(name)}
    b.reset()
    tasks = b.root / ("tasks-shell" if b.o.serves(SHELL) else "tasks-none")
    d = b.start_daemon("latency", b.root / "jobs-all", tasks)
    try:
        d.wait_ready()
        time.sleep(1.0)  # start-up transients (presence, scheduler, the pool's first beats)
        latency = {}
        for name, (rate, peak) in loads.items():
            b.say(f"latency: {name}, {b.o.latency_jobs} jobs {b.o.latency_gap_ms:g} ms apart"
                  + (f", beside {rate:,.0f} jobs/s of the same type" if rate else ""))
            latency[name.removeprefix("bench.")] = {**_latency(b, name, rate), "peak_jobs_per_s": peak}
    finally:
        d.stop()
    b.reset()
    return latency


def _load_rate(b: Bench, name: str) -> tuple[float, float | None]:
    """(jobs/s of the load beside the latency jobs of `name`, the peak it is a share of): with
    `latency_load_of_peak`, that share of a drain of `jobs` jobs measured now (the same daemons,
    concurrency and handler), else `latency_load` (None: no peak measured)."""
    if not b.o.latency_load_of_peak:
        return b.o.latency_load, None
    b.say(f"latency: the peak of {name}, a drain of {b.o.jobs} queued jobs")
    peak = float(b.drain_once(name, b.o.jobs)["rate"])
    return peak * b.o.latency_load_of_peak, round(peak)


def _latency(b: Bench, name: str, load_rate: float) -> dict[str, Any]:
    """Enqueue-to-start of `latency_jobs` jobs of `name`, `latency_gap_ms` apart (the handler
    returns its clock), beside `load_rate` jobs/s of the same type (0: none)."""
    gap = b.o.latency_gap_ms / 1000

    async def go() -> list[tuple[str, float]]:
        sent = []
        for _ in range(b.o.latency_jobs):
            t = time.time()
            ref = await b.client.enqueue(name, b.payload)
            sent.append((ref.id, t))
            await asyncio.sleep(gap)
        return sent

    load = _start_load(b, name, load_rate)
    try:
        sent = b.on_loop(go())
    finally:
        loaded = _stop_load(load)
    deadline = time.monotonic() + 60
    while b.completed(name) < len(sent) + loaded:
        if time.monotonic() > deadline:
            raise BenchError(f"latency jobs of {name} did not complete: {b.completed(name)}/{len(sent) + loaded}")
        time.sleep(0.02)
    jobs = b.on_loop(b.client.broker.get_many([i for i, _ in sent]))
    by_id = {j.id: j for j in jobs}
    precise, record, queued = [], [], []  # queued: Redis's enqueue (ms) -> the handler's first line
    for job_id, t in sent:
        job = by_id.get(job_id)
        if job is None or not isinstance(job.result, float):
            continue
        precise.append((job.result - t) * 1000)
        if job.attempts and job.attempts[0].started and job.created:
            record.append((job.attempts[0].started - job.created).total_seconds() * 1000)
            queued.append((job.result - job.created.timestamp()) * 1000)
    if not precise:
        raise BenchError(f"no latency samples for {name}")
    return {
        "jobs": len(precise), "gap_ms": b.o.latency_gap_ms, "load_jobs_per_s": load_rate, "load_jobs": loaded,
        "p50_ms": round(percentile(precise, 50), 3), "p99_ms": round(percentile(precise, 99), 3),
        "max_ms": round(max(precise), 3), "mean_ms": round(statistics.fmean(precise), 3),
        "record_p50_ms": percentile(record, 50) if record else None,
        "record_p99_ms": percentile(record, 99) if record else None,
        "created_to_start_p99_ms": round(percentile(queued, 99), 3) if queued else None,
    }


def _start_load(b: Bench, name: str, rate: float) -> subprocess.Popen[str] | None:
    """`--latency-load`: a process of its own queueing jobs of `name` at `rate` (supervisor_bench.load)."""
    if not rate:
        return None
    load = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "supervisor_bench.load", b.url, name, str(rate)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert load.stdout is not None
    if load.stdout.readline().strip() != "ready":  # every latency job is sent beside the load
        load.kill()
        raise BenchError(f"the latency load did not start (exit code {load.wait()})")
    return load


def _stop_load(load: subprocess.Popen[str] | None) -> int:
    """Stop the load (stdin closed) and return how many jobs it queued."""
    if load is None:
        return 0
    out, _ = load.communicate("", timeout=30)
    if load.returncode != 0 or not out.strip().isdigit():
        raise BenchError(f"the latency load stopped with exit code {load.returncode}")
    return int(out)


def measure_cancel(b: Bench) -> dict[str, Any]:
    """Cancel-to-handler latency of running jobs, in a daemon whose every type has ack_wait=300."""
    b.reset()
    d = b.start_daemon("cancel", b.root / "jobs-cancel", b.root / "tasks-none")
    out: dict[str, Any] = {}
    try:
        d.wait_ready()
        for name, runtime in ((CANCEL_INPROCESS, "inprocess"), (CANCEL_PROCESS, "process")):
            if runtime in b.o.runtimes:
                b.say(f"cancel latency: {name}, {b.o.cancel_jobs} running jobs cancelled one by one")
                out[runtime] = b.on_loop(_cancel_latency(b, name))
    finally:
        d.stop()
    b.reset()
    return out


async def _cancel_latency(b: Bench, name: str) -> dict[str, Any]:
    """Cancel `cancel_jobs` running jobs of `name` one by one; each handler notes when it saw its cancel."""
    notes = b.root / f"cancel-{name}.txt"
    notes.write_text("")
    seen = 0  # bytes of `notes` read so far
    lines: dict[tuple[str, str], float] = {}

    async def note(job_id: str, what: str, timeout: float = 30.0) -> float:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while (job_id, what) not in lines:
            if time.monotonic() > deadline:
                raise BenchError(f"{name}: job {job_id} did not note {what!r} within {timeout:g}s")
            with notes.open() as f:
                f.seek(seen)
                chunk = f.read()
            whole = chunk[:chunk.rfind("\n") + 1]
            seen += len(whole)
            for line in whole.splitlines():
                jid, w, t = line.split()
                lines[(jid, w)] = float(t)
            await asyncio.sleep(0.001)
        return lines[(job_id, what)]

    samples = []
    for _ in range(b.o.cancel_jobs):
        ref = await b.client.enqueue(name, {"out": str(notes)})
        await note(ref.id, "started")
        asked = time.time()
        await b.client.cancel(ref.id, "bench")
        samples.append((await note(ref.id, "saw") - asked) * 1000)
        deadline = time.monotonic() + 30
        while (await b.client.get(ref.id)).state.value != "cancelled":  # settled before the next one
            if time.monotonic() > deadline:
                raise BenchError(f"{name}: job {ref.id} did not end cancelled")
            await asyncio.sleep(0.002)
    return {"jobs": len(samples), "p50_ms": round(percentile(samples, 50), 3),
            "p99_ms": round(percentile(samples, 99), 3), "max_ms": round(max(samples), 3)}


def measure_cli_start(b: Bench) -> dict[str, Any]:
    """CPU (user + sys) of whole `job-supervisor` commands, start to exit, median of `repeat` runs each.

    Each command is a child of ours reaped with wait4, so its own rusage is read exactly
    (no other child's CPU mixes in). `enqueue` uses --allow-unknown: no daemon serves the
    bench types at this point, and the job it queues is removed with the bench's keys.
    """
    assert b.client is not None
    ref = b.on_loop(b.client.enqueue(INPROCESS, b.payload))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env["REDIS_URL"] = b.url
    argv = {"health": ["health"], "jobs get": ["jobs", "get", ref.id],
            "enqueue": ["enqueue", INPROCESS, json.dumps(b.payload), "--allow-unknown"]}
    out: dict[str, Any] = {}
    for name in CLI_COMMANDS:
        runs = []
        for _ in range(b.o.repeat):
            proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "supervisor", *argv[name]], cwd=b.root, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            if name != "health" and proc.returncode != 0:  # health says "degraded": the queued job
                raise BenchError(f"`job-supervisor {' '.join(argv[name])}` exited {proc.returncode}: {err}")
            runs.append(usage.ru_utime + usage.ru_stime)
        out[name] = {"cpu_s": round(statistics.median(runs), 3), "runs": [round(r, 3) for r in runs]}
    b.reset()
    return out


def measure_backlog(b: Bench) -> dict[str, Any]:
    """Drain rate of the first `backlog_sample` jobs with a deep queue against a shallow one."""
    out: dict[str, Any] = {"sample": b.o.backlog_sample, "depths": {}}
    for depth in (b.o.backlog_small, b.o.backlog_jobs):
        runs = []
        for i in range(b.o.repeat):
            b.say(f"backlog: {depth:,} queued, timing the first {min(b.o.backlog_sample, depth):,} "
                  f"(run {i + 1}/{b.o.repeat})")
            runs.append(b.drain_once(INPROCESS, depth, sample=min(b.o.backlog_sample, depth),
                                     enqueue_chunk=10_000))
        b.reset()
        out["depths"][str(depth)] = {
            "queued": depth, "rate": summary([r["rate"] for r in runs]),
            "enqueue_rate": summary([r["enqueue_rate"] for r in runs]),
            "memory_per_job_bytes": statistics.median(r["memory_per_job_bytes"] for r in runs),
            "dataset_per_job_bytes": statistics.median(r["dataset_per_job_bytes"] for r in runs),
            "drain_commands_per_job": statistics.median(r["commands"]["drain_per_job"] for r in runs),
            "settle_s": max(r["settle_s"] for r in runs),
            "rss": {k: max(r["rss"][k] for r in runs) for k in runs[0]["rss"]},
        }
    small = out["depths"][str(b.o.backlog_small)]["rate"]["median"]
    deep = out["depths"][str(b.o.backlog_jobs)]["rate"]["median"]
    out["ratio"] = deep / small if small else None
    return out

"""The figures the bench is judged by: the peers' (measured once on the same machine) and the targets."""

from __future__ import annotations

from typing import Any

#: Issue 9: the established libraries on a 2-core machine with a local Redis 7 (medians of 3).
PEERS: list[dict[str, Any]] = [
    {"name": "dramatiq 2.2.1", "enqueue": 4183, "drain": 2874, "config": "2 processes x 8 threads",
     "p50_ms": 6.2, "p99_ms": 397, "rss_mb": 86},
    {"name": "huey 3.5.4", "enqueue": 8106, "drain": 2798, "config": "2 worker processes",
     "p50_ms": 1.1, "p99_ms": 1.4, "rss_mb": 112},
    {"name": "taskiq 0.13 + taskiq-redis", "enqueue": 2372, "drain": 2437, "config": "2 workers",
     "p50_ms": 1.2, "p99_ms": 1.9, "rss_mb": 141},
    {"name": "saq 0.26.4", "enqueue": 4546, "drain": 1622, "config": "2 workers x concurrency 50",
     "p50_ms": 1.8, "p99_ms": 2.5, "rss_mb": 62},
    {"name": "arq 0.28.0", "enqueue": 2720, "drain": 1100, "config": "2 workers x 50 jobs, poll 0",
     "p50_ms": 283, "p99_ms": 499, "rss_mb": 64},
    {"name": "celery 5.7.0", "enqueue": 1730, "drain": 718, "config": "prefork, concurrency 2",
     "p50_ms": 2.5, "p99_ms": 4.7, "rss_mb": 140},
    {"name": "rq 3.0.0", "enqueue": 2217, "drain": 365, "config": "2 SimpleWorkers",
     "p50_ms": 1742, "p99_ms": 3195, "rss_mb": 130},
]
BEST_PEER_ENQUEUE = max(p["enqueue"] for p in PEERS)  # huey, 8,106/s
BEST_PEER_DRAIN = max(p["drain"] for p in PEERS)  # dramatiq, 2,874/s

#: Issue 9's targets.
TARGETS = {
    "drain_inprocess": 8600.0,  # jobs/s, >= 3x the fastest peer
    "drain_process": 4300.0,  # jobs/s, >= 1.5x the fastest peer, WORKERS_CONCURRENCY=2
    "enqueue_bulk": 50000.0,  # jobs/s
    "enqueue_one": 12000.0,  # jobs/s, >= 1.5x the fastest peer
    "latency_p50_ms": 1.0,
    "latency_p99_ms": 5.0,  # while draining at half the peak (`--latency-load`; issue 17)
    "latency_p99_idle_ms": 2.0,  # an idle daemon (issue 17)
    "idle_cpu_percent": 0.5,  # of one core: the shipped examples, hot reload on (issue 17, item 3)
    "start_to_ready_s": 0.4,  # `job-supervisor run` on the shipped examples, on an idle machine (issue 17)
    "backlog_ratio": 0.8,  # deep-queue rate / shallow-queue rate
    "memory_per_job_bytes": 1024.0,
    "cancel_p99_ms": 50.0,  # cancel call -> handler sees it, with ack_wait=300
    "cli_start_cpu_s": 0.3,  # user + sys CPU of one `health`, `jobs get` or `enqueue`
}


def check_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target these results measure: value, target, pass (the targets: TARGETS)."""
    out: list[dict[str, Any]] = []

    def add(key: str, label: str, value: float | None, target: float, higher: bool, peer: float | None = None) -> None:
        if value is None:
            return
        entry: dict[str, Any] = {"key": key, "label": label, "value": value, "target": target,
                                 "ok": value >= target if higher else value <= target}
        if peer:
            entry["vs_best_peer"] = round(value / peer, 2) if higher else round(peer / value, 2) if value else None
        out.append(entry)

    drain = r.get("drain", {})
    if "inprocess" in drain:
        add("drain_inprocess", "drain, inprocess (jobs/s)", drain["inprocess"]["rate"]["median"],
            TARGETS["drain_inprocess"], True, BEST_PEER_DRAIN)
    if "process" in drain:
        add("drain_process", "drain, process (jobs/s)", drain["process"]["rate"]["median"],
            TARGETS["drain_process"], True, BEST_PEER_DRAIN)
    enq = r.get("enqueue")
    if enq:
        add("enqueue_bulk", "bulk enqueue (jobs/s)", enq["bulk"]["median"], TARGETS["enqueue_bulk"], True,
            BEST_PEER_ENQUEUE)
        add("enqueue_one", "enqueue one at a time, Client (jobs/s)", enq["one_at_a_time"]["median"],
            TARGETS["enqueue_one"], True, BEST_PEER_ENQUEUE)
        if "one_at_a_time_sync" in enq:  # the peers' figures come from blocking clients, as SyncClient is
            add("enqueue_one_sync", "enqueue one at a time, SyncClient (jobs/s)",
                enq["one_at_a_time_sync"]["median"], TARGETS["enqueue_one"], True, BEST_PEER_ENQUEUE)
        add("memory_per_job", "Redis memory per queued job (B)", enq["memory_per_job_bytes"],
            TARGETS["memory_per_job_bytes"], False)
    lat = r.get("latency", {}).get("inprocess")
    if lat:
        loaded = bool(lat.get("load_jobs_per_s"))
        if not loaded:  # issue 9's p50 is an idle daemon's; beside a load only the p99 has a target
            add("latency_p50", "enqueue-to-start p50 (ms)", lat["p50_ms"], TARGETS["latency_p50_ms"], False)
        add("latency_p99", "enqueue-to-start p99 (ms)" + (", beside a load" if loaded else ", idle"), lat["p99_ms"],
            TARGETS["latency_p99_ms" if loaded else "latency_p99_idle_ms"], False)
    for runtime, c in r.get("cancel", {}).items():
        add(f"cancel_p99_{runtime}", f"cancel-to-handler p99, {runtime} (ms)", c["p99_ms"], TARGETS["cancel_p99_ms"],
            False)
    for command, c in r.get("cli", {}).items():
        add(f"cli_start_{command.replace(' ', '_')}", f"CPU of `{command}`, start to exit (s)", c["cpu_s"],
            TARGETS["cli_start_cpu_s"], False)
    idle, start = r.get("idle"), r.get("start")
    if idle and "cpu_percent" in idle:
        add("idle_cpu", "idle daemon CPU, shipped examples (% of a core)", idle["cpu_percent"],
            TARGETS["idle_cpu_percent"], False)
    if start and "ready_s" in start:
        add("start_to_ready", "run to READY, shipped examples (s, median)", start["ready_s"]["median"],
            TARGETS["start_to_ready_s"], False)
    backlog = r.get("backlog")
    if backlog and backlog.get("ratio") is not None:
        add("backlog_ratio", "deep / shallow queue drain rate", round(backlog["ratio"], 3), TARGETS["backlog_ratio"],
            True)
        deep = backlog["depths"][str(max(int(k) for k in backlog["depths"]))]
        add("memory_per_job_backlog", "Redis memory per queued job, deep queue (B)", deep["memory_per_job_bytes"],
            TARGETS["memory_per_job_bytes"], False)
    return out

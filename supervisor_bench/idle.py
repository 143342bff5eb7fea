"""Start time and idle cost of `job-supervisor run` on the shipped examples (issue 17, item 3).

The case a user starts with: the checkout's `jobs/` and `tasks/` (copied, so nothing is written
into the checkout), hot reload on, no REDIS_URL (the daemon starts its embedded Redis in a state
folder of its own). `start_runs` daemons start one after the other; each start is timed from the
spawn to READY=1 (the notify socket), with the CPU its process had spent by then. The last one
then stays idle for `idle_seconds` (a minute by default: at 0.5 % of a core, five seconds would
be three clock ticks): the CPU of the daemon (all its threads, and any worker), of its embedded
Redis apart, and the commands that Redis ran.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import redis as syncredis

import supervisor
from supervisor.engine import keys
from supervisor_bench.figures import cpu_delta, cpu_snapshot
from supervisor_bench.harness import Bench

#: What a copy of the examples leaves out (build output, caches).
_NOT_COPIED = shutil.ignore_patterns("__pycache__", "bin", "obj", "*.pyc")


def shipped_examples() -> Path | None:
    """The checkout's root when its `jobs/` and `tasks/` are next to the package (not in a wheel)."""
    root = Path(supervisor.__file__).resolve().parents[1]
    return root if (root / "jobs").is_dir() and (root / "tasks").is_dir() else None


def _redis_stats(r: syncredis.Redis) -> dict[str, Any]:
    """`Bench.stats`' command counts, from the embedded Redis (one INFO: nothing else of ours is counted)."""
    info = r.info("all")
    stats = {k.removeprefix("cmdstat_"): v for k, v in info.items() if k.startswith("cmdstat_") and isinstance(v, dict)}
    return {"total": int(info["total_commands_processed"]),
            "calls": {k: int(v["calls"]) for k, v in stats.items()},
            "usec": {k: int(v["usec"]) for k, v in stats.items()}}


def measure_start_and_idle(b: Bench) -> tuple[dict[str, Any], dict[str, Any]]:
    """(start, idle) figures of daemons on the shipped examples; both say why when they were skipped."""
    root = shipped_examples()
    if root is None:
        skipped = {"skipped": "no jobs/ and tasks/ next to the supervisor package (an installed wheel)"}
        return skipped, skipped
    src = b.root / "examples"
    for folder in ("jobs", "tasks"):
        shutil.rmtree(src / folder, ignore_errors=True)
        shutil.copytree(root / folder, src / folder, ignore=_NOT_COPIED)
    env = b.daemon_env(src / "jobs", src / "tasks", {
        "JOB_SUPERVISOR_STATE_DIR": str(src / "state"), "JOB_SUPERVISOR_INSTANCE_NAME": "examples"})
    env.pop("REDIS_URL")
    runs = []
    for i in range(b.o.start_runs):
        b.say(f"start: daemon on the shipped examples, {i + 1} of {b.o.start_runs}")
        d = b.start_daemon("examples", src / "jobs", src / "tasks", env=env)
        ready = d.wait_ready() - d.spawned
        cpu = d.ps.cpu_times()
        runs.append({"ready_s": round(ready, 3), "cpu_s": round(cpu.user + cpu.system, 3)})
        if i < b.o.start_runs - 1:
            d.stop()
    start = {"case": "job-supervisor run on the shipped examples, embedded Redis",
             "ready_s": {"median": round(statistics.median(r["ready_s"] for r in runs), 3),
                         "min": min(r["ready_s"] for r in runs)},
             "cpu_s_median": round(statistics.median(r["cpu_s"] for r in runs), 3), "runs": runs,
             "loadavg_1m": round(os.getloadavg()[0], 2)}
    try:
        idle = _idle(b, d, src / "state" / "redis.sock")
    finally:
        d.stop()
    return start, idle


def _idle(b: Bench, d: Any, sock: Path) -> dict[str, Any]:
    """The idle figure of daemon `d` (READY already): its CPU, its embedded Redis's, Redis's commands."""
    time.sleep(1.0)  # start-up transients (presence, scheduler, the janitor's first pass)
    b.say(f"idle: {b.o.idle_seconds:g}s, daemon on the shipped examples")
    procs = d.tree()
    redis_pids = {p.pid for p in procs if _is_redis(p)}
    r = syncredis.Redis(unix_socket_path=str(sock), decode_responses=True)
    try:
        c0, s0, t0 = cpu_snapshot(procs), _redis_stats(r), time.perf_counter()
        time.sleep(b.o.idle_seconds)
        c1, s1, t1 = cpu_snapshot(d.tree()), _redis_stats(r), time.perf_counter()
        types = int(r.scard(keys.TYPES_KEY))
    finally:
        r.close()
    wall = t1 - t0
    cmds = Bench.command_delta(s0, s1)
    ours = ({k: v for k, v in c0.items() if k not in redis_pids}, {k: v for k, v in c1.items() if k not in redis_pids})
    theirs = ({k: v for k, v in c0.items() if k in redis_pids}, {k: v for k, v in c1.items() if k in redis_pids})
    return {
        "case": "shipped examples (jobs/ + tasks/), hot reload on, embedded Redis",
        "seconds": round(wall, 2), "types_served": types, "processes": len(procs),
        "cpu_percent": round(cpu_delta(*ours) / wall * 100, 3),
        "redis_cpu_percent": round(cpu_delta(*theirs) / wall * 100, 3),
        "commands_per_s": round(cmds["total"] / wall, 2), "by_command": cmds["calls"],
        "rss_mb": round(sum(p.memory_info().rss for p in d.tree() if p.pid not in redis_pids) / 2**20, 1),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _is_redis(p: psutil.Process) -> bool:
    try:
        return "redis-server" in p.name()
    except psutil.Error:
        return False


__all__ = ["measure_start_and_idle", "shipped_examples"]

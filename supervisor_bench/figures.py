"""Small arithmetic of the bench's figures (percentiles, medians with spread), payloads, machine, CPU."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(int(-(-q * len(ordered) // 100)), 1)  # ceil(q/100 * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]


def summary(runs: Sequence[float]) -> dict[str, Any]:
    """Median of the runs, the runs themselves, and the spread as +/- % of the median."""
    med = statistics.median(runs)
    spread = (max(runs) - min(runs)) / 2 / med * 100 if med else 0.0
    return {"median": med, "runs": list(runs), "spread_pct": round(spread, 1)}


def payload_of(size: int) -> dict[str, str]:
    """A payload whose JSON text is about `size` bytes."""
    return {"data": "x" * max(size - 11, 0)}


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from redis.utils import HIREDIS_AVAILABLE  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        HIREDIS_AVAILABLE = False  # noqa: N806  (redis-py's name)
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor(), "python": platform.python_version(),
        "platform": platform.platform(), "hiredis": bool(HIREDIS_AVAILABLE),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_before_percent": psutil.cpu_percent(interval=1.0),  # other work on the machine
    }


def cpu_snapshot(procs: Sequence[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two snapshots (processes that appeared count from zero)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())

"""`job-supervisor bench --handler redis-roundtrip` (issue 17, item 5): every job's handler makes
one Redis round trip, the drain is timed from the daemons' spawn, and Redis's cost per job is
reported; `--latency-load` (item 6) measures the latency beside a steady load of the same type.
Counts only (no timing target: those belong to the bench itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

JOBS = 300


def test_roundtrip_handlers_each_make_one_round_trip(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_", "NOTIFY_SOCKET"))}
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "bench", "--json", "--handler", "redis-roundtrip", "--only", "drain",
         "--runtimes", "inprocess,process", "--jobs", str(JOBS), "--repeat", "1", "--daemons", "2",
         "--concurrency", "0", "--workers", "1", "--redis-url", redis_url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    r = json.loads(proc.stdout)
    assert r["options"]["handler"] == "redis-roundtrip" and r["options"]["daemons"] == 2
    for runtime in ("inprocess", "process"):
        d = r["drain"][runtime]
        # every job ran its handler once, and each handler made its one INCR (no retries: no failures)
        assert d["roundtrips"] == [JOBS], (runtime, d["roundtrips"])
        assert not d["other_outcomes"]
        assert 0 < d["start_to_first_s"] <= d["start_to_last_s"]
        assert d["redis_cpu_us_per_job"]["life"] > 0 and d["redis_net_bytes_per_job"]["drain"] > 0
        # the handler's INCR is one command of the drain's; enqueue is the one script call per chunk
        assert d["drain_commands_per_job"] >= 1 and d["enqueue_commands_per_job"] > 0


def test_latency_beside_a_load_counts_the_load_and_every_latency_job(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_", "NOTIFY_SOCKET"))}
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "bench", "--json", "--only", "latency", "--runtimes", "inprocess",
         "--latency-jobs", "50", "--latency-gap-ms", "10", "--latency-load", "500", "--redis-url", redis_url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lat = json.loads(proc.stdout)["latency"]["inprocess"]
    # every latency job was measured, and the load ran beside them (and was drained too)
    assert lat["jobs"] == 50 and lat["load_jobs_per_s"] == 500
    assert lat["load_jobs"] > 1, lat
    assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]


def test_latency_beside_half_the_peak_measures_the_peak_first(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_", "NOTIFY_SOCKET"))}
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "bench", "--json", "--only", "latency", "--runtimes", "inprocess",
         "--jobs", "2000", "--latency-jobs", "30", "--latency-gap-ms", "10", "--latency-load", "half",
         "--redis-url", redis_url],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110, check=False,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lat = json.loads(proc.stdout)["latency"]["inprocess"]
    # a drain of the 2,000 jobs set the peak; the load ran at half of it, beside every latency job
    assert lat["peak_jobs_per_s"] > 0 and abs(lat["load_jobs_per_s"] - lat["peak_jobs_per_s"] / 2) <= 1, lat
    assert lat["jobs"] == 30 and lat["load_jobs"] > 1, lat


def test_latency_load_must_be_a_rate_or_half(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "supervisor", "bench", "--latency-load", "fast"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "neither a rate in jobs/s" in proc.stderr and "half" in proc.stderr

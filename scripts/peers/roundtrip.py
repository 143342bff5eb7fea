"""Issue 17's side-by-side comparison with a handler that does real work (one Redis round trip per
job), on one Redis in one sitting: huey and dramatiq (scripts/peers/peer_roundtrip.py, in the
peers' venv) and `job-supervisor bench --handler redis-roundtrip` in our configurations, then
the table of issue 17, the ratios against its targets, and the enqueue-to-start latency of jobs
enqueued every 10 ms (ours and huey's). Run it through scripts/peers/roundtrip.sh.

    python scripts/peers/roundtrip.py [--redis-url redis://host:port] [--jobs N] [--repeat R]

Without --redis-url it starts a private redis-server (the bench's settings: appendonly yes,
appendfsync everysec) on loopback TCP. The peers get databases 1 and 2, the bench database 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PEERS_PY = ROOT / ".venv-peers" / "bin" / "python"
DRIVER = ROOT / "scripts" / "peers" / "peer_roundtrip.py"

#: Our configurations (label, `job-supervisor bench` arguments); type concurrency 0 = the default.
OURS = [
    ("ours, defaults (one daemon, in-process)", ["--runtimes", "inprocess", "--concurrency", "0"]),
    ("ours, two daemons (one per core)", ["--runtimes", "inprocess", "--concurrency", "0", "--daemons", "2"]),
    # the type's concurrency tuned for a handler that waits on Redis: 30-100 is a plateau on this
    # 2-core VM (BENCHMARKS.md, issue 17's third round), against the default 10
    ("ours, two daemons, type concurrency 50", ["--runtimes", "inprocess", "--concurrency", "50", "--daemons", "2"]),
    ("ours, process runtime, WORKERS_CONCURRENCY=2",
     ["--runtimes", "process", "--workers", "2", "--process-concurrency", "0"]),
]


def run(argv: list[str], what: str, log_level: str | None = None) -> dict[str, Any]:
    print(f"roundtrip: {what}", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_"))}
    if log_level:
        env["BENCH_DAEMON_LOG_LEVEL"] = log_level  # the bench's daemons log at `warning` unless told
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def bench(url: str, args: list[str], jobs: int, repeat: int, what: str, log_level: str) -> dict[str, Any]:
    return run([sys.executable, "-m", "supervisor", "bench", "--json", "--redis-url", f"{url}/0",
                "--handler", "redis-roundtrip", "--jobs", str(jobs), "--repeat", str(repeat), *args], what, log_level)


def ours_row(label: str, r: dict[str, Any]) -> dict[str, Any]:
    d = next(iter(r["drain"].values()))
    return {"label": label, "rate": d["rate_from_start"]["median"], "runs": d["rate_from_start"]["runs"],
            "steady": d["steady_rate"], "cpu_us": d["redis_cpu_us_per_job"]["life"],
            "commands": d["commands_per_job"], "first_s": d["start_to_first_s"]}


def peer_row(label: str, r: dict[str, Any]) -> dict[str, Any]:
    m = r["median"]
    return {"label": label, "rate": m["rate_from_start"], "runs": [x["rate_from_start"] for x in r["runs"]],
            "steady": m["steady_rate"], "cpu_us": m["redis_cpu_us_per_job"], "commands": m["commands_per_job"],
            "first_s": m["start_to_first_s"]}


def table(rows: list[dict[str, Any]]) -> None:
    print(f"| {'configuration':46} | jobs/s (start to last job) | steady (first to last) "
          "| Redis CPU per job | Redis commands per job | start to first job |")
    print("|---|---|---|---|---|---|")
    for x in rows:
        runs = ", ".join(f"{v:,.0f}" for v in x["runs"])
        print(f"| {x['label']:46} | {x['rate']:,.0f} ({runs}) | {x['steady']:,.0f} | {x['cpu_us']:.0f} µs "
              f"| {x['commands']:.1f} | {x['first_s']:.2f} s |")


def ratios(rows: dict[str, dict[str, Any]]) -> None:
    best_peer = max(rows["huey"]["rate"], rows["dramatiq"]["rate"])
    best_ours = max(rows["defaults"]["rate"], rows["two"]["rate"], rows["tuned"]["rate"])
    checks = [("our best 2-core configuration / best peer", best_ours / best_peer, 2.0),
              ("our defaults / best peer", rows["defaults"]["rate"] / best_peer, 1.5),
              ("process runtime (WORKERS_CONCURRENCY=2) / huey's 2 processes",
               rows["process"]["rate"] / rows["huey"]["rate"], 1.5)]
    for label, ratio, target in checks:
        print(f"{label:64} {ratio:5.2f}x  (target {target}x: {'met' if ratio >= target else 'MISSED'})")


def latency(url: str, n: int, log_level: str) -> None:
    ours = run([sys.executable, "-m", "supervisor", "bench", "--json", "--redis-url", f"{url}/0", "--handler",
                "redis-roundtrip", "--only", "latency", "--runtimes", "inprocess", "--concurrency", "0",
                "--latency-jobs", str(n), "--latency-gap-ms", "10", "--idle-seconds", "0.5"],
               "ours: latency, jobs every 10 ms", log_level)["latency"]["inprocess"]
    huey = run([str(PEERS_PY), str(DRIVER), "huey", "latency", f"{url}/1", str(n), "10"],
               "huey: latency, jobs every 10 ms")["latency"]
    print(f"\nenqueue-to-start, {n} jobs every 10 ms (round-trip handler): "
          f"ours p50 {ours['p50_ms']:.2f} / p99 {ours['p99_ms']:.2f} ms; "
          f"huey p50 {huey['p50_ms']:.2f} / p99 {huey['p99_ms']:.2f} ms "
          f"({'lower' if ours['p50_ms'] < huey['p50_ms'] and ours['p99_ms'] < huey['p99_ms'] else 'NOT lower'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency-jobs", type=int, default=500)
    # The settings' default, as a user who starts `job-supervisor run` gets it (a `run.finished`
    # line per job); the peers log at their own defaults (huey's consumer: two lines per task).
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="our daemons' log level (default: info, the settings' default)")
    a = ap.parse_args()
    server, tmp = None, None
    url = a.redis_url
    if url is None:
        from supervisor.daemon.redis_server import RedisServer  # noqa: PLC0415

        tmp = Path(tempfile.mkdtemp(prefix="peers-redis-"))
        server = RedisServer(tmp, appendonly=True, appendfsync="everysec")
        server.start()
        url = server.url.rsplit("/", 1)[0] if server.url.count("/") > 2 else server.url
    url = url.rstrip("/")
    try:
        peers = {p: run([str(PEERS_PY), str(DRIVER), p, "drain", f"{url}/{db}", str(a.jobs), str(a.repeat)],
                        f"{p}: drain of {a.jobs} jobs x {a.repeat}") for p, db in (("huey", 1), ("dramatiq", 2))}
        ours = {key: bench(url, [*args, "--only", "drain"], a.jobs, a.repeat, label, a.log_level)
                for key, (label, args) in zip(("defaults", "two", "tuned", "process"), OURS, strict=True)}
        rows = {"huey": peer_row("huey 3.5.4 (2 worker processes)", peers["huey"]),
                "dramatiq": peer_row("dramatiq 2.2.1 (2 processes x 8 threads)", peers["dramatiq"]),
                **{k: ours_row(label, ours[k]) for k, (label, _) in zip(ours, OURS, strict=True)}}
        print(f"\n{a.jobs:,} jobs drained from a full queue, one Redis round trip per job, medians of {a.repeat}; "
              f"our daemons at log level {a.log_level}")
        table(list(rows.values()))
        print()
        ratios(rows)
        latency(url, a.latency_jobs, a.log_level)
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

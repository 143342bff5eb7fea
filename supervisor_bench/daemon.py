"""A daemon under test: one `python -m supervisor run` subprocess, and a sampler of its peak RSS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from runners.stop import Escalation, ProcessTarget, stop_sync
from supervisor_bench.options import BenchError


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
            self.proc = subprocess.Popen(
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

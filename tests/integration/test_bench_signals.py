"""`job-supervisor bench` stopped by a signal leaves nothing running: its private redis-server
and every daemon it started are stopped before it exits (128 + the signal's number)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_until


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_bench_stopped_by_a_signal_stops_its_redis_and_daemons(sig: int, tmp_path: Path) -> None:
    # Given a small bench on its own private Redis (no REDIS_URL), with its redis-server and a daemon up
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_", "NOTIFY_SOCKET"))}
    bench = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "bench", "--quick", "--runtimes", "inprocess", "--jobs", "200",
         "--only", "drain"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        me = psutil.Process(bench.pid)

        def both_running() -> list[psutil.Process]:
            found = _descendants(me)
            names = [" ".join(_cmdline(p)) for p in found]
            redis = any("redis-server" in n for n in names)
            daemon = any("-m supervisor run" in n for n in names)
            return found if redis and daemon else []

        children = wait_until(both_running, 60, interval=0.005, what="the bench's redis-server and a daemon")

        # When it is sent the signal
        bench.send_signal(sig)

        # Then it exits 128 + N once every child it had is gone
        code = bench.wait(90)
        said = bench.stderr.read() if bench.stderr else ""
        assert code == 128 + sig, said
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"still running after the bench exited: {alive}"
        assert "stopped by" in said
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        if bench.stderr:
            bench.stderr.close()

"""The pool's fork server: how workers are started, what the server imports, and starting it early.

Workers are forked from a fork server (`forkserver`, where the platform has it) that has imported
the workers' code once (`PRELOAD`: `runners.fork_server_preload`); never plain `fork`, which would
copy a daemon's threads and locks. Importing that code takes the server a large part of a
daemon's start, so `job-supervisor run` starts the server first, before it even reads its
settings, when the handler files' text says a `process` type is likely (`likely_needed`, on the
folder the `--jobs-dir` flag, `JOB_SUPERVISOR_JOBS_DIR` or the default name): both imports then
run at once, on two cores. `supervisor.daemon.app` asks again with the settings' folder (one
set in a TOML or .env file), before the daemon imports its own modules. A wrong guess costs an
idle fork server (it exits with the daemon); a missed one costs the head start only: the pool
starts the server when it first needs it.
This module imports only the standard library.
"""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path

#: What the fork server imports before it forks any worker (handler files are loaded by each worker).
PRELOAD = ["runners.fork_server_preload"]
_PROCESS = re.compile(rb"""runtime\s*=\s*["']process["']""")
_ASKED: set[tuple[Path, str]] = set()  # (folder, default runtime) pairs `start_if_likely` checked


def default_start_method() -> str:
    """`forkserver` where available (Linux, BSD, macOS), else `spawn`; never plain `fork`."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def likely_needed(jobs_dir: Path, default_runtime: str) -> bool:
    """Whether a handler file of `jobs_dir` seems to declare a `process` type: `runtime="process"`
    in its text, or any `@job` when the settings' default runtime is `process`. A guess, from the
    text alone: nothing is imported."""
    try:
        files = sorted(Path(jobs_dir).glob("*.py"))
    except OSError:
        return False
    for path in files:
        try:
            text = path.read_bytes()
        except OSError:
            continue
        if _PROCESS.search(text) or (default_runtime == "process" and b"@job" in text):
            return True
    return False


def start_if_likely(jobs_dir: Path, default_runtime: str) -> None:
    """`start_early` when `likely_needed` says so; a server already running is kept, and a folder
    asked about already (`run`'s guess, then the settings' same folder) is not read again."""
    asked = (Path(jobs_dir).absolute(), default_runtime)
    if asked in _ASKED:
        return
    _ASKED.add(asked)
    if likely_needed(jobs_dir, default_runtime):
        start_early()


def start_early() -> None:
    """Start the fork server now (a fork and exec: it imports `PRELOAD` in its own process while
    the caller goes on); the pool's first worker start then finds it running."""
    if default_start_method() != "forkserver":
        return
    from multiprocessing import forkserver  # noqa: PLC0415 (only here)

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


__all__ = ["PRELOAD", "default_start_method", "likely_needed", "start_early", "start_if_likely"]

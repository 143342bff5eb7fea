"""The `process` runtime: a pool of long-lived worker processes that import the handlers once.

This module owns the worker processes of one daemon (start, replace, recycle,
stop), the protocol between the daemon and its workers, and the code a worker
runs. The dispatcher sees an ordinary `Runner`; the pool caps the total number
of runs at its size (the dispatcher caps each type).

Design, and why:

- Start method: `forkserver` (where the platform has it, else `spawn`), never a
  plain fork of the threaded daemon. The fork server preloads this module (and so
  pydantic, structlog, the `supervisor` package), so replacing a crashed worker
  takes a few milliseconds instead of a fresh interpreter's ~0.4 s. Handler files
  are *not* preloaded: every worker calls `load_jobs(jobs_dir)` itself, so a
  recycled worker sees the files as they are now. As with any non-fork start
  method, a `__main__` script must guard its entry point with
  `if __name__ == "__main__":` (`python -m supervisor` and the console script do).
  The fork server keeps the stdout and environment the daemon had when the first
  pool started; workers log JSON lines to that stdout.
- IPC: one duplex `multiprocessing.Pipe` per worker carrying JSON text only (no
  pickled user objects cross it, in either direction). The daemon reads each
  pipe with `loop.add_reader`, one message per readiness callback, so it never
  blocks its loop waiting for a worker; a worker's death is seen as EOF on the
  pipe and on the process sentinel.
- Inside a worker, the main thread runs the handler (sync handlers directly,
  async ones on one persistent event loop per worker, which is much cheaper than
  `asyncio.run` per job). A daemon listener thread owns the receiving end: it
  hands `run`/`stop` to the main thread and acts on `cancel` and child-enqueue
  replies at once, so a busy handler can still be cancelled.

Protocol (one JSON object per message, `op` names it):

    daemon -> worker   run {job_id, name, attempt, payload_json, context, deadline}
                       cancel {job_id} | enqueued {req, ok, value | error} | stop
    worker -> daemon   ready {pid, types, errors}
                       progress {job_id, percent, message, step} | heartbeat {job_id}
                       enqueue {job_id, req, name, payload, options, submit}
                       result {job_id, status, result (JSON text or null), error, retry_delay_s, rss?}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import queue
import signal
import threading
import time
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
from supervisor import log as log_setup
from supervisor import telemetry
from supervisor.client import JobRef
from supervisor.context import Context
from supervisor.errors import InvalidPayload, SupervisorError
from supervisor.registry import Registry, load_jobs

log = structlog.get_logger(__name__)

ChildEnqueue = Callable[[str, Any, dict[str, Any], bool], Awaitable[Any]]

_EXIT_WAIT_S = 5.0  # after SIGKILL: how long a process may take to be reaped before we stop waiting
_EOF_WAIT_S = 2.0  # pipe closed but process still there: how long before we kill it
_BACKOFF_MAX_S = 30.0  # between replacements of workers that keep dying before they are ready


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


def _decode_reply(reply: dict[str, Any]) -> Any:
    if not reply.get("ok"):
        raise _rebuild_error(reply["error"])
    value = reply.get("value")
    if isinstance(value, dict) and "$jobref" in value:
        return JobRef(**value["$jobref"])
    return value


# --- the daemon's side ---------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Job:
    """One run in flight on a worker."""

    request: RunRequest
    events: RunEvents
    fut: asyncio.Future[RunResult]
    cancel_requested: bool = False
    stopped_with: str | None = None  # the signal the pool used on a worker that ignored cancel


@dataclass(eq=False)
class _Worker:
    """The daemon's handle on one worker process."""

    proc: BaseProcess
    conn: Connection
    pid: int
    generation: int
    ready: asyncio.Future[bool]
    exited: asyncio.Future[int | None]
    started_at: float = field(default_factory=time.time)
    state: str = "starting"  # starting -> idle <-> busy -> retiring -> dead
    jobs_run: int = 0
    job: _Job | None = None
    rss: int | None = None
    replaced: bool = False
    reading: bool = True
    types: list[str] = field(default_factory=list)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class ProcessPoolRunner:
    """Runs jobs on a pool of long-lived worker processes (the `process` runtime).

    Args:
        jobs_dir: the handler folder every worker loads (`supervisor.registry.load_jobs`).
        workers: pool size (settings.workers_concurrency): at most this many runs at once.
        max_jobs_per_worker: replace a worker after it ran this many jobs.
        max_worker_rss_mb: replace a worker whose RSS, measured after each job, exceeds this.
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
        max_jobs_per_worker: int | None = None,
        max_worker_rss_mb: float | None = None,
        cancel_grace_s: float = 10.0,
        kill_grace_s: float = 5.0,
        child_enqueue: ChildEnqueue | None = None,
        log_level: str = "info",
        start_method: str | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers!r} must be at least 1")
        method = start_method or default_start_method()
        if method == "fork":
            raise ValueError("start_method='fork' is unsafe in the threaded daemon; use 'forkserver' or 'spawn'")
        self.jobs_dir = Path(jobs_dir).resolve()
        self.size = workers
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
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._generation = 0
        self._closing = False
        self._closed = asyncio.Event()
        self._early_deaths = 0  # consecutive workers that died before ready (crash-loop backoff)
        self._spawns: set[asyncio.Future[None]] = set()  # delayed replacements (crash-loop backoff)
        self._tasks: set[asyncio.Future[None]] = set()  # child enqueues in flight
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
                 pids=[w.pid for w in started], types=self.types, load_errors=self.load_errors)

    async def close(self) -> None:
        """Stop every worker: a stop message, then SIGTERM and SIGKILL after `kill_grace_s` each."""
        if self._closing:
            return
        self._closing = True
        self._closed.set()
        for spawn in list(self._spawns):
            spawn.cancel()
        workers = list(self._workers.values())
        for w in workers:
            if w.state != "dead":
                w.state = "retiring"
                self._send(w, {"op": "stop"})  # a busy worker stops after its current job
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
        """Replace every worker between jobs (idle ones now, busy ones when their job ends)."""
        self._generation += 1
        while not self._idle.empty():
            w = self._idle.get_nowait()
            if w.state == "idle":
                self._retire(w, "recycle")
        log.info("pool.recycle", generation=self._generation, workers=len(self._workers))

    def workers_info(self) -> list[dict[str, Any]]:
        """One entry per live worker: pid, state, jobs run, RSS bytes, the job it is running."""
        info = []
        for w in self._workers.values():
            try:
                rss: int | None = psutil.Process(w.pid).memory_info().rss
            except psutil.Error:
                rss = None
            info.append({
                "pid": w.pid, "state": w.state, "jobs_run": w.jobs_run, "rss_bytes": rss,
                "busy_job": w.job.request.job_id if w.job is not None else None, "started_at": w.started_at,
            })
        return info

    # --- running -------------------------------------------------------------------------

    async def run(self, request: RunRequest, events: RunEvents, cancel: asyncio.Event) -> RunResult:
        """Run one attempt on a free worker (waiting for one if all are busy)."""
        if cancel.is_set():
            return RunResult(RunStatus.CANCELLED, error="cancelled before it started")
        w = await self._acquire(cancel)
        if w is None:
            if cancel.is_set():
                return RunResult(RunStatus.CANCELLED, error="cancelled while waiting for a worker")
            return RunResult(RunStatus.FAILED, error="the process pool is closed")
        loop = asyncio.get_running_loop()
        job = _Job(request, events, loop.create_future())
        w.job = job
        w.state = "busy"
        # If the send fails the worker is dying; its death resolves the job.
        self._send(w, {
            "op": "run", "job_id": request.job_id, "name": request.name, "attempt": request.attempt,
            "payload_json": request.payload_json, "context": request.context, "deadline": request.deadline,
        })
        timer = None if request.timeout_s is None else loop.call_later(
            max(request.timeout_s, 0.0), self._on_timeout, w, job)
        watcher = loop.create_task(self._watch_cancel(w, job, cancel))
        try:
            result = await job.fut
        except asyncio.CancelledError:
            # The dispatcher gave up on the run (shutdown): its worker cannot be trusted to stop.
            if w.job is job:
                w.job = None
                self._retire(w, "abandoned", signal.SIGKILL)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            watcher.cancel()
        if w.job is job:  # ended on a live worker (not killed for a timeout or a cancel)
            w.job = None
            w.jobs_run += 1
            self._after_job(w)
        if job.cancel_requested:
            error = "cancelled"
            if job.stopped_with is not None:
                error = (f"cancelled; the handler ignored it for {self.cancel_grace_s:g}s, "
                         f"worker {w.pid} stopped with {job.stopped_with}")
            return RunResult(RunStatus.CANCELLED, result=result.result, error=error, pid=w.pid)
        return result

    async def _acquire(self, cancel: asyncio.Event) -> _Worker | None:
        """A ready worker of the current generation; None when cancelled or closing first."""
        while not self._closing:
            if not self._idle.empty():
                w = self._idle.get_nowait()  # fast path: no tasks created
            else:
                getter = asyncio.ensure_future(self._idle.get())
                stops = [asyncio.ensure_future(self._closed.wait()), asyncio.ensure_future(cancel.wait())]
                try:
                    await asyncio.wait([getter, *stops], return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    if getter.done() and not getter.cancelled():
                        self._idle.put_nowait(getter.result())  # taken just as we were cancelled
                    raise
                finally:
                    for t in stops:
                        t.cancel()
                    if not getter.done():
                        getter.cancel()
                if not getter.done() or getter.cancelled():
                    return None
                w = getter.result()
                if self._closing or cancel.is_set():
                    self._idle.put_nowait(w)  # keep it for another run
                    return None
            if w.state != "idle":
                continue  # died or retired while it waited in the queue
            if w.generation != self._generation:
                self._retire(w, "recycle")
                continue
            return w
        return None

    async def _watch_cancel(self, w: _Worker, job: _Job, cancel: asyncio.Event) -> None:
        """Pass a cancel request to the worker; stop the worker if the handler ignores it."""
        await cancel.wait()
        if job.fut.done():
            return
        job.cancel_requested = True
        self._send(w, {"op": "cancel", "job_id": job.request.job_id})
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
            job.fut.set_result(RunResult(RunStatus.CANCELLED, pid=w.pid))

    def _on_timeout(self, w: _Worker, job: _Job) -> None:
        if job.fut.done() or w.job is not job:
            return
        w.job = None  # detach first: the worker's death must not report this job as a crash
        timeout = job.request.timeout_s or 0.0
        log.warning("pool.timeout", pid=w.pid, job_id=job.request.job_id, timeout_s=timeout)
        self._retire(w, "timeout", signal.SIGKILL)
        job.fut.set_result(RunResult(
            RunStatus.TIMEOUT, error=f"timed out after {timeout:g}s; worker {w.pid} killed", pid=w.pid))

    def _after_job(self, w: _Worker) -> None:
        """Put the worker back in the pool, or replace it if it is due for recycling."""
        if w.state != "busy":
            return
        reason = None
        if self._closing:
            reason = "closing"
        elif w.generation != self._generation:
            reason = "recycle"
        elif self.max_jobs_per_worker is not None and w.jobs_run >= self.max_jobs_per_worker:
            reason = "max_jobs"
        elif self.max_worker_rss_bytes is not None and w.rss is not None and w.rss > self.max_worker_rss_bytes:
            reason = "max_rss"
        if reason is None:
            w.state = "idle"
            self._idle.put_nowait(w)
            return
        log.info("pool.worker_recycled", pid=w.pid, reason=reason, jobs_run=w.jobs_run, rss_bytes=w.rss)
        self._retire(w, reason)

    # --- workers ---------------------------------------------------------------------------

    def _launch(self) -> tuple[BaseProcess, Connection] | None:
        """Start one worker process (blocking: a few ms with the fork server running)."""
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        options = {"log_level": self.log_level, "measure_rss": self.max_worker_rss_bytes is not None}
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
        w = _Worker(proc, conn, proc.pid, self._generation, loop.create_future(), loop.create_future())
        self._workers[w.pid] = w
        loop.add_reader(conn.fileno(), self._on_readable, w)
        loop.add_reader(proc.sentinel, self._on_sentinel, w, 0)
        w.timers.append(loop.call_later(self.ready_timeout_s, self._on_ready_timeout, w))
        if self._closing:
            w.state = "retiring"
            self._send(w, {"op": "stop"})
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
        """Take a worker out of service and start its replacement now.

        Without `sig` the worker gets a stop message (it exits when idle), escalating to
        SIGTERM and SIGKILL after `kill_grace_s` each; with `sig` it is signalled at once
        (the cancel path escalates on its own schedule).
        """
        if w.state == "dead":
            return
        w.state = "retiring"
        self._replace(w)
        if sig is None:
            self._send(w, {"op": "stop"})
            assert self._loop is not None
            w.timers.append(self._loop.call_later(self.kill_grace_s, self._escalate, w, signal.SIGTERM))
        else:
            log.info("pool.worker_stopping", pid=w.pid, reason=reason, signal=sig.name)
            self._signal(w, sig)

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

    def _send(self, w: _Worker, msg: dict[str, Any]) -> bool:
        if w.state == "dead":
            return False
        try:
            w.conn.send_bytes(json.dumps(msg).encode())
        except (OSError, ValueError):
            return False  # the worker is gone; its sentinel reports it
        return True

    # --- messages and deaths ---------------------------------------------------------------

    def _on_readable(self, w: _Worker) -> None:
        try:
            # One message per callback: the fd stays readable while more are queued, and
            # Connection does no buffering of its own, so nothing is left unseen.
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            self._stop_reading(w)
            if w.state != "dead":
                # The worker closed its end: it is exiting. If it somehow is not, make it.
                assert self._loop is not None
                w.timers.append(self._loop.call_later(_EOF_WAIT_S, self._signal, w, signal.SIGKILL))
            return
        try:
            self._dispatch(w, json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("pool.bad_message", pid=w.pid, error=f"{type(exc).__name__}: {exc}", size=len(data))

    def _dispatch(self, w: _Worker, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "ready":
            self._on_ready(w, msg)
            return
        job = w.job
        if job is None or msg.get("job_id") != job.request.job_id:
            return  # about a job this worker no longer runs for us (timed out, cancelled)
        if op == "result":
            if job.fut.done():
                return
            w.rss = msg.get("rss")
            text = msg.get("result")
            job.fut.set_result(RunResult(
                RunStatus(msg["status"]), result=None if text is None else json.loads(text),
                error=msg.get("error"), retry_delay_s=msg.get("retry_delay_s"), pid=w.pid,
            ))
        elif op == "progress":
            job.events.progress(msg["percent"], msg.get("message"), msg.get("step"))
        elif op == "heartbeat":
            job.events.heartbeat()
        elif op == "enqueue":
            task = asyncio.ensure_future(self._enqueue_for(w, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            log.warning("pool.unknown_message", pid=w.pid, op=op)

    def _on_ready(self, w: _Worker, msg: dict[str, Any]) -> None:
        for timer in w.timers:
            timer.cancel()
        w.timers.clear()
        self._early_deaths = 0
        w.types = list(msg.get("types") or [])
        self.types = w.types
        self.load_errors = dict(msg.get("errors") or {})
        if not w.ready.done():
            w.ready.set_result(True)
        if w.state != "starting":
            return  # retired (closing) before it was ready: it has its stop message
        w.state = "idle"
        if w.generation != self._generation:
            self._retire(w, "recycle")
        else:
            self._idle.put_nowait(w)

    async def _enqueue_for(self, w: _Worker, msg: dict[str, Any]) -> None:
        """Perform a handler's `ctx.enqueue` in the daemon and reply to the waiting worker."""
        reply: dict[str, Any] = {"op": "enqueued", "req": msg["req"]}
        if self._child_enqueue is None:
            reply.update(ok=False, error={"type": "SupervisorError", "module": "supervisor.errors",
                                          "message": "child jobs cannot be enqueued from this runner",
                                          "attrs": {}})
        else:
            try:
                options = _revive(msg.get("options") or {})
                value = await self._child_enqueue(msg["name"], msg.get("payload"), options, bool(msg.get("submit")))
            except Exception as exc:  # noqa: BLE001 (the handler gets the error, not the daemon)
                reply.update(ok=False, error=_encode_error(exc))
            else:
                reply.update(ok=True, value=_encode_enqueue_value(value))
        self._send(w, reply)

    def _on_ready_timeout(self, w: _Worker) -> None:
        if w.state == "starting":
            log.error("pool.worker_not_ready", pid=w.pid, timeout_s=self.ready_timeout_s)
            self._signal(w, signal.SIGKILL)

    def _stop_reading(self, w: _Worker) -> None:
        if w.reading:
            w.reading = False
            assert self._loop is not None
            self._loop.remove_reader(w.conn.fileno())

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
        w.state = "dead"
        for timer in w.timers:
            timer.cancel()
        w.timers.clear()
        self._stop_reading(w)
        w.conn.close()
        with contextlib.suppress(ValueError):
            w.proc.close()
        self._workers.pop(w.pid, None)
        job, w.job = w.job, None
        if not w.ready.done():
            w.ready.set_result(False)
        if not w.exited.done():
            w.exited.set_result(code)
        how = describe_exit(code)
        if job is not None and not job.fut.done():
            log.warning("pool.worker_died", pid=w.pid, exit=how, job_id=job.request.job_id,
                        job_name=job.request.name)
            job.fut.set_result(RunResult(RunStatus.FAILED, error=f"worker {w.pid} died: {how}", pid=w.pid))
        elif early and not self._closing:
            log.error("pool.worker_start_failed", pid=w.pid, exit=how)
        elif not expected and not self._closing:
            log.warning("pool.worker_died", pid=w.pid, exit=how, job_id=None)
        else:
            log.debug("pool.worker_exited", pid=w.pid, exit=how)
        if early:
            self._early_deaths += 1
        self._replace(w)


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
        self._child.send({
            "op": "progress", "job_id": self._job_id, "percent": percent,
            "message": None if message is None else str(message), "step": None if step is None else str(step),
        })

    def heartbeat(self) -> None:
        self._child.send({"op": "heartbeat", "job_id": self._job_id})

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        return self._child.enqueue(self._job_id, name, payload, options, submit)


class _Child:
    """One worker process: the main thread runs jobs, a listener thread reads the pipe."""

    def __init__(self, conn: Connection, jobs_dir: Path, options: dict[str, Any]) -> None:
        # Ctrl-C on a terminal reaches the whole process group: the daemon decides when we stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log_setup.configure(options.get("log_level", "info"), "json")
        self.conn = conn
        self.jobs_dir = jobs_dir
        self.pid = os.getpid()
        structlog.contextvars.bind_contextvars(worker_pid=self.pid)  # on every line this worker logs
        self.log = structlog.get_logger("runners.pool.worker")
        self.registry = Registry()
        self.loop = asyncio.new_event_loop()  # persistent: one loop for every async job of this worker
        asyncio.set_event_loop(self.loop)
        self._proc = psutil.Process() if options.get("measure_rss") else None
        self._send_lock = threading.Lock()  # the main thread and handler threads may all send
        self._inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._current: _ChildJob | None = None
        self._early_cancels: set[str] = set()
        self._replies: dict[int, Callable[[dict[str, Any]], None]] = {}
        self._req = itertools.count(1)

    def serve(self) -> None:
        threading.Thread(target=self._listen, name="pool-listener", daemon=True).start()
        self.registry = load_jobs(self.jobs_dir)
        errors = {path: exc.cause for path, exc in self.registry.errors.items()}
        self.send({"op": "ready", "pid": self.pid, "types": sorted(self.registry.types), "errors": errors})
        self.log.debug("pool.worker_ready", pid=self.pid, types=sorted(self.registry.types))
        while True:
            msg = self._inbox.get()
            if msg["op"] == "stop":
                return
            self._run(msg)

    # --- pipe ------------------------------------------------------------------------------

    def send(self, msg: dict[str, Any]) -> None:
        self._send_raw(json.dumps(msg, default=_encode_extra).encode())

    def _send_raw(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self.conn.send_bytes(data)
        except OSError:
            os._exit(0)  # the daemon is gone: nobody can take our results

    def _listen(self) -> None:
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                os._exit(0)  # the daemon closed our pipe or died: do not outlive it
            msg = json.loads(data)
            op = msg.get("op")
            if op in ("run", "stop"):
                self._inbox.put(msg)
            elif op == "cancel":
                self._cancel(msg["job_id"])
            elif op == "enqueued":
                deliver = self._replies.pop(msg["req"], None)
                if deliver is not None:
                    deliver(msg)

    def _cancel(self, job_id: str) -> None:
        with self._lock:
            job = self._current
            if job is None or job.job_id != job_id:
                self._early_cancels.add(job_id)  # it may not have started yet
                return
        # Set the threading.Event now, so `ctx.cancelled` is true even for code that never yields;
        # an async handler's asyncio.Event must be set on its own loop.
        job.ctx._cancel.set()  # noqa: SLF001 (the runner owns the context)
        if job.is_async:
            self.loop.call_soon_threadsafe(job.ctx._set_cancelled)  # noqa: SLF001

    # --- jobs ------------------------------------------------------------------------------

    def _run(self, msg: dict[str, Any]) -> None:
        job_id, name = msg["job_id"], msg["name"]
        jt = self.registry.get(name)
        if jt is None:
            error = f"no handler for {name!r} in worker {self.pid}"
            if self.registry.errors:
                error += "; files that failed to load: " + "; ".join(
                    f"{p}: {e.cause}" for p, e in self.registry.errors.items())
            self._result(job_id, RunResult(RunStatus.FAILED, error=error))
            return
        try:
            payload = jt.payload.from_json(msg["payload_json"])
        except InvalidPayload as exc:
            self._result(job_id, RunResult(RunStatus.PERMANENT, error=str(exc)))
            return
        context: dict[str, str] = msg.get("context") or {}
        deadline = msg.get("deadline")
        ctx = Context(
            job_id=job_id, job_name=name, attempt=msg["attempt"], payload=payload, context=context,
            deadline=datetime.fromtimestamp(deadline, tz=UTC) if deadline else None,
            sink=_ChildSink(self, job_id), is_async=jt.is_async,
        )
        with self._lock:
            self._current = _ChildJob(job_id, ctx, jt.is_async)
            cancelled_early = job_id in self._early_cancels
            self._early_cancels.clear()
        if cancelled_early:
            ctx._set_cancelled()  # noqa: SLF001
        args = (payload, ctx) if jt.takes_context else (payload,)
        bound = {
            "job_id": job_id, "job_name": name, "attempt": msg["attempt"],
            "trace_id": context.get("trace_id"), "request_id": context.get("request_id"),
        }
        try:
            # telemetry.remote_parent: handler spans join the job's trace (no-op without a tracer provider)
            with structlog.contextvars.bound_contextvars(**bound), telemetry.remote_parent(context):
                try:
                    if jt.is_async:
                        value = self.loop.run_until_complete(jt.handler(*args))
                    else:
                        value = jt.handler(*args)
                except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 (the handler's failure)
                    # SystemExit and KeyboardInterrupt are not caught: they end the worker,
                    # and the daemon reports the job as a crash and replaces the worker.
                    outcome = outcome_of_exception(exc)
                else:
                    outcome = outcome_of(value)
        finally:
            with self._lock:
                self._current = None
        self._result(job_id, outcome)

    def _result(self, job_id: str, outcome: RunResult) -> None:
        text = None
        error = outcome.error
        if outcome.result is not None:
            try:
                text = json.dumps(outcome.result)
            except (TypeError, ValueError) as exc:  # a Failure(result=...) that JSON cannot hold
                error = f"{error}; result dropped, not JSON-serializable: {exc}"
        msg: dict[str, Any] = {
            "op": "result", "job_id": job_id, "status": outcome.status.value, "result": text,
            "error": error, "retry_delay_s": outcome.retry_delay_s,
        }
        if self._proc is not None:
            msg["rss"] = self._proc.memory_info().rss
        self.send(msg)

    # --- child jobs ------------------------------------------------------------------------

    def enqueue(self, job_id: str, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        """Ask the daemon to enqueue a child job: a future on the job's loop, else block for the reply."""
        req = next(self._req)
        data = json.dumps({
            "op": "enqueue", "job_id": job_id, "req": req, "name": name, "payload": payload,
            "options": options, "submit": submit,
        }, default=_encode_extra).encode()
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            fut: asyncio.Future[Any] = self.loop.create_future()

            def reply_on_loop(reply: dict[str, Any]) -> None:
                self.loop.call_soon_threadsafe(_settle, fut, reply)  # the future belongs to the job's loop

            self._replies[req] = reply_on_loop
            self._send_raw(data)
            return fut
        box: list[dict[str, Any]] = []
        got = threading.Event()

        def deliver(reply: dict[str, Any]) -> None:
            box.append(reply)
            got.set()

        self._replies[req] = deliver
        self._send_raw(data)
        got.wait()
        return _decode_reply(box[0])


def _settle(fut: asyncio.Future[Any], reply: dict[str, Any]) -> None:
    if fut.done():
        return
    try:
        fut.set_result(_decode_reply(reply))
    except Exception as exc:  # noqa: BLE001 (the awaiting handler gets it)
        fut.set_exception(exc)


__all__ = ["ProcessPoolRunner", "default_start_method", "describe_exit", "worker_main"]

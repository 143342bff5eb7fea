"""The `process` runner: which worker runs which job, and the `Runner` API over the pool.

New jobs go to the least-loaded worker, queued only behind jobs of short types;
a run's cancel, timeout and abandonment act on its worker; results, starts and
child enqueues come back from the pipe here. The workers' processes are
`runners.pool.workers`'s; the messages `runners.pool.protocol`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from pathlib import Path
from typing import Any

import psutil
import structlog

from runners.base import CancelSignal, RunEvents, RunRequest, RunResult, RunStatus
from runners.fork_server import default_start_method
from runners.invoke import ChildEnqueue
from runners.pool.protocol import encode_enqueue_value, encode_error, pack, revive
from runners.pool.worker import PoolJob, Worker, WorkerState
from runners.pool.workers import WorkerSet, WorkersTarget, describe_exit
from runners.stop import REAP_WAIT_S, Escalation, stop

log = structlog.get_logger(__name__)

_STATUS = {s.value: s for s in RunStatus}
_NOT_STARTED = "cancelled before it started"
_CLOSED = "the process pool is closed"


class ProcessPoolRunner:
    """Runs jobs on a pool of long-lived worker processes (the `process` runtime).

    Each worker runs many jobs at once: async ones on its event loop, as many as
    are sent, sync ones in its lanes (`threads`; a sync type gets about 1 / its
    measured CPU share of them, so CPU-bound types run one at a time per worker).
    A job goes to a worker that starts it at once, holding the fewest jobs; else
    it is queued behind short sync runs (up to `queue_depth` per worker), so the
    worker starts the next job as soon as one ends instead of waiting a round
    trip to the daemon; else it waits in the pool. Jobs are queued only behind
    jobs of types whose average run time (measured per type) is under
    `reclaim_after_s / (queue_depth + 1)`, so a queued job waits about
    `reclaim_after_s` at most; a type not measured yet counts as long. A queued
    job has not started: its timeout counts from its start, cancelling it drops
    it at once, and it moves to another worker when its worker is recycled,
    stopped or dies (only the job a worker was running can fail with it). No job
    is queued behind one that has run `reclaim_after_s` (a short type can have
    long runs), and jobs already queued behind such a job are taken back for
    other workers.

    Args:
        jobs_dir: the handler folder every worker loads (`supervisor.daemon.registry.load_jobs`).
        manifest: the handler sources the daemon accepted (`supervisor.daemon.accepted`), which
            workers import instead of the folder's files (None: the files as they are).
        workers: pool size (settings.workers_concurrency): worker processes.
        queue_depth: sync jobs a worker may hold queued behind those it runs (0: none, a
            worker gets its next sync job only after it reported the previous result). The
            default, 8, lets one write to a worker carry several jobs (BENCHMARKS.md: depth 3
            -> 8 drained no-op jobs 10-15 % faster with 2 workers at a type concurrency of 32).
        threads: sync lanes per worker: the most sync jobs of types that mostly wait one
            worker runs at once (1: one sync job at a time per worker).
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
        threads: int = 4,
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
        if threads < 1:
            raise ValueError(f"threads={threads!r} must be at least 1")
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
        self._busy: dict[str, float] = {}  # sync job type -> recent mean share of its run spent on CPU (EWMA)
        self.threads = threads
        self.max_jobs_per_worker = max_jobs_per_worker
        self.max_worker_rss_bytes = None if max_worker_rss_mb is None else int(max_worker_rss_mb * 1024 * 1024)
        self.cancel_grace_s = cancel_grace_s
        self.kill_grace_s = kill_grace_s
        self.ready_timeout_s = ready_timeout_s
        self.log_level = log_level
        self.start_method = method
        self._child_enqueue = child_enqueue
        self._set = WorkerSet(
            self.jobs_dir, workers, start_method=method, kill_grace_s=kill_grace_s, ready_timeout_s=ready_timeout_s,
            max_jobs=max_jobs_per_worker, max_rss_bytes=self.max_worker_rss_bytes, options=self._worker_options,
            on_readable=self._on_readable, on_gone=self._worker_gone, pump=self._pump,
        )
        self._workers = self._set.workers  # by pid (the same dict: the set adds and removes them)
        self._pending: deque[PoolJob] = deque()  # runs no worker has room for yet, oldest first
        self._async_waiting = 0  # of which runs of async types, at most (`_pump`)
        self._closing = False
        self._tasks: set[asyncio.Future[None]] = set()  # child enqueues in flight
        self._long_timer: asyncio.TimerHandle | None = None  # next check for long-running jobs
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def load_errors(self) -> dict[str, str]:
        """Handler files that failed to load (path -> cause), as the newest ready worker reported."""
        return self._set.load_errors

    @property
    def types(self) -> list[str]:
        """The job types the newest ready worker serves."""
        return self._set.types

    def _worker_options(self) -> dict[str, Any]:
        """What a new worker is told: log level, RSS limit, the accepted handler sources."""
        return {"log_level": self.log_level, "measure_rss": self.max_worker_rss_bytes is not None,
                "threads": self.threads, "max_rss_bytes": self.max_worker_rss_bytes,
                "manifest": None if self.manifest is None else str(self.manifest)}

    @property
    def started(self) -> bool:
        """True once `start()` ran (the daemon starts the pool only when a type needs it)."""
        return self._loop is not None

    async def start(self) -> None:
        """Start the workers and wait until each has loaded its handlers (or died trying)."""
        self._loop = asyncio.get_running_loop()
        started = await self._set.start(self._loop)
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
        if self._long_timer is not None:
            self._long_timer.cancel()
        pending, self._pending = list(self._pending), deque()
        for job in pending:
            self._resolve(job, RunResult(RunStatus.FAILED, error=_CLOSED))
        await self._set.stop_all()

    def recycle(self) -> None:
        """Replace every worker between jobs (hot reload).

        Idle workers are replaced now. A busy one finishes the job it runs and hands back
        the jobs queued in it, which run on the new workers; its replacement starts when
        its job ends, so no more than `workers` runs are ever running.
        """
        self._set.generation += 1
        for w in list(self._workers.values()):
            if w.state is WorkerState.READY:
                self._set.retire(w, "recycle")
        log.info("pool.recycle", generation=self._set.generation, workers=len(self._workers))

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
            state = w.state.value
            if w.state is WorkerState.READY:
                state = "busy" if w.load else "idle"
            info.append({
                "pid": w.pid, "state": state, "jobs_run": w.jobs_run, "rss_bytes": rss,
                "busy_job": next(iter(w.running), None), "running_jobs": list(w.running),
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
        job = PoolJob(request, events, loop.create_future())
        self._pending.append(job)
        if request.name in self._set.async_types:
            self._async_waiting += 1
        self._pump()
        # A CancelSignal calls back when set: no task waits on each run (one task per job costs
        # the daemon's loop more than the rest of the pool's work for a short job).
        watching: list[asyncio.Future[None]] = []

        def on_cancel() -> None:
            watching.append(asyncio.ensure_future(self._watch_cancel(job, cancel)))

        if isinstance(cancel, CancelSignal):
            cancel.add_callback(on_cancel)
        else:  # a plain asyncio.Event can only be waited on
            on_cancel()
        try:
            result = await job.fut
        except asyncio.CancelledError:
            # The dispatcher gave up on the run (shutdown).
            self._abandon(job)
            raise
        finally:
            if isinstance(cancel, CancelSignal):
                cancel.remove_callback(on_cancel)
            for w in watching:
                w.cancel()
        if job.cancel_requested and job.started_at is not None:
            error = "cancelled"
            if job.stopped_with is not None:
                error = (f"cancelled; the handler ignored it for {self.cancel_grace_s:g}s, "
                         f"worker {result.pid} stopped with {job.stopped_with}")
            return RunResult(RunStatus.CANCELLED, result=result.result, error=error, pid=result.pid)
        return result

    def _pump(self) -> None:
        """Send pending runs to the least-loaded workers that have room, oldest first; a run of an
        async type goes past the sync runs that wait for a lane (it takes none: its worker's event
        loop starts it as it arrives), never one sync run past another."""
        pending = self._pending
        if not pending:
            return
        assert self._loop is not None
        now = self._loop.time()
        while pending:
            job = pending[0]
            if not job.fut.done():
                w = self._pick(job, now)
                if w is None:
                    break  # oldest first: no sync run overtakes the run at the head
                self._send(job, w)
            pending.popleft()
        if pending and self._async_waiting:  # a hint (counted as they came): an async run may wait behind
            self._async_waiting = 0
            names = self._set.async_types
            for job in [j for j in pending if j.request.name in names and not j.fut.done()]:
                if (w := self._pick(job, now)) is None:
                    self._async_waiting += 1
                    continue
                pending.remove(job)
                self._send(job, w)

    def _send(self, job: PoolJob, w: Worker) -> None:
        req = job.request
        job.worker = w
        w.queued[req.job_id] = job
        w.post(pack(["run", req.job_id, req.name, req.attempt, req.payload_json, req.context,
                     req.deadline, job.lanes]))

    def _pick(self, job: PoolJob, now: float) -> Worker | None:
        """The ready worker of the current generation where `job` starts soonest, then holding the
        fewest jobs: one that starts it at once, else one where it may queue behind short sync runs."""
        name = job.request.name
        lanes = self._lanes(name)
        best, best_key = None, (2, 0)
        generation = self._set.generation
        for w in self._workers.values():
            if w.state is not WorkerState.READY or w.generation != generation:
                continue
            load = w.load
            if self.max_jobs_per_worker is not None and w.jobs_run + load >= self.max_jobs_per_worker:
                continue  # it may not run more than it holds already
            if name in w.async_types:
                key = (0, load)  # its event loop starts it as it arrives
            else:
                where = w.sync_place(lanes, now, self._avg_run_s, self._short_s, self.reclaim_after_s, self.queue_depth)
                key = (where, load if where < 2 else 0)
            if key < best_key:
                best, best_key = w, key
                if key == (0, 0):
                    break
        if best is not None:
            job.is_async = name in best.async_types
            job.lanes = 1 if job.is_async else lanes
        return best

    def _lanes(self, name: str) -> int:
        """How many sync runs of type `name` a worker runs at once: 1 / its share of time on the CPU,
        rounded down (one worker has one GIL; a type must wait at least half its time to get a
        second lane, as threads that only take turns at the GIL cost more than they overlap), at
        most `threads`; 1 for a type not measured yet."""
        busy = self._busy.get(name)
        if busy is None or self.threads == 1:
            return 1
        return max(1, min(self.threads, int(1 / max(busy, 0.01))))

    def _ran(self, job: PoolJob) -> None:
        """Fold a run's time (so far) into its type's average."""
        assert self._loop is not None and job.started_at is not None
        took = self._loop.time() - job.started_at
        name = job.request.name
        prev = self._avg_run_s.get(name)
        self._avg_run_s[name] = took if prev is None else prev + 0.2 * (took - prev)

    def _resolve(self, job: PoolJob, result: RunResult) -> None:
        if job.timer is not None:
            job.timer.cancel()
        if not job.fut.done():
            job.fut.set_result(result)
        if job.left_queue is not None and not job.left_queue.done():
            job.left_queue.set_result(None)

    def _give_back(self, jobs: list[PoolJob]) -> None:
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
        self._async_waiting += sum(j.is_async for j in again)

    def _abandon(self, job: PoolJob) -> None:
        """The caller stopped waiting for `job`: take it out of the pool."""
        job.abandoned = True
        w = job.worker
        if w is None:
            with contextlib.suppress(ValueError):
                self._pending.remove(job)
        elif job.started_at is None:
            w.post(pack(["cancel", job.request.job_id]))  # dropped, or its worker killed on start
        elif w.running.get(job.request.job_id) is job:
            # It is running, and its worker cannot be trusted to stop it.
            del w.running[job.request.job_id]
            if job.timer is not None:
                job.timer.cancel()
            self._set.retire(w, "abandoned", signal.SIGKILL)

    async def _watch_cancel(self, job: PoolJob, cancel: asyncio.Event) -> None:
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
        w.post(pack(["cancel", job.request.job_id]))
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
        if done or w.running.get(job.request.job_id) is not job:
            return
        log.warning("pool.cancel_ignored", pid=w.pid, job_id=job.request.job_id, grace_s=self.cancel_grace_s)
        self._set.take_out(w, "cancel_ignored", signal.SIGTERM)  # replaced now; escalated here:

        def said(sig: signal.Signals) -> None:
            job.stopped_with = sig.name

        await stop(WorkersTarget([w]), Escalation(term_s=self.kill_grace_s, reap_s=REAP_WAIT_S), said)
        # Normally the worker's death has resolved the job by now; never leave the run hanging.
        if not job.fut.done():
            if w.running.get(job.request.job_id) is job:
                del w.running[job.request.job_id]
            self._resolve(job, RunResult(RunStatus.CANCELLED, pid=w.pid))

    def _on_timeout(self, w: Worker, job: PoolJob) -> None:
        if job.fut.done() or w.running.get(job.request.job_id) is not job:
            return
        del w.running[job.request.job_id]  # detach first: the worker's death must not report this job as a crash
        self._ran(job)
        timeout = job.request.timeout_s or 0.0
        log.warning("pool.timeout", pid=w.pid, job_id=job.request.job_id, timeout_s=timeout)
        self._set.retire(w, "timeout", signal.SIGKILL)  # its queued jobs move on when it is gone
        self._resolve(job, RunResult(
            RunStatus.TIMEOUT, error=f"timed out after {timeout:g}s; worker {w.pid} killed", pid=w.pid))

    def _check_long(self) -> None:
        """Take back the jobs queued behind jobs that have run `reclaim_after_s` (for other workers)."""
        assert self._loop is not None
        self._long_timer = None
        now = self._loop.time()
        due = None
        for w in self._workers.values():
            starts = [j.started_at for j in w.sync_running() if j.started_at is not None]
            if not starts or w.state is not WorkerState.READY:
                continue
            at = min(starts) + self.reclaim_after_s
            if at > now:
                due = at if due is None else min(due, at)
                continue
            ids = [i for i, q in w.queued.items() if not q.reclaiming and not q.abandoned and not q.is_async]
            if ids:
                for i in ids:
                    w.queued[i].reclaiming = True
                w.post(pack(["reclaim", ids]))
        if due is not None:
            self._long_timer = self._loop.call_at(due, self._check_long)

    # --- messages ------------------------------------------------------------------------

    def _dispatch(self, w: Worker, msg: list[Any]) -> None:
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
            self._set.on_ready(w, msg)
        elif op in ("progress", "heartbeat", "enqueue"):
            job = w.running.get(msg[1])
            if job is None:
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

    def _on_started(self, w: Worker, job_id: str) -> None:
        job = w.queued.pop(job_id, None)
        if job is None:
            log.error("pool.unknown_job_started", pid=w.pid, job_id=job_id)
            return
        if job.abandoned:
            # Nobody waits for it any more (and it may have been reported cancelled): stop it.
            job.worker = None
            self._set.retire(w, "abandoned", signal.SIGKILL)
            return
        assert self._loop is not None
        w.running[job_id] = job
        now = job.started_at = self._loop.time()
        timeout = job.request.timeout_s
        if timeout is not None:
            job.timer = self._loop.call_at(now + max(timeout, 0.0), self._on_timeout, w, job)
        if job.left_queue is not None and not job.left_queue.done():
            job.left_queue.set_result(None)
        if self._long_timer is None:
            self._long_timer = self._loop.call_at(now + self.reclaim_after_s, self._check_long)

    def _on_result(self, w: Worker, msg: list[Any]) -> None:
        _, job_id, status, result, error, retry_delay_s, rss, busy, *trace = msg  # a trace only when it failed
        job = w.running.pop(job_id, None)
        if job is None:
            return  # a job this worker no longer runs for us (timed out, cancelled)
        w.jobs_run += 1
        w.rss = rss
        self._ran(job)
        if busy is not None:  # a sync run's CPU time over its wall time: decides whether its type shares lanes
            prev = self._busy.get(job.request.name)
            self._busy[job.request.name] = busy if prev is None else prev + 0.2 * (busy - prev)
        self._resolve(job, RunResult(_STATUS[status], result, error, retry_delay_s, w.pid,
                                     traceback=trace[0] if trace else None))
        self._set.after_job(w)

    async def _enqueue_for(self, w: Worker, msg: list[Any]) -> None:
        """Perform a handler's `ctx.enqueue` in the daemon and reply to the waiting worker."""
        _, _, req, name, payload, options, submit = msg
        if self._child_enqueue is None:
            reply = [False, {"type": "SupervisorError", "module": "supervisor.errors",
                             "message": "child jobs cannot be enqueued from this runner", "attrs": {}}]
        else:
            try:
                value = await self._child_enqueue(name, payload, revive(options or {}), bool(submit))
            except Exception as exc:  # noqa: BLE001 (the handler gets the error, not the daemon)
                reply = [False, encode_error(exc)]
            else:
                reply = [True, encode_enqueue_value(value)]
        w.post(pack(["enqueued", req, *reply]))

    # --- the pipe and deaths --------------------------------------------------------------

    def _on_readable(self, w: Worker) -> None:
        messages = w.read()
        if messages is None:
            self._set.on_eof(w)
            return
        self._deliver(w, messages)
        self._pump()

    def _deliver(self, w: Worker, messages: Any) -> None:
        for msg in messages:
            try:
                self._dispatch(w, msg)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.error("pool.bad_message", pid=w.pid, error=f"{type(exc).__name__}: {exc}")

    def _worker_gone(self, w: Worker, code: int | None, early: bool, expected: bool, messages: list[Any]) -> None:
        """A worker died: what it wrote before still counts; its running jobs fail with it (and are delivered
        again), its queued jobs move on."""
        self._deliver(w, messages)
        running = [j for j in w.running.values() if not j.fut.done()]
        w.running = {}
        queued, w.queued = list(w.queued.values()), {}
        how = describe_exit(code)
        for job in running:  # each of its running jobs fails with it (and is delivered again)
            log.warning("pool.worker_died", pid=w.pid, exit=how, job_id=job.request.job_id,
                        job_name=job.request.name, queued=len(queued), running=len(running))
            self._resolve(job, RunResult(RunStatus.FAILED, error=f"worker {w.pid} died: {how}", pid=w.pid))
        if running:
            pass  # each logged above
        elif early and not self._closing:
            log.error("pool.worker_start_failed", pid=w.pid, exit=how)
        elif not expected and not self._closing:
            log.warning("pool.worker_died", pid=w.pid, exit=how, job_id=None, queued=len(queued))
        else:
            log.debug("pool.worker_exited", pid=w.pid, exit=how)
        self._give_back(queued)  # never started there: they run on another worker

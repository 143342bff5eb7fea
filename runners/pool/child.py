"""The code a pool worker runs: load the handlers, then run jobs until told to stop.

Three kinds of threads share one worker, each through `runners.invoke` as in every
Python runtime:

- the *listener* owns the receiving end of the pipe: it hands async runs to the
  loop at once, queues sync runs, and acts on `cancel`, `reclaim`, `stop` and
  child-enqueue replies at once, so a busy handler can still be cancelled and
  queued jobs handed back;
- the *loop thread* runs one persistent event loop on which every async handler
  of the worker runs as a task of its own, as many at once as the daemon sends
  (the type's `concurrency` caps them in the daemon); their `started` and
  `result` messages go out in one write per loop iteration;
- the *sync lanes* run sync handlers in the order they were sent: the main
  thread, plus `threads - 1` helper threads. The daemon gives each sync run a
  number of lanes from its type's measured share of time on the CPU (1 / that
  share, rounded down: one worker holds one GIL): a run with 2 or more may run beside other
  such runs while fewer than that many run; a run with 1 runs alone, on the main
  thread (CPU-bound work gains nothing from threads under the GIL, and its
  timeout should not count time spent waiting for one). A sync job's `started` goes out in
  the same write as its lane's previous result, before its handler is called.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import structlog

from runners.base import RunResult
from runners.invoke import bind_log_context, call, call_async, prepare
from runners.pool.protocol import decode_reply, pack, pack_enqueue, unpack
from supervisor.context import Context
from supervisor.daemon import accepted
from supervisor.daemon.registry import Registry, load_jobs
from supervisor.errors import HandlerImportError
from supervisor.handler import JobType
from supervisor.observability import log as log_setup
from supervisor.observability.telemetry import Tracing


def worker_main(conn: Connection, jobs_dir: str, options: dict[str, Any]) -> None:
    """Entry point of a worker process: load the handlers, then run jobs until told to stop."""
    _Child(conn, Path(jobs_dir), options).serve()


class _ChildSink:
    """A Context's calls inside a worker, sent to the daemon over the pipe."""

    __slots__ = ("_child", "_job_id")

    def __init__(self, child: _Child, job_id: str) -> None:
        self._child = child
        self._job_id = job_id

    def progress(self, percent: float, message: str | None, step: str | None) -> None:
        self._child.write(pack([
            "progress", self._job_id, percent, None if message is None else str(message),
            None if step is None else str(step),
        ]))

    def heartbeat(self) -> None:
        self._child.write(pack(["heartbeat", self._job_id]))

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        return self._child.enqueue(self._job_id, name, payload, options, submit)


class _Child:
    """One worker process: the listener reads the pipe, the loop thread runs async jobs, the lanes sync ones."""

    def __init__(self, conn: Connection, jobs_dir: Path, options: dict[str, Any]) -> None:
        # Ctrl-C on a terminal reaches the whole process group: the daemon decides when we stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log_setup.configure(options.get("log_level", "info"), "json")
        self.conn = conn  # owns the socket; every thread uses its descriptor directly
        self.fd = conn.fileno()
        self.jobs_dir = jobs_dir
        self.manifest: str | None = options.get("manifest")  # the accepted sources to import
        self.threads = max(1, int(options.get("threads") or 1))  # sync lanes: the main thread + helpers
        self.pid = os.getpid()
        structlog.contextvars.bind_contextvars(worker_pid=self.pid)  # on every line this worker logs
        self._base = contextvars.copy_context()  # each job runs in a copy (other threads start with none)
        self.log = structlog.get_logger("runners.pool.worker")
        self.registry = Registry()
        self.where = f"worker {self.pid}"
        # handler spans join the job's trace through the tracer provider the worker's process sets up, if any
        self.tracing = Tracing.from_process()
        self.loop = asyncio.new_event_loop()  # persistent: every async job of this worker runs on it
        self._proc = psutil.Process() if options.get("measure_rss") else None
        self._max_rss: int | None = options.get("max_rss_bytes")
        self._send_lock = threading.Lock()  # every thread writes
        # One lock guards the queue and the running jobs, shared by the listener, the lanes and the
        # loop thread; the main lane and the helper lanes wait on conditions of their own, so a
        # new job wakes only a lane that may start it (waking every thread costs the GIL).
        lock = threading.Lock()
        self._cv = threading.Condition(lock)  # the main lane
        self._helpers = threading.Condition(lock)  # the other lanes
        self._queue: deque[list[Any]] = deque()  # `run` messages not started, in order
        self._stopping = False
        self._held = False  # over max RSS: start nothing more, the daemon replaces us
        # job id -> (type, Context) once its Context exists; None from when it is taken until then
        self._running: dict[str, tuple[JobType, Context] | None] = {}
        self._sync_running = 0  # sync jobs running in the lanes
        self._exclusive = 0  # of which those with one lane: nothing runs beside them
        self._cancel_early: set[str] = set()  # a cancel came before the job's Context
        self._replies: dict[int, Callable[[list[Any]], None]] = {}
        self._req = itertools.count(1)
        self._out: list[bytes] = []  # the loop thread's messages, written once per loop iteration
        self._flush_handle: asyncio.Handle | None = None

    def serve(self) -> None:
        threading.Thread(target=self.loop.run_forever, name="pool-loop", daemon=True).start()
        threading.Thread(target=self._listen, name="pool-listener", daemon=True).start()
        self.registry = self._load()
        errors = {path: exc.cause for path, exc in self.registry.errors.items()}
        self.where = f"worker {self.pid}"  # names us in the error of a job we have no handler for
        if self.registry.errors:
            self.where += "; files that failed to load: " + "; ".join(
                f"{p}: {e.cause}" for p, e in self.registry.errors.items())
        async_types = sorted(n for n, jt in self.registry.types.items() if jt.is_async)
        self.write(pack(["ready", self.pid, sorted(self.registry.types), errors, async_types]))
        self.log.debug("pool.worker_ready", pid=self.pid, types=sorted(self.registry.types))
        for _ in range(self.threads - 1):
            threading.Thread(target=self._lane, args=(False,), name="pool-lane", daemon=True).start()
        self._lane(True)
        self._flush_loop()

    def _load(self) -> Registry:
        """The handlers: the sources the daemon accepted, else the folder's files as they are."""
        if self.manifest is None:
            return load_jobs(self.jobs_dir)
        try:
            sources = accepted.load(Path(self.manifest))
        except HandlerImportError as exc:
            return Registry(errors={exc.path: exc})
        return load_jobs(self.jobs_dir, sources)

    # --- sync lanes ------------------------------------------------------------------------

    def _lane(self, main: bool) -> None:
        """Run sync jobs until stopped (the main lane returns once nothing runs any more)."""
        cv = self._cv if main else self._helpers
        clock = _BusyClock()  # this thread's own
        out = b""  # the last job's result: written with the next job's start if one is waiting
        while True:
            with cv:
                msg = self._take(main)
                while msg is None and not out and not (main and self._stopping and not self._running):
                    cv.wait()
                    msg = self._take(main)
                if msg is not None and self._queue and self.threads > 1:
                    self._wake(main)  # the next one may start beside it
            if msg is None:
                if not out:
                    return  # stopped, with nothing left to say
                self.write(out)
                out = b""
                continue
            # Reported before the handler runs: if we die from here on, the daemon knows it started.
            self.write(out + pack(["started", msg[1]]))
            try:
                out = self._run(msg, clock)
            finally:
                with cv:
                    self._running.pop(msg[1], None)
                    self._cancel_early.discard(msg[1])
                    self._sync_running -= 1
                    if msg[7] < 2:
                        self._exclusive -= 1
                    if not main or self.threads > 1:
                        self._wake(main)

    def _wake(self, main: bool) -> None:
        """Wake the lanes that may start the job at the head of the queue, and the main lane when
        it may have to exit (call with the lock held; `main`: called by the main lane itself)."""
        if not main and (self._queue or self._stopping):
            self._cv.notify()
        if self.threads > 1 and self._queue and self._queue[0][7] > 1:
            self._helpers.notify()

    def _take(self, main: bool) -> list[Any] | None:
        """The next sync job this lane may start, if any (call with `_cv` held).

        A run given `lanes` > 1 starts while only such runs are running, fewer than `lanes`
        (and `threads`); a run given one lane starts on the main lane when nothing else runs."""
        if not self._queue or self._stopping or self._held:
            return None
        msg = self._queue[0]
        lanes = msg[7]
        shared = lanes > 1
        if self._sync_running:
            if not shared or self._exclusive or self._sync_running >= lanes:
                return None
        elif not (main or shared):
            return None
        self._queue.popleft()
        self._running[msg[1]] = None
        self._sync_running += 1
        if not shared:
            self._exclusive += 1
        return msg

    def _run(self, msg: list[Any], clock: _BusyClock) -> bytes:
        """Run one sync job on this thread; returns its `result` message."""
        job_id = msg[1]
        jt, ctx = self._context(msg)
        if isinstance(ctx, RunResult):
            return self._result(job_id, ctx)
        assert jt is not None  # _context() found it
        measure = clock.due()
        if measure:
            wall, cpu = time.perf_counter(), clock.now()
        try:
            # Each job runs in its own copy of the context: what it binds vanishes with it.
            outcome = self._base.copy().run(self._call, jt, ctx)
        except (SystemExit, KeyboardInterrupt) as exc:  # not the handler's outcome: they end the worker
            self._flush_loop()  # the results of async jobs that ended before still count
            os._exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1)
        if not measure:
            return self._result(job_id, outcome)
        wall = time.perf_counter() - wall
        # A run this short gains nothing from a lane (handing the GIL between threads costs as much)
        busy = round(min((clock.now() - cpu) / wall, 1.0), 3) if wall >= _SHORT_RUN_S else 1.0
        return self._result(job_id, outcome, busy)

    def _context(self, msg: list[Any]) -> tuple[JobType | None, Context | RunResult]:
        """The job's type and Context (or the RunResult that ends it at once), now known as running."""
        _, job_id, name, attempt, payload_json, context, deadline, *_ = msg
        jt = self.registry.get(name)
        ctx = prepare(jt, job_id, name, attempt, payload_json, context or {}, deadline, _ChildSink(self, job_id),
                      self.where)
        if isinstance(ctx, RunResult):
            return jt, ctx
        assert jt is not None  # prepare() found it
        with self._cv:
            self._running[job_id] = (jt, ctx)
            cancelled_early = job_id in self._cancel_early
        if cancelled_early:
            ctx._set_cancelled()  # noqa: SLF001  (the runtime owns the Context)
        return jt, ctx

    def _call(self, jt: JobType, ctx: Context) -> RunResult:
        bind_log_context(ctx.job_id, ctx.job_name, ctx.attempt, ctx.context)
        # remote_parent: handler spans join the job's trace (no-op without a tracer provider)
        with self.tracing.remote_parent(ctx.context):
            return call(jt, ctx)

    def _result(self, job_id: str, outcome: RunResult, busy: float | None = None) -> bytes:
        rss = None
        if self._proc is not None:
            rss = self._proc.memory_info().rss
            if self._max_rss is not None and rss > self._max_rss:
                self._held = True  # the daemon sees the same figure and replaces this worker
        msg = ["result", job_id, outcome.status.value, outcome.result, outcome.error, outcome.retry_delay_s, rss,
               busy]
        if outcome.traceback is not None:
            msg.append(outcome.traceback)
        try:
            return pack(msg)
        except (TypeError, ValueError) as exc:  # a Failure(result=...) that JSON cannot hold
            msg[3] = None
            msg[4] = f"{outcome.error}; result dropped, not JSON-serializable: {exc}"
            return pack(msg)

    # --- async jobs (on the loop thread) ---------------------------------------------------

    def _start_async(self, batch: list[list[Any]]) -> None:
        """Start async runs, each as a task of its own; their `started` goes out before their first step."""
        for msg in batch:
            self._post(pack(["started", msg[1]]))
            self.loop.create_task(self._run_async(msg), context=self._base.copy())

    async def _run_async(self, msg: list[Any]) -> None:
        job_id = msg[1]
        try:
            jt, ctx = self._context(msg)
            if isinstance(ctx, RunResult):
                outcome = ctx
            else:
                assert jt is not None
                bind_log_context(ctx.job_id, ctx.job_name, ctx.attempt, ctx.context)
                with self.tracing.remote_parent(ctx.context):
                    outcome = await self._outcome(jt, ctx)
            self._post(self._result(job_id, outcome))
        finally:
            with self._cv:
                self._running.pop(job_id, None)
                self._cancel_early.discard(job_id)
                if self._stopping:
                    self._cv.notify()  # the main lane exits once nothing runs

    async def _outcome(self, jt: JobType, ctx: Context) -> RunResult:
        """`call_async`; SystemExit and KeyboardInterrupt end the worker, as they do from a sync
        job (the daemon reports its running jobs as crashed)."""
        try:
            return await call_async(jt, ctx)
        except (SystemExit, KeyboardInterrupt) as exc:
            self._flush()  # the results of the jobs that ended before still count
            os._exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1)

    def _post(self, data: bytes) -> None:
        """Queue a message of the loop thread: everything queued in one loop iteration goes in one write."""
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        out, self._out = self._out, []
        if out:
            self.write(b"".join(out))

    def _flush_loop(self) -> None:
        """Before the process exits: what the loop thread has not written yet goes out."""
        done = threading.Event()

        def flush() -> None:
            self._flush()
            done.set()

        self.loop.call_soon_threadsafe(flush)
        done.wait(5.0)

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
                runs: list[list[Any]] = []
                for msg in unpack(data[:end - 1]):
                    if msg[0] == "run":
                        runs.append(msg)
                    else:
                        self._accept(runs)  # in order: a cancel acts on the runs before it
                        runs = []
                        self._on_message(msg)
                self._accept(runs)

    def _accept(self, runs: list[list[Any]]) -> None:
        """Async runs start now on the loop; sync ones (and any while held or stopping) queue for the lanes."""
        if not runs:
            return
        now = []
        with self._cv:
            for msg in runs:
                jt = self.registry.get(msg[2])
                if jt is not None and jt.is_async and not (self._stopping or self._held):
                    self._running[msg[1]] = None
                    now.append(msg)
                else:
                    # msg[7]: the lanes it may share (1: it runs alone), at most `threads`
                    lanes = min(int(msg[7] or 1), self.threads) if len(msg) > 7 else 1
                    msg[7:] = [lanes]
                    self._queue.append(msg)
            if len(now) < len(runs):
                self._wake(False)
        if now:
            self.loop.call_soon_threadsafe(self._start_async, now)

    def _on_message(self, msg: list[Any]) -> None:
        op = msg[0]
        if op == "cancel":
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
            self.write(pack(["returned", back]))

    def _cancel(self, job_id: str) -> None:
        job = None
        with self._cv:
            for i, m in enumerate(self._queue):
                if m[1] == job_id:
                    del self._queue[i]
                    break
            else:
                if job_id not in self._running:
                    return  # already finished
                job = self._running[job_id]
                if job is None:
                    self._cancel_early.add(job_id)  # taken, its Context not made yet
                    return
        if job is None:
            self.write(pack(["dropped", job_id]))  # never started
            return
        # Set the threading.Event now, so `ctx.cancelled` is true even for code that never yields;
        # an async handler's asyncio.Event must be set on its own loop.
        jt, ctx = job
        ctx._cancel.set()  # noqa: SLF001 (the runner owns the context)
        if jt.is_async:
            self.loop.call_soon_threadsafe(ctx._set_cancelled)  # noqa: SLF001  (the runtime owns the Context)

    # --- child jobs ------------------------------------------------------------------------

    def enqueue(self, job_id: str, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        """Ask the daemon to enqueue a child job: a future on the job's loop, else block for the reply."""
        req = next(self._req)
        data = pack_enqueue(job_id, req, name, payload, options, submit)
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
        return decode_reply(box[0])


_SHORT_RUN_S = 150e-6  # sync runs shorter than this count as CPU-bound: they run alone


class _BusyClock:
    """Seconds one thread ran or waited for a CPU: its CPU time (exact), plus, on Linux, the time it
    waited in the run queue (its schedstat's second field, read without reopening the file; the
    first field lags for a running thread), so that a CPU-bound handler on a crowded machine is not
    taken for one that waits (the runner's lanes are for those that wait). Made on the thread it
    measures; it measures a lane's first 16 runs, then one in 32 (the reads cost a no-op job ~10 %)."""

    def __init__(self) -> None:
        self.runs = 0
        try:
            self.fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = None

    def due(self) -> bool:
        """Whether to measure the run about to start."""
        self.runs += 1
        return self.runs <= 16 or not self.runs % 32

    def now(self) -> float:
        if self.fd is not None:
            try:
                waited = int(os.pread(self.fd, 128, 0).split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                self.fd = None
            else:
                return time.thread_time() + waited
        return time.thread_time()


def _settle(fut: asyncio.Future[Any], reply: list[Any]) -> None:
    if fut.done():
        return
    try:
        fut.set_result(decode_reply(reply))
    except Exception as exc:  # noqa: BLE001 (the awaiting handler gets it)
        fut.set_exception(exc)

"""The code a pool worker runs: load the handlers, then run jobs in order until told to stop.

The main thread runs the handlers, one at a time in the order they were sent
(sync handlers directly, async ones on one persistent event loop per worker,
which is much cheaper than `asyncio.run` per job), each through
`runners.invoke` as in every Python runtime. A daemon listener thread owns the
receiving end of the pipe: it queues `run`s for the main thread and acts on
`cancel`, `reclaim`, `stop` and child-enqueue replies at once, so a busy handler
can still be cancelled and queued jobs handed back. A job's `started` goes out
in the same write as the previous job's result, before its handler is called.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import structlog

from runners.base import RunResult
from runners.invoke import bind_log_context, call, prepare
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
        self.where = f"worker {self.pid}"
        # handler spans join the job's trace through the tracer provider the worker's process sets up, if any
        self.tracing = Tracing.from_process()
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
        self._current: tuple[JobType, Context] | None = None  # the job it runs, once its Context exists
        self._cancel_early = False  # a cancel for `_current_id` came before its Context
        self._replies: dict[int, Callable[[list[Any]], None]] = {}
        self._req = itertools.count(1)

    def serve(self) -> None:
        threading.Thread(target=self._listen, name="pool-listener", daemon=True).start()
        self.registry = self._load()
        errors = {path: exc.cause for path, exc in self.registry.errors.items()}
        self.where = f"worker {self.pid}"  # names us in the error of a job we have no handler for
        if self.registry.errors:
            self.where += "; files that failed to load: " + "; ".join(
                f"{p}: {e.cause}" for p, e in self.registry.errors.items())
        self.write(pack(["ready", self.pid, sorted(self.registry.types), errors]))
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
            self.write(out + pack(["started", msg[1]]))
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
        except HandlerImportError as exc:
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
                for msg in unpack(data[:end - 1]):
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
            self.write(pack(["returned", back]))

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
            self.write(pack(["dropped", job_id]))  # never started
            return
        # Set the threading.Event now, so `ctx.cancelled` is true even for code that never yields;
        # an async handler's asyncio.Event must be set on its own loop.
        jt, ctx = job
        ctx._cancel.set()  # noqa: SLF001 (the runner owns the context)
        if jt.is_async:
            self.loop.call_soon_threadsafe(ctx._set_cancelled)  # noqa: SLF001  (the runtime owns the Context)

    # --- jobs ------------------------------------------------------------------------------

    def _run(self, msg: list[Any]) -> bytes:
        """Run one job; returns its `result` message."""
        _, job_id, name, attempt, payload_json, context, deadline = msg
        context = context or {}
        jt = self.registry.get(name)
        ctx = prepare(jt, job_id, name, attempt, payload_json, context, deadline, _ChildSink(self, job_id),
                      self.where)
        if isinstance(ctx, RunResult):
            return self._result(job_id, ctx)
        assert jt is not None  # prepare() found it
        with self._cv:
            self._current = (jt, ctx)
            cancelled_early = self._cancel_early
        if cancelled_early:
            ctx._set_cancelled()  # noqa: SLF001  (same)
        # Each job runs in its own copy of the context: what it binds vanishes with it.
        return self._result(job_id, contextvars.copy_context().run(self._call, jt, ctx))

    def _call(self, jt: JobType, ctx: Context) -> RunResult:
        bind_log_context(ctx.job_id, ctx.job_name, ctx.attempt, ctx.context)
        # remote_parent: handler spans join the job's trace (no-op without a tracer provider)
        with self.tracing.remote_parent(ctx.context):
            return call(jt, ctx, self.loop)

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
            return pack(msg)
        except (TypeError, ValueError) as exc:  # a Failure(result=...) that JSON cannot hold
            msg[3] = None
            msg[4] = f"{outcome.error}; result dropped, not JSON-serializable: {exc}"
            return pack(msg)

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


def _settle(fut: asyncio.Future[Any], reply: list[Any]) -> None:
    if fut.done():
        return
    try:
        fut.set_result(decode_reply(reply))
    except Exception as exc:  # noqa: BLE001 (the awaiting handler gets it)
        fut.set_exception(exc)

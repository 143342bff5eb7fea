"""The worker processes of one pool: start, replace (with crash-loop backoff), retire, stop, and their deaths.

The runner (`runners.pool.runner`) decides which worker runs which job; this
module keeps the pool at its size. Workers start through the fork server where
the platform has one (see the package doc), each loads the handler sources the
daemon accepted, and a worker that dies before it is ready is replaced after a
backoff. A retired worker gets a stop message, then the stop escalation of
`runners.stop` (SIGTERM, then SIGKILL, `kill_grace_s` apart).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog

from runners.fork_server import PRELOAD
from runners.pool.child import worker_main
from runners.pool.pipe import Outbox
from runners.pool.protocol import STOP
from runners.pool.worker import Worker, WorkerState
from runners.stop import REAP_WAIT_S, Escalation, stop

log = structlog.get_logger(__name__)

_EOF_WAIT_S = 2.0  # pipe closed but process still there: how long before we kill it
_BACKOFF_MAX_S = 30.0  # between replacements of workers that keep dying before they are ready

#: Told when a worker died: (worker, exit code, died before ready, was retired, what it wrote before).
OnGone = Callable[[Worker, "int | None", bool, bool, list[Any]], None]


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


class WorkersTarget:
    """Workers stopped together (a `runners.stop` target): gone when every one has exited."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if not w.exited.done()]

    def send(self, sig: signal.Signals) -> None:
        for w in self.alive():
            w.signal(sig)

    async def gone(self, timeout: float | None) -> bool:
        alive = [w.exited for w in self.alive()]
        if alive:
            await asyncio.wait(alive, timeout=timeout)
        return all(w.exited.done() for w in self.workers)

    def sweep(self) -> None:
        """Nothing: workers share the daemon's process group."""


class WorkerSet:
    """The live workers of one pool, by pid, and everything about their processes."""

    def __init__(
        self, jobs_dir: Path, size: int, *, start_method: str, kill_grace_s: float, ready_timeout_s: float,
        max_jobs: int | None, max_rss_bytes: int | None, options: Callable[[], dict[str, Any]],
        on_readable: Callable[[Worker], None], on_gone: OnGone, pump: Callable[[], None],
    ) -> None:
        self.jobs_dir = jobs_dir
        self.size = size
        self.max_jobs = max_jobs  # recycle a worker after this many jobs
        self.max_rss_bytes = max_rss_bytes  # recycle a worker whose RSS after a job exceeds this
        self.start_method = start_method
        self.kill_grace_s = kill_grace_s
        self.ready_timeout_s = ready_timeout_s
        self._options = options  # what a new worker is told (log level, RSS limit, accepted sources)
        self._on_readable = on_readable
        self._on_gone = on_gone
        self._pump = pump
        self._mp = multiprocessing.get_context(start_method)
        self.workers: dict[int, Worker] = {}
        self.generation = 0
        self.closing = False
        self.load_errors: dict[str, str] = {}  # path -> cause, as the newest ready worker reported
        self.types: list[str] = []  # job types the newest ready worker serves
        self.async_types: frozenset[str] = frozenset()  # of which those it runs on its event loop
        self._early_deaths = 0  # consecutive workers that died before ready (crash-loop backoff)
        self._spawns: set[asyncio.Future[None]] = set()  # delayed replacements (crash-loop backoff)
        self.outbox: Outbox | None = None

    # --- starting --------------------------------------------------------------------------

    async def start(self, loop: asyncio.AbstractEventLoop) -> list[Worker]:
        """Start `size` workers; the first start launches the fork server (blocking: off the loop)."""
        self.outbox = Outbox(loop)
        if self.start_method == "forkserver":
            # `run` started it with the handlers' libraries (runners.fork_server); one started here has ours only
            self._mp.set_forkserver_preload(PRELOAD)
        first = await asyncio.to_thread(self._launch)
        started = [self._register(*first)] if first is not None else []
        started += [w for w in (self._spawn() for _ in range(self.size - 1)) if w is not None]
        if first is None:
            self._after_early_death()
        return started

    def _launch(self) -> tuple[BaseProcess, Connection] | None:
        """Start one worker process (blocking: a few ms with the fork server running)."""
        parent_conn, child_conn = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(child_conn, str(self.jobs_dir), self._options()),
            name="job-supervisor-worker",
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

    def _spawn(self) -> Worker | None:
        launched = self._launch()
        if launched is None:
            self._after_early_death()
            return None
        return self._register(*launched)

    def _register(self, proc: BaseProcess, conn: Connection) -> Worker:
        outbox = self.outbox
        assert outbox is not None
        loop = outbox.loop
        w = Worker(proc, conn, self.generation, outbox)
        self.workers[w.pid] = w
        loop.add_reader(w.fd, self._on_readable, w)
        loop.add_reader(proc.sentinel, self._on_sentinel, w, 0)
        w.timers.append(loop.call_later(self.ready_timeout_s, self._on_ready_timeout, w))
        if self.closing:
            w.retire()
            w.post(STOP)
        return w

    def replace(self, w: Worker) -> None:
        """Start the worker that takes `w`'s place (once per worker; none while closing)."""
        if w.replaced or self.closing:
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
        if not self.closing:
            self._spawn()

    def _after_early_death(self) -> None:
        """A worker could not even be started: count it, and keep the pool at its size."""
        self._early_deaths += 1
        if not self.closing:
            self._start_replacement()

    def on_ready(self, w: Worker, msg: list[Any]) -> None:
        """A worker loaded its handlers (`ready` message): it takes jobs, unless it is out of date."""
        if w.state is WorkerState.DEAD:
            return  # read from a worker that died right after: it counts as failed to start
        _, _, types, errors, *more = msg
        w.cancel_timers()
        w.async_types = frozenset(more[0] if more else ())
        self._early_deaths = 0
        w.types = list(types or [])
        self.types, self.async_types = w.types, w.async_types
        self.load_errors = dict(errors or {})
        if not w.ready.done():
            w.ready.set_result(True)
        if w.state is not WorkerState.STARTING:
            return  # retired (closing) before it was ready: it has its stop message
        w.transition(WorkerState.READY)
        if w.generation != self.generation:
            self.retire(w, "recycle")

    def _on_ready_timeout(self, w: Worker) -> None:
        if w.state is WorkerState.STARTING:
            log.error("pool.worker_not_ready", pid=w.pid, timeout_s=self.ready_timeout_s)
            w.signal(signal.SIGKILL)

    # --- stopping --------------------------------------------------------------------------

    def retire(self, w: Worker, reason: str, sig: signal.Signals | None = None) -> None:
        """Take a worker out of service.

        Without `sig` the worker gets a stop message: it hands back the jobs queued in it,
        finishes those it runs, and exits, escalating to SIGTERM and SIGKILL after
        `kill_grace_s` each once it has no job; its replacement starts when it has no job
        (so no more than `workers` processes run jobs). With `sig` it is signalled at once and
        replaced now (the cancel path escalates on its own schedule); its queued jobs move
        on when it is gone.
        """
        if w.state is WorkerState.DEAD:
            return
        if sig is not None:
            self.take_out(w, reason, sig)
            w.signal(sig)
            return
        w.retire()
        w.post(STOP)
        if w.running:
            w.replace_after_job = True
        else:
            self.replace(w)
            self.escalate(w)

    def take_out(self, w: Worker, reason: str, sig: signal.Signals) -> None:
        """Out of service and replaced now, before the caller signals it with `sig` (or escalates to it)."""
        if w.state is WorkerState.DEAD:
            return
        w.retire()
        log.info("pool.worker_stopping", pid=w.pid, reason=reason, signal=sig.name)
        self.replace(w)

    def after_job(self, w: Worker) -> None:
        """A worker's job ended: replace it if it is due for recycling."""
        if w.state is WorkerState.RETIRING:
            if w.replace_after_job and not w.running:  # retired while it ran: it exits now, its replacement starts
                w.replace_after_job = False
                self.replace(w)
                self.escalate(w)
            return
        if w.state is not WorkerState.READY:
            return
        reason = None
        if self.closing:
            reason = "closing"
        elif w.generation != self.generation:
            reason = "recycle"
        elif self.max_jobs is not None and w.jobs_run >= self.max_jobs:
            reason = "max_jobs"
        elif self.max_rss_bytes is not None and w.rss is not None and w.rss > self.max_rss_bytes:
            reason = "max_rss"  # the worker saw it too, and starts none of its queued jobs
        if reason is not None:
            log.info("pool.worker_recycled", pid=w.pid, reason=reason, jobs_run=w.jobs_run, rss_bytes=w.rss)
            self.retire(w, reason)

    def escalate(self, w: Worker) -> None:
        """A retired worker with no job that does not exit in time (a stuck non-daemon thread, a
        signal handler) gets SIGTERM, then SIGKILL, `kill_grace_s` apart."""
        if w.stopping is not None or w.state is WorkerState.DEAD:
            return

        def said(sig: signal.Signals) -> None:
            log.warning("pool.worker_escalate", pid=w.pid, signal=sig.name)

        plan = Escalation(ask_s=self.kill_grace_s, term_s=self.kill_grace_s, reap_s=REAP_WAIT_S)
        w.stopping = asyncio.ensure_future(stop(WorkersTarget([w]), plan, said))

    async def stop_all(self) -> None:
        """Close: a stop message to every worker, then SIGTERM and SIGKILL `kill_grace_s` apart."""
        self.closing = True
        for spawn in list(self._spawns):
            spawn.cancel()
        workers = list(self.workers.values())
        for w in workers:
            if w.state is not WorkerState.DEAD:
                w.retire()
                w.post(STOP)  # a busy worker stops after its current job
        target = WorkersTarget(workers)

        def said(sig: signal.Signals) -> None:
            log.warning("pool.stop_escalated", signal=sig.name, pids=[w.pid for w in target.alive()])

        plan = Escalation(ask_s=self.kill_grace_s, term_s=self.kill_grace_s, reap_s=REAP_WAIT_S)
        if not (await stop(target, plan, said)).gone:
            log.error("pool.workers_not_stopped", pids=[w.pid for w in workers if not w.exited.done()])
        log.info("pool.closed", workers=len(workers))

    # --- deaths ----------------------------------------------------------------------------

    def on_eof(self, w: Worker) -> None:
        """The worker closed its end: it is exiting. If it somehow is not, make it."""
        if w.state is not WorkerState.DEAD:
            assert self.outbox is not None
            w.timers.append(self.outbox.loop.call_later(_EOF_WAIT_S, w.signal, signal.SIGKILL))

    def _on_sentinel(self, w: Worker, tries: int) -> None:
        assert self.outbox is not None
        loop = self.outbox.loop
        if tries == 0:
            loop.remove_reader(w.proc.sentinel)
        code = w.proc.exitcode
        if code is None and tries < 100:
            # With `spawn` the sentinel can fire a moment before waitpid() can reap the child.
            loop.call_later(0.01, self._on_sentinel, w, tries + 1)
            return
        self._dead(w, code)

    def _dead(self, w: Worker, code: int | None) -> None:
        early = w.state is WorkerState.STARTING
        expected = w.state is WorkerState.RETIRING
        w.transition(WorkerState.DEAD)  # first: nothing read below may signal its (reaped, reusable) pid
        messages = w.drain()  # a result or start it reported before it died still counts
        w.release()
        self.workers.pop(w.pid, None)
        if not w.ready.done():
            w.ready.set_result(False)
        if not w.exited.done():
            w.exited.set_result(code)
        self._on_gone(w, code, early, expected, messages)
        if early:
            self._early_deaths += 1
        self.replace(w)
        self._pump()

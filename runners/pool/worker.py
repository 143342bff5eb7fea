"""One pool worker as the daemon sees it, its states and their legal transitions, and a job in the pool.

A worker is `starting` until it has loaded its handlers, `ready` while it takes
jobs, `retiring` once it was taken out of service (it finishes its job and
exits, or was signalled) and `dead` once its process was reaped. Every change
goes through `Worker.transition`, which refuses one the table does not allow,
as job states do (`supervisor.engine.states`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from runners.base import RunEvents, RunRequest, RunResult
from runners.pool.pipe import Outbox, PipeEnd
from runners.stop import Stopped


class WorkerState(StrEnum):
    """Where a worker is in its life."""

    STARTING = "starting"  # loading its handlers
    READY = "ready"  # takes jobs
    RETIRING = "retiring"  # out of service: finishes its job (or was signalled) and exits
    DEAD = "dead"  # its process is gone and reaped


#: Legal transitions: state -> states it may move to.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.RETIRING, WorkerState.DEAD}),
    WorkerState.READY: frozenset({WorkerState.RETIRING, WorkerState.DEAD}),
    WorkerState.RETIRING: frozenset({WorkerState.DEAD}),
    WorkerState.DEAD: frozenset(),
}


def can_transition(source: WorkerState, target: WorkerState) -> bool:
    """True when the table lets a worker move from `source` to `target`."""
    return target in TRANSITIONS[source]


class IllegalWorkerTransition(RuntimeError):
    """Raised when code of the pool moves a worker between states the table does not link (a bug)."""


@dataclass(eq=False, slots=True)
class PoolJob:
    """One run handed to the pool: pending (no worker), queued in a worker, or running in it."""

    request: RunRequest
    events: RunEvents
    fut: asyncio.Future[RunResult]
    is_async: bool = False  # its worker runs it on its event loop (it starts as soon as it arrives)
    lanes: int = 1  # a sync run: how many sync runs its worker may run at once beside it (1: it runs alone)
    worker: Worker | None = None  # the worker it was sent to (None while pending in the pool)
    started_at: float | None = None  # loop time the worker reported it started
    timer: asyncio.TimerHandle | None = None  # its timeout, from the start
    cancel_requested: bool = False
    stopped_with: str | None = None  # the signal the pool used on a worker that ignored cancel
    abandoned: bool = False  # nobody waits for it: a worker that starts it is killed
    reclaiming: bool = False  # asked its worker to hand it back
    left_queue: asyncio.Future[None] | None = None  # made by a cancel of a queued job: started or dropped


class Worker(PipeEnd):
    """The daemon's handle on one worker process: its state, its jobs and its pipe.

    `running` and `queued` are the daemon's view (from `started` and `result` messages);
    the worker decides when a queued job starts.
    """

    def __init__(self, proc: BaseProcess, conn: Connection, generation: int, outbox: Outbox) -> None:
        assert proc.pid is not None
        loop = outbox.loop
        super().__init__(conn.fileno(), outbox)
        self.proc = proc
        self.conn = conn
        self.pid: int = proc.pid
        self.generation = generation
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.started_at = time.time()
        self.state = WorkerState.STARTING
        self.jobs_run = 0
        self.running: dict[str, PoolJob] = {}  # started, not ended (async ones, and sync ones in its lanes)
        self.queued: dict[str, PoolJob] = {}  # sent, not started, in order
        self.async_types: frozenset[str] = frozenset()  # types it runs on its event loop
        self.rss: int | None = None
        self.replaced = False
        self.replace_after_job = False  # retired while running: its replacement starts when its jobs end
        self.types: list[str] = []
        self.timers: list[asyncio.TimerHandle] = []
        self.stopping: asyncio.Future[Stopped] | None = None  # its stop escalation, while one runs

    @property
    def load(self) -> int:
        """Jobs it holds: those it runs and those queued in it."""
        return len(self.queued) + len(self.running)

    def sync_place(self, lanes: int, now: float, avg_run_s: dict[str, float], short_s: float,
                   long_after_s: float, queue_depth: int) -> int:
        """0 when its lanes start a sync run given `lanes` at once, 1 when the run may queue here
        (behind short runs only: their type's `avg_run_s` under `short_s`, none running for
        `long_after_s`; `queue_depth` at most), else 2: not here."""
        queued = 0
        short_ahead = True  # every sync job it holds is of a short type, none it runs has run long
        for q in self.queued.values():
            if not q.is_async:
                queued += 1
                if short_ahead and avg_run_s.get(q.request.name, short_s) >= short_s:
                    short_ahead = False
        running = 0
        alone = False  # one of its sync runs must run alone
        for r in self.running.values():
            if r.is_async:
                continue
            running += 1
            alone = alone or r.lanes < 2
            if short_ahead and (avg_run_s.get(r.request.name, short_s) >= short_s or (
                    r.started_at is not None and now - r.started_at >= long_after_s)):
                short_ahead = False
        if not queued and (not running or (lanes > 1 and running < lanes and not alone)):
            return 0
        return 1 if queued < queue_depth and short_ahead else 2

    def sync_running(self) -> list[PoolJob]:
        """The sync jobs it runs (in its lanes)."""
        return [j for j in self.running.values() if not j.is_async]

    def transition(self, to: WorkerState) -> None:
        """Move to state `to`; IllegalWorkerTransition when the table does not allow it."""
        if not can_transition(self.state, to):
            raise IllegalWorkerTransition(f"worker {self.pid}: {self.state} -> {to} is not a legal transition")
        self.state = to
        if to is WorkerState.DEAD:
            self.open = False  # first: nothing may write to (or signal) a reaped, reusable pid

    def retire(self) -> None:
        """Take it out of service (no change when it already is, or is dead)."""
        if self.state is WorkerState.STARTING or self.state is WorkerState.READY:
            self.transition(WorkerState.RETIRING)

    def signal(self, sig: signal.Signals) -> None:
        if self.state is WorkerState.DEAD:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, sig)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def release(self) -> None:
        """Free what a dead worker held: timers, its escalation, the pipe, the process object."""
        self.cancel_timers()
        if self.stopping is not None:
            self.stopping.cancel()
        self.close_pipe()
        self.conn.close()
        with contextlib.suppress(ValueError):
            self.proc.close()

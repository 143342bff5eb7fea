"""How a daemon stops: the stop plan's shape, the drain's clock, and the steps that hand jobs back.

A stop plan is one table of `StopStep`s (name, priority, timeout, callable), registered with
the `ShutdownManager` at once (`register_plan`), which runs them lowest priority first (equal
priorities in table order). The daemon's own table is `Daemon.stop_plan` (supervisor.daemon.daemon).

The steps that deal with jobs in flight (`stop_fetching`, `drain`, `close_runners`) share one
`DrainBudget`: `drain_timeout` counted from the signal, for draining, the release's grace and
closing the runners alike; a second signal (`fast`) skips the rest of the drain. The drain
logs one `shutdown.job` line per job in flight since the signal and counts their fates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from runners.base import Runner
from supervisor.daemon.dispatcher import Dispatcher
from supervisor.daemon.lanes import InFlight
from supervisor.daemon.sdnotify import Notifier
from supervisor.daemon.shutdown import ShutdownManager, StopCallable

log = structlog.get_logger(__name__)


class DrainBudget:
    """The shutdown's clock: `drain_timeout` from the signal, for draining, the release's grace
    and closing the runners alike (what is left after them is Redis's and the exit's).

    `on_start` is called when the clock starts (the daemon tells its dispatcher to track the
    jobs in flight, for the `shutdown.job` lines).
    """

    #: At most this long for jobs cancelled by the release to stop cooperatively (fast stop: 0.5 s).
    RELEASE_GRACE_S = 2.0
    #: At most this long kept for closing the runners (pool workers take ~0.1 s to exit).
    CLOSE_S = 0.5

    def __init__(self, drain_timeout: float, on_start: Callable[[], None] | None = None) -> None:
        self.drain_timeout = drain_timeout
        self.started: float | None = None
        self._on_start = on_start

    def start(self) -> None:
        """Start the clock (a no-op once started): at the signal, or when shutdown starts otherwise."""
        if self.started is None:
            self.started = time.monotonic()
            if self._on_start is not None:
                self._on_start()

    def left(self, keep: float = 0.0) -> float:
        """Seconds left before the deadline, less `keep` (never below zero)."""
        self.start()
        assert self.started is not None
        return max(self.started + self.drain_timeout - keep - time.monotonic(), 0.0)

    @property
    def release_grace(self) -> float:
        return min(self.RELEASE_GRACE_S, self.drain_timeout / 4)

    @property
    def close_s(self) -> float:
        return min(self.CLOSE_S, self.drain_timeout / 4)


@dataclass(frozen=True, slots=True)
class StopStep:
    """One row of a stop plan: `stop` runs at `priority` (lower first) for at most `timeout_s`."""

    name: str
    priority: int
    timeout_s: float
    stop: StopCallable


def register_plan(shutdown: ShutdownManager, plan: Iterable[StopStep]) -> None:
    """Hand every step of `plan` to `shutdown`, in table order."""
    for step in plan:
        shutdown.register(step.name, step.stop, priority=step.priority, timeout=step.timeout_s)


async def stop_fetching(dispatcher: Dispatcher, budget: DrainBudget) -> None:
    """Claim nothing more (within the budget, at least 0.5 s: a claim cut short would start
    jobs after the release has run)."""
    budget.start()  # not stopped by a signal (a failed start): the clock starts now
    await bounded("fetching", dispatcher.stop_fetching(), max(budget.left(budget.close_s), 0.5))


async def drain(dispatcher: Dispatcher, budget: DrainBudget, fast: asyncio.Event, notifier: Notifier,
                counts: dict[str, int]) -> None:
    """Wait for the jobs in flight within the budget (less the release's grace and the runners'
    close), then release those still running; log each job's fate and count it in `counts`."""
    inflight = len(dispatcher.inflight)
    log.info("shutdown.drain", in_flight=inflight, drain_timeout_s=budget.drain_timeout,
             left_s=round(budget.left(), 3))
    notifier.status(f"draining {inflight} jobs")
    keep = budget.release_grace + budget.close_s  # the release's grace and the runners' close
    drain_task = asyncio.ensure_future(dispatcher.drain(budget.left(keep), settle_s=0.25))
    fast_task = asyncio.ensure_future(fast.wait())
    await asyncio.wait({drain_task, fast_task}, return_when=asyncio.FIRST_COMPLETED)
    fast_task.cancel()
    if not drain_task.done():
        log.warning("shutdown.fast", note="second signal: releasing in-flight jobs now")
        drain_task.cancel()
    still: list[InFlight] = dispatcher.inflight
    settle_s = max(budget.left(budget.close_s), 0.25)
    if still:
        grace = min(0.5 if fast.is_set() else budget.release_grace, budget.left(budget.close_s))
        await dispatcher.release(still, grace=grace, settle_s=settle_s)
    else:
        await dispatcher.flush(settle_s)
    for f in dispatcher.shutdown_jobs or []:  # every job in flight since the signal, once
        counts[f.fate] = counts.get(f.fate, 0) + 1
        log.info("shutdown.job", job_id=f.job.id, job_name=f.job.name, attempt=f.job.attempt,
                 runtime=f.served.runtime, fate=f.fate, outcome=f.outcome)


async def close_runners(dispatcher: Dispatcher, runners: dict[str, Runner], budget: DrainBudget) -> None:
    """Stop the dispatcher's loops, then close every runner concurrently in what is left of the
    budget (0.1 s at least): pool workers still running a job were killed by the release, and
    any left when we exit see their pipe close and exit too."""
    await dispatcher.close()
    closes = {name: asyncio.ensure_future(runner.close()) for name, runner in runners.items()}
    _, pending = await asyncio.wait(closes.values(), timeout=max(budget.left(), 0.1))
    for name, task in closes.items():
        if task in pending:
            log.warning("shutdown.runner_not_closed", runner=name, note="drain_timeout used up")
            task.cancel()


async def bounded(what: str, coro: Any, timeout: float) -> None:
    """Await `coro` for up to `timeout` seconds (at least 0.1); past that it is cancelled and logged."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.1))
    if not done:
        log.warning("shutdown.cut_short", step=what, note="drain_timeout used up")
        await cancel(task)


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


__all__ = ["DrainBudget", "StopStep", "bounded", "cancel", "close_runners", "drain", "register_plan",
           "stop_fetching"]

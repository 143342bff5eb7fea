"""Ordered, bounded, never-raising shutdown of a process's stoppable resources.

This module owns the `ShutdownManager` (SPEC §10): the one place that knows the
order in which things stop and how long each may take. Components register a
``stop`` callable with a priority (lower stops first) and a timeout; the first
call to `ShutdownManager.shutdown` sets the abort signal for in-flight work,
stops every resource in order, and returns a `ShutdownReport` that every later
caller receives too.

It is deliberately standalone (stdlib, structlog) so that user code can use it
to stop its own resources in the same way the daemon does.

Example:
    manager = ShutdownManager()
    manager.register("fetcher", fetcher.stop, priority=10, timeout=5)
    manager.register("redis", redis.aclose, priority=90)
    report = await manager.shutdown("SIGTERM", timeout=60)
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog

__all__ = [
    "ResourceReport",
    "ResourceStatus",
    "ShutdownManager",
    "ShutdownOutcome",
    "ShutdownReport",
    "ShutdownStarted",
    "ShutdownState",
    "StopCallable",
]

log = structlog.get_logger(__name__)

#: A resource's stop function: sync (returns None) or async (returns an awaitable).
StopCallable = Callable[[], Awaitable[None] | None]

#: Default for `ShutdownManager(cancel_grace_s=...)`.
_CANCEL_GRACE_S = 1.0


class ShutdownState(StrEnum):
    """Where the manager is in its life."""

    RUNNING = "running"
    SHUTTING_DOWN = "shutting-down"
    STOPPED = "stopped"


class ShutdownOutcome(StrEnum):
    """How a shutdown as a whole ended (`ShutdownReport.state`)."""

    #: Every resource stopped within its timeout.
    COMPLETED = "completed"
    #: All resources were attempted; at least one failed or overran its own timeout.
    COMPLETED_WITH_ERRORS = "completed-with-errors"
    #: The overall timeout ran out; the resources left were not (fully) stopped.
    TIMED_OUT = "timed-out"


class ResourceStatus(StrEnum):
    """How one resource's stop ended (`ResourceReport.status`)."""

    STOPPED = "stopped"
    FAILED = "failed"
    #: Its stop was started but did not finish in time (own or overall timeout).
    TIMED_OUT = "timed-out"
    #: Its stop was never started: the overall timeout had already run out.
    SKIPPED = "skipped"


class ShutdownStarted(RuntimeError):
    """Raised when registering a resource after shutdown has begun.

    The stop order is fixed when shutdown starts, so a late resource would
    silently never be stopped; refusing it makes the caller stop it itself.
    """


@dataclass(frozen=True, slots=True)
class ResourceReport:
    """What happened to one resource during shutdown.

    Attributes:
        id: The id it was registered under.
        priority: Its priority (lower stopped first).
        status: How its stop ended.
        duration_s: Time spent in its stop (0.0 when skipped).
        error: The error text when it failed or timed out, else None.
    """

    id: str
    priority: int
    status: ResourceStatus
    duration_s: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "id": self.id,
            "priority": self.priority,
            "status": str(self.status),
            "duration_s": self.duration_s,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """The result of a shutdown, shared by every caller of `shutdown`.

    Attributes:
        reason: Why shutdown was requested (from the first call).
        state: The overall outcome.
        stopped: Ids of resources that stopped cleanly, in stop order.
        failed: Id -> error text for resources whose stop raised.
        timed_out: Ids of resources that did not stop in time, including
            those skipped because the overall timeout had run out (their
            `ResourceReport.status` says which).
        duration_s: Wall time of the whole shutdown.
        resources: One entry per resource, in stop order.
    """

    reason: str
    state: ShutdownOutcome
    stopped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    timed_out: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    resources: list[ResourceReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every resource stopped cleanly."""
        return self.state is ShutdownOutcome.COMPLETED

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (for logs, the admin API and the CLI)."""
        return {
            "reason": self.reason,
            "state": str(self.state),
            "stopped": list(self.stopped),
            "failed": dict(self.failed),
            "timed_out": list(self.timed_out),
            "duration_s": self.duration_s,
            "resources": [r.to_dict() for r in self.resources],
        }


@dataclass(frozen=True, slots=True)
class _Resource:
    id: str
    stop: StopCallable
    priority: int
    timeout: float
    seq: int  # registration order breaks priority ties


class ShutdownManager:
    """Stops registered resources in priority order, each under a timeout.

    Args:
        timeout: Default overall cap in seconds for `shutdown` when the call
            gives none; None means the sum of per-resource timeouts is the
            only bound.
        cancel_grace_s: How long a stop that overran its timeout gets to
            honour its cancellation before it is abandoned (left running,
            logged). `asyncio.wait_for` would wait forever for a coroutine
            that swallows `CancelledError`, defeating every timeout; this
            bounds the overrun instead.

    The manager must be used from one event loop. `register`/`unregister`
    are plain methods; `shutdown` and `wait_for_shutdown` are coroutines.
    """

    def __init__(
        self, *, timeout: float | None = None, cancel_grace_s: float = _CANCEL_GRACE_S
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        if cancel_grace_s < 0:
            raise ValueError(f"cancel_grace_s must be >= 0, got {cancel_grace_s!r}")
        self._default_timeout = timeout
        self._cancel_grace_s = cancel_grace_s
        self._resources: dict[str, _Resource] = {}
        self._seq = itertools.count()
        self._state = ShutdownState.RUNNING
        self._task: asyncio.Task[ShutdownReport] | None = None
        self._report: ShutdownReport | None = None
        self._done = asyncio.Event()
        # Stop coroutines that ignored cancellation: held so they are not
        # garbage-collected mid-flight (asyncio keeps only weak references).
        self._abandoned: set[asyncio.Future[Any]] = set()
        self.abort_event = asyncio.Event()
        """Set as soon as shutdown starts: the abort signal for in-flight work."""

    # -- registration -------------------------------------------------------------

    def register(
        self,
        id: str,  # noqa: A002 - the public API names it `id`
        stop: StopCallable,
        priority: int = 100,
        timeout: float = 10.0,
    ) -> None:
        """Register a resource to stop on shutdown.

        Args:
            id: Unique name, used in logs and the report.
            stop: Called with no arguments; may be sync or return an awaitable.
            priority: Lower stops first; equal priorities stop in
                registration order, one after the other.
            timeout: Seconds the stop may take (async stops only: a sync
                callable cannot be interrupted and is simply called).

        Raises:
            ValueError: If `id` is empty or already registered, or `timeout`
                is not positive.
            ShutdownStarted: If shutdown has already begun.
        """
        if not id:
            raise ValueError("resource id must be a non-empty string")
        if id in self._resources:
            raise ValueError(f"resource {id!r} is already registered")
        if timeout <= 0:
            raise ValueError(f"timeout for {id!r} must be > 0 seconds, got {timeout!r}")
        if self._state is not ShutdownState.RUNNING:
            raise ShutdownStarted(f"cannot register {id!r}: shutdown has already started")
        self._resources[id] = _Resource(id, stop, priority, float(timeout), next(self._seq))

    def unregister(self, id: str) -> None:  # noqa: A002 - mirrors register()
        """Forget a resource (it stopped on its own). Unknown ids are ignored.

        Ignoring unknown ids lets a resource unregister itself in a `finally`
        block without racing against shutdown. Once shutdown has started the
        stop order is fixed, so unregistering then has no effect on it.
        """
        self._resources.pop(id, None)

    # -- state --------------------------------------------------------------------

    @property
    def state(self) -> ShutdownState:
        """`running`, `shutting-down` or `stopped`."""
        return self._state

    @property
    def aborted(self) -> bool:
        """True once shutdown has started (same as `abort_event.is_set()`)."""
        return self.abort_event.is_set()

    @property
    def report(self) -> ShutdownReport | None:
        """The report once shutdown finished, else None."""
        return self._report

    @property
    def resource_ids(self) -> list[str]:
        """Registered ids in the order they would stop."""
        return [r.id for r in self._ordered()]

    # -- shutdown -----------------------------------------------------------------

    def request(self, reason: str, timeout: float | None = None) -> None:
        """Start shutdown without waiting for it (safe from a signal handler).

        Meant for `loop.add_signal_handler(signal.SIGTERM, manager.request,
        "SIGTERM")`: it only schedules the work; `wait_for_shutdown` returns
        the report. Calls after the first are ignored.
        """
        self._start(reason, timeout)

    async def shutdown(self, reason: str, timeout: float | None = None) -> ShutdownReport:
        """Stop every registered resource and report how it went. Never raises.

        Resources stop one at a time, lowest priority first. Each gets its own
        timeout, capped by what is left of the overall `timeout`; when that
        runs out the resource in progress is cancelled and reported timed out
        and the rest are skipped. Exceptions from a stop are recorded as
        failures and the next resource still stops.

        Idempotent: later calls (even while the first is running) return the
        first call's report; their `reason` and `timeout` are ignored.
        Cancelling a caller does not interrupt the shutdown itself.

        Args:
            reason: Why (for example "SIGTERM"); goes to the report and logs.
            timeout: Overall cap in seconds; defaults to the manager's.

        Returns:
            The `ShutdownReport`.
        """
        task = self._start(reason, timeout)
        # shield: a caller cancelled while waiting (say, a request handler)
        # must not leave resources half-stopped.
        return await asyncio.shield(task)

    async def wait_for_shutdown(self) -> ShutdownReport:
        """Wait until a shutdown (started by anyone) has finished; return its report."""
        await self._done.wait()
        assert self._report is not None  # set before _done
        return self._report

    def _start(self, reason: str, timeout: float | None) -> asyncio.Task[ShutdownReport]:
        if self._task is not None:
            log.debug("shutdown.already_requested", reason=reason, state=str(self._state))
            return self._task
        overall = self._default_timeout if timeout is None else timeout
        if overall is not None and overall <= 0:
            # Never raise from shutdown: a nonsensical cap means "no time at all".
            overall = 0.0
        # State flips synchronously so that register() refuses late arrivals
        # and in-flight work sees the abort before the first await.
        self._state = ShutdownState.SHUTTING_DOWN
        self.abort_event.set()
        self._task = asyncio.get_running_loop().create_task(
            self._run(reason, overall), name="shutdown-manager"
        )
        return self._task

    def _ordered(self) -> list[_Resource]:
        return sorted(self._resources.values(), key=lambda r: (r.priority, r.seq))

    async def _run(self, reason: str, overall: float | None) -> ShutdownReport:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = None if overall is None else started + overall
        plan = self._ordered()
        log.info(
            "shutdown.started",
            reason=reason,
            timeout_s=overall,
            resources=[r.id for r in plan],
        )
        entries: list[ResourceReport] = []
        overall_expired = False
        for res in plan:
            remaining = None if deadline is None else deadline - loop.time()
            if overall_expired or (remaining is not None and remaining <= 0):
                overall_expired = True
                skipped = ResourceReport(
                    res.id, res.priority, ResourceStatus.SKIPPED, 0.0,
                    "not started: overall shutdown timeout exceeded",
                )
                entries.append(skipped)
                log.warning("shutdown.resource.skipped", resource=res.id, priority=res.priority)
                continue
            entry, hit_overall = await self._stop_one(res, remaining)
            overall_expired = hit_overall
            entries.append(entry)

        report = _build_report(reason, entries, overall_expired, loop.time() - started)
        self._report = report
        self._state = ShutdownState.STOPPED
        self._done.set()
        log.info(
            "shutdown.finished",
            reason=reason,
            state=str(report.state),
            duration_s=round(report.duration_s, 3),
            stopped=report.stopped,
            failed=report.failed,
            timed_out=report.timed_out,
        )
        return report

    async def _stop_one(
        self, res: _Resource, remaining: float | None
    ) -> tuple[ResourceReport, bool]:
        """Stop one resource; return its entry and whether the overall cap expired."""
        loop = asyncio.get_running_loop()
        limit = res.timeout if remaining is None else min(res.timeout, remaining)
        limited_by_overall = remaining is not None and remaining < res.timeout
        log.debug("shutdown.resource.stopping", resource=res.id, priority=res.priority,
                  timeout_s=round(limit, 3))
        t0 = loop.time()

        def entry(status: ResourceStatus, error: str | None = None) -> ResourceReport:
            return ResourceReport(res.id, res.priority, status, loop.time() - t0, error)

        try:
            result = res.stop()
        except Exception as exc:  # noqa: BLE001 - recorded, never propagated
            return self._failed(entry(ResourceStatus.FAILED, _describe(exc))), False

        if not inspect.isawaitable(result):
            done = entry(ResourceStatus.STOPPED)
            log.info("shutdown.resource.stopped", resource=res.id,
                     duration_s=round(done.duration_s, 3))
            return done, False

        fut = asyncio.ensure_future(result)
        try:
            finished, _ = await asyncio.wait({fut}, timeout=limit)
        except asyncio.CancelledError:
            # The shutdown task itself is being cancelled (loop teardown):
            # take the resource's stop down with it and let cancellation run.
            fut.cancel()
            raise

        if not finished:
            await self._cancel(fut, res.id)
            why = "overall shutdown timeout" if limited_by_overall else "resource timeout"
            timed = entry(ResourceStatus.TIMED_OUT, f"did not stop within {limit:.3g}s ({why})")
            log.warning("shutdown.resource.timed_out", resource=res.id, timeout_s=round(limit, 3),
                        limited_by=why, duration_s=round(timed.duration_s, 3))
            return timed, limited_by_overall

        if fut.cancelled():
            # The stop cancelled itself; nobody cancelled our task.
            cancelled = entry(ResourceStatus.FAILED, "CancelledError: stop was cancelled")
            return self._failed(cancelled), False
        error = fut.exception()
        if error is not None:
            return self._failed(entry(ResourceStatus.FAILED, _describe(error))), False
        done = entry(ResourceStatus.STOPPED)
        log.info("shutdown.resource.stopped", resource=res.id, duration_s=round(done.duration_s, 3))
        return done, False

    async def _cancel(self, fut: asyncio.Future[Any], resource: str) -> None:
        fut.cancel()
        if self._cancel_grace_s > 0:
            await asyncio.wait({fut}, timeout=self._cancel_grace_s)
        if not fut.done():
            self._abandoned.add(fut)
            fut.add_done_callback(self._forget)
            log.warning("shutdown.resource.abandoned", resource=resource,
                        grace_s=self._cancel_grace_s)
        elif not fut.cancelled() and fut.exception() is not None:
            # Retrieve it so asyncio does not log "exception was never retrieved".
            log.debug("shutdown.resource.error_after_cancel", resource=resource,
                      error=_describe(fut.exception()))

    def _forget(self, fut: asyncio.Future[Any]) -> None:
        self._abandoned.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            # Retrieved so asyncio does not log "exception was never retrieved".
            log.debug("shutdown.resource.error_after_abandon", error=_describe(fut.exception()))

    @staticmethod
    def _failed(entry: ResourceReport) -> ResourceReport:
        log.error("shutdown.resource.failed", resource=entry.id, error=entry.error,
                  duration_s=round(entry.duration_s, 3))
        return entry


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _build_report(
    reason: str, entries: list[ResourceReport], overall_expired: bool, duration_s: float
) -> ShutdownReport:
    stopped = [e.id for e in entries if e.status is ResourceStatus.STOPPED]
    failed = {e.id: e.error or "" for e in entries if e.status is ResourceStatus.FAILED}
    timed_out = [
        e.id for e in entries if e.status in (ResourceStatus.TIMED_OUT, ResourceStatus.SKIPPED)
    ]
    if overall_expired:
        outcome = ShutdownOutcome.TIMED_OUT
    elif failed or timed_out:
        outcome = ShutdownOutcome.COMPLETED_WITH_ERRORS
    else:
        outcome = ShutdownOutcome.COMPLETED
    return ShutdownReport(
        reason=reason,
        state=outcome,
        stopped=stopped,
        failed=failed,
        timed_out=timed_out,
        duration_s=duration_s,
        resources=entries,
    )

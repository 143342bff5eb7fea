"""Stopping a process, in one place: ask, wait; SIGTERM, wait; SIGKILL, wait; sweep its group.

Every stop in job-supervisor walks this ladder: the pool's workers (a stop message
first), a task's process tree (its session's group), the embedded redis-server and
the bench's daemons. What differs is only how a target is signalled and how one
waits for it to be gone, which the caller passes in as a `Target`; the order of
the steps, their waits and what comes back are the same everywhere.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import psutil

#: After SIGKILL: how long a process may take to be reaped before we stop waiting.
REAP_WAIT_S = 5.0


@dataclass(frozen=True, slots=True)
class Escalation:
    """The steps of one stop: each waits for the target to be gone before the next one.

    Attributes:
        ask_s: wait after the caller's own request to stop (a stop message, already sent);
            None: there was none, start with SIGTERM.
        term_s: wait after SIGTERM before SIGKILL; None: SIGKILL at once.
        reap_s: wait after SIGKILL; None: until it is gone.
    """

    ask_s: float | None = None
    term_s: float | None = 5.0
    reap_s: float | None = REAP_WAIT_S

    def steps(self) -> Iterator[tuple[signal.Signals | None, float | None]]:
        if self.ask_s is not None:
            yield None, self.ask_s
        if self.term_s is not None:
            yield signal.SIGTERM, self.term_s
        yield signal.SIGKILL, self.reap_s


#: No grace: SIGKILL, then wait for it to be reaped.
KILL_NOW = Escalation(term_s=None)


@dataclass(frozen=True, slots=True)
class Stopped:
    """How a stop ended: the last signal it took (None: none was needed) and whether the target is gone."""

    signal: signal.Signals | None
    gone: bool


class Target(Protocol):
    """What is stopped: how to signal it and (in `AsyncTarget`/`SyncTarget`) how to wait for it."""

    def send(self, sig: signal.Signals) -> None:
        """Send `sig` (to the process, its group, its tree: the target decides)."""

    def sweep(self) -> None:
        """Once it is gone after a gentle step: stop what is left of its group (may do nothing)."""


class AsyncTarget(Target, Protocol):
    async def gone(self, timeout: float | None) -> bool:
        """Wait at most `timeout` (None: without limit); True once the target is gone."""


class SyncTarget(Target, Protocol):
    def gone(self, timeout: float | None) -> bool:
        """Block at most `timeout` (None: without limit); True once the target is gone."""


OnSignal = Callable[[signal.Signals], None]


async def stop(target: AsyncTarget, plan: Escalation, on_signal: OnSignal | None = None) -> Stopped:
    """Walk `plan` until `target` is gone; `on_signal` hears each signal before it is sent."""
    sent: signal.Signals | None = None
    for sig, wait_s in plan.steps():
        if sig is not None:
            if on_signal is not None:
                on_signal(sig)
            target.send(sig)
            sent = sig
        if await target.gone(wait_s):
            return _gone(target, sent)
    return Stopped(sent, False)


def stop_sync(target: SyncTarget, plan: Escalation, on_signal: OnSignal | None = None) -> Stopped:
    """`stop`, blocking (for callers without an event loop)."""
    sent: signal.Signals | None = None
    for sig, wait_s in plan.steps():
        if sig is not None:
            if on_signal is not None:
                on_signal(sig)
            target.send(sig)
            sent = sig
        if target.gone(wait_s):
            return _gone(target, sent)
    return Stopped(sent, False)


def _gone(target: Target, sent: signal.Signals | None) -> Stopped:
    if sent is not signal.SIGKILL:  # a SIGKILL step already reached all the target has
        target.sweep()
    return Stopped(sent, True)


class ProcessTarget:
    """A child process (`subprocess.Popen` or `psutil.Process`), blocking waits.

    With `kill_tree`, SIGKILL also reaches its descendants (found before it dies: once it
    is gone they belong to init).
    """

    def __init__(self, proc: subprocess.Popen[Any] | psutil.Process, *, kill_tree: bool = False) -> None:
        self.proc = proc
        self.kill_tree = kill_tree

    def send(self, sig: signal.Signals) -> None:
        import psutil  # noqa: PLC0415 (only when a stop happens: the CLI imports this module for ping)

        if sig is signal.SIGKILL and self.kill_tree:
            with contextlib.suppress(psutil.Error):
                for p in psutil.Process(self.proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        p.kill()
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            self.proc.send_signal(sig)

    def gone(self, timeout: float | None) -> bool:
        import psutil  # noqa: PLC0415

        try:
            self.proc.wait(timeout)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            return False
        return True

    def sweep(self) -> None:
        """Nothing: a plain child has no group of its own to sweep."""


__all__ = ["KILL_NOW", "REAP_WAIT_S", "AsyncTarget", "Escalation", "ProcessTarget", "Stopped", "SyncTarget",
           "Target", "stop", "stop_sync"]

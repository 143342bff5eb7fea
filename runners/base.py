"""The contract between the dispatcher and the runners.

A Run is one attempt of a Job on a Runner. The dispatcher hands a runner a
`RunRequest` and a `RunEvents` sink, and gets back a `RunResult`; a runner
never touches Redis and never imports the daemon (`supervisor.daemon.daemon`). Cancellation reaches
the run through an `asyncio.Event` (cooperative first; runners that own a
process signal it after `grace_s`); the dispatcher hands them a `CancelSignal`,
which runners may also watch through a callback instead of a waiting task.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class RunStatus(StrEnum):
    """How a run ended, from the runner's point of view."""

    COMPLETED = "completed"
    FAILED = "failed"  # retryable
    PERMANENT = "permanent"  # no retry: ends `failed`
    RETRY = "retry"  # retry after `retry_delay_s` (handler asked)
    CANCELLED = "cancelled"  # stopped because cancel was set
    TIMEOUT = "timeout"  # killed past `timeout_s` (retryable)


class CancelSignal(asyncio.Event):
    """An `asyncio.Event` that also calls back when set.

    Runners that only `await cancel.wait()` need nothing more; a runner that watches
    many runs at once registers a callback instead of keeping a task waiting on each.
    Each callback is called once, inside the first `set()` after it was added (set it on
    the loop, as any asyncio.Event); one that raises is reported to the loop's exception
    handler, so the code that sets the signal never sees it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def add_callback(self, fn: Callable[[], None]) -> None:
        """Call `fn()` when the signal is set (at once, here, if it already is)."""
        if self.is_set():
            fn()
        else:
            self._callbacks.append(fn)

    def remove_callback(self, fn: Callable[[], None]) -> None:
        """Forget `fn` (no error if it is not registered)."""
        try:
            self._callbacks.remove(fn)
        except ValueError:
            pass

    def set(self) -> None:
        if self.is_set():
            return
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 (a runner's bug must not break whoever cancels)
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "CancelSignal callback failed", "exception": exc})


@dataclass(slots=True)
class RunRequest:
    """Everything a runner needs to run one attempt. One per attempt: not frozen (see
    `ClaimedJob`); runners treat it as read-only."""

    job_id: str
    name: str
    attempt: int
    payload: Any
    payload_json: str
    context: dict[str, str] = field(default_factory=dict)
    deadline: float | None = None  # epoch seconds
    timeout_s: float | None = None


@dataclass(slots=True)
class RunResult:
    """What came of one attempt."""

    status: RunStatus
    result: Any = None
    error: str | None = None
    retry_delay_s: float | None = None
    pid: int | None = None
    traceback: str | None = None  # a failed attempt's stack trace (tasks: their last stderr lines), bounded


#: The most a stored stack trace holds, in bytes of UTF-8 (per attempt).
TRACEBACK_MAX_BYTES = 16 * 1024


def bounded_text(text: str, limit: int = TRACEBACK_MAX_BYTES, head: int = 0) -> str:
    """`text` cut to at most `limit` bytes of UTF-8: its first `head` bytes and its end, a marker between."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    tail = limit - head - 48  # room for the marker
    cut = len(data) - head - tail
    return (data[:head].decode("utf-8", errors="ignore") + f"\n[... {cut} bytes cut ...]\n"
            + data[-tail:].decode("utf-8", errors="ignore"))


def traceback_text(exc: BaseException) -> str:
    """`exc`'s formatted traceback, bounded: text only (frames, source lines, message), never locals.

    The end holds the innermost frames and the message; the start the outermost frames.
    """
    return bounded_text("".join(traceback.format_exception(exc)), head=4 * 1024)


class RunEvents(Protocol):
    """Callbacks a runner makes while a run is in flight (all non-blocking)."""

    def progress(self, percent: float, message: str | None = None, step: str | None = None) -> None:
        """Report progress (0-100) with an optional message and step name."""

    def heartbeat(self) -> None:
        """Ask for the lease to be extended now."""

    def log(self, line: str, stream: str = "stdout") -> None:
        """Record one line of output as the job's log."""


class Runner(Protocol):
    """An execution model: `inprocess`, `process` or `subprocess`.

    Besides `run` and `close`, a runner may have these optional lifecycle hooks; the daemon
    calls each one only when the runner has it (`lifecycle_hook`), so a runner needs none:

    - `async start() -> None`: called once, before the first job of a type that runs on this
      runner (the pool starts its workers then, ~0.5 s: only when a type needs them);
    - `accept(manifest: Path | None) -> None`: the handler sources accepted at a (re)load
      (`supervisor.daemon.accepted`); the pool recycles its workers between jobs when they changed;
    - `workers_info() -> list[dict[str, Any]]`: one entry per worker process of the runner
      (`pid`, `rss_bytes`, ...), for presence and the `worker_rss_bytes` gauge.
    """

    kind: str

    async def run(self, request: RunRequest, events: RunEvents, cancel: asyncio.Event) -> RunResult:
        """Run one attempt to its end and say how it ended."""

    async def close(self) -> None:
        """Release the runner's resources (workers, threads)."""


#: The optional lifecycle hooks of a `Runner`, in the order a daemon's life calls them.
LIFECYCLE_HOOKS = ("start", "accept", "workers_info")


def lifecycle_hook(runner: Runner, name: str) -> Callable[..., Any] | None:
    """`runner`'s optional hook `name` (one of `LIFECYCLE_HOOKS`), or None when it has none."""
    if name not in LIFECYCLE_HOOKS:
        raise ValueError(f"{name!r} is not a runner lifecycle hook ({', '.join(LIFECYCLE_HOOKS)})")
    hook: Callable[..., Any] | None = getattr(runner, name, None)
    return hook

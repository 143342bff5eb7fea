"""Hot reload's file watcher: a change in jobs/ or tasks/ (debounced) asks the main loop for a reload.

watchfiles watches with inotify (polling only where it must: WSL, or WATCHFILES_FORCE_POLLING) in
a thread of its own. That thread wakes every `STEP_MS` to look for changes and for the stop
event; the stop plan sets the event before it cancels the watcher, so the thread lets go within
one step, and the watch needs no short timeout: an idle daemon's watcher costs five wake-ups a
second in its thread and nothing on the event loop (it used to come back to the loop every
300 ms and wake every 50 ms).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog

from supervisor.config import Settings

log = structlog.get_logger(__name__)
#: How often the watcher's thread looks for changes and for the stop event (ms): changes that
#: stop arriving for this long are reported (at most `DEBOUNCE_MS` after the first).
STEP_MS = 200
DEBOUNCE_MS = 400
#: A backstop only: the watch returns to the loop this often even when nobody sets the stop event.
TIMEOUT_MS = 10_000


def _ignore(change: Any, path: str) -> bool:  # noqa: ARG001  (watchfiles' filter signature)
    name = Path(path).name
    return not (name.startswith(".") or name.endswith(("~", ".swp", ".swx", ".tmp", ".pyc"))
                or "__pycache__" in path)


def watched_dirs(settings: Settings) -> list[Path]:
    return [Path(p) for p in (settings.jobs_dir, settings.tasks_dir) if Path(p).is_dir()]


async def watch_files(settings: Settings, reload_requested: asyncio.Event, stop: asyncio.Event) -> None:
    """Set `reload_requested` on each batch of changes, until `stop` is set."""
    dirs = watched_dirs(settings)
    if not dirs:
        return
    # imported in the watcher's task, which runs while the embedded Redis starts, not before it
    from watchfiles import awatch  # noqa: PLC0415

    async for changes in awatch(*dirs, watch_filter=_ignore, debounce=DEBOUNCE_MS, step=STEP_MS, recursive=True,
                                stop_event=stop, rust_timeout=TIMEOUT_MS):
        log.info("files.changed", changes=sorted({p for _, p in changes})[:20])
        reload_requested.set()


__all__ = ["watch_files", "watched_dirs"]

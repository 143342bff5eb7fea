"""Where the CLI starts a daemon: `run_daemon` (the composition root itself is `supervisor.daemon.daemon.Daemon`).

Start: settings -> Redis (given, or a private embedded one) -> safety checks -> handlers ->
presence (the types served) -> publish types -> dispatcher -> READY=1. Stop (SIGTERM/SIGINT):
the stop plan (`Daemon.stop_plan`, run by the ShutdownManager) stops fetching, drains in-flight
jobs, releases the leases of jobs still running, closes the runners, then closes Redis, and
stops the embedded Redis last. All of that up to the runners' close fits in `drain_timeout`
counted from the signal (`supervisor.daemon.stop_plan.DrainBudget`). A second signal skips the rest
of the drain.

This module imports next to nothing: without `redis_url`, the embedded Redis is spawned first, so
it comes up while the composition root's modules load (most of a start), not after them; so is
the process pool's fork server when the handlers' text says a `process` type is likely
(`runners.fork_server`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.config import Settings
    from supervisor.observability.metrics import Metrics
    from supervisor.observability.telemetry import Tracing


async def run_daemon(settings: Settings, reload_settings: Callable[[], Settings] | None = None, *,
                     tracing: Tracing | None = None, metrics: Metrics | None = None) -> int:
    """Run a daemon until SIGTERM/SIGINT; returns the process exit code.

    Args:
        settings: validated settings.
        reload_settings: reads the settings again on SIGHUP (None: SIGHUP reloads handlers only).
        tracing: where spans go (default: by `settings.otel_exporter`).
        metrics: the Prometheus metrics (default: made by the daemon, unregistered at its stop).
    """
    from runners import fork_server  # noqa: PLC0415 (see the module docstring)
    from supervisor.daemon.redis_server import spawn_embedded  # noqa: PLC0415

    embedded = spawn_embedded(Path(settings.state_dir)) if settings.redis_url_value() is None else None
    fork_server.start_if_likely(Path(settings.jobs_dir), settings.default_runtime)  # kept when `run` started it
    try:
        from supervisor.daemon.daemon import Daemon  # noqa: PLC0415

        daemon = Daemon(settings, reload_settings, tracing=tracing, metrics=metrics, embedded=embedded)
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    return await daemon.run()


__all__ = ["run_daemon"]

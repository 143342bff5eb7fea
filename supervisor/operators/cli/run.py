"""`job-supervisor run`: settings -> the daemon (supervisor.daemon.app) -> its exit code."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from supervisor.errors import ConfigError, SupervisorError
from supervisor.operators.cli.app import fail, settings_of


@click.command()
@click.option("--jobs-dir", type=click.Path(path_type=Path), default=None, help="Python handlers folder.")
@click.option("--tasks-dir", type=click.Path(path_type=Path), default=None, help="Polyglot tasks folder.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None, help="TOML settings file.")
@click.option("--types", "serve_types", default=None, metavar="GLOBS",
              help="Serve only the job types matching these comma-separated globs, e.g. 'orders.*,images.*' "
                   "(setting serve_types).")
@click.option("--exclude-types", "exclude_types", default=None, metavar="GLOBS",
              help="Never serve the job types matching these globs (setting exclude_types).")
@click.pass_context
def run(ctx: click.Context, jobs_dir: Path | None, tasks_dir: Path | None, config: Path | None,
        serve_types: str | None, exclude_types: str | None) -> None:
    """Run the daemon until SIGTERM/SIGINT (graceful drain; a second signal stops fast)."""
    import gc  # noqa: PLC0415

    # No cyclic collection while the start builds ~100k objects that live as long as the daemon
    # (settings, modules, handlers): the daemon freezes them and collects again at READY.
    gc.disable()
    import os  # noqa: PLC0415

    from runners import fork_server  # noqa: PLC0415

    # Before the settings (pydantic) are even imported, a guess from the flag or the environment:
    # the pool's fork server then imports beside them (runners/fork_server.py).
    fork_server.start_if_likely(jobs_dir or Path(os.environ.get("JOB_SUPERVISOR_JOBS_DIR") or "jobs"),
                                os.environ.get("JOB_SUPERVISOR_DEFAULT_RUNTIME") or "inprocess")
    from supervisor.observability import log  # noqa: PLC0415
    from supervisor.observability.optional_imports import refuse_unused  # noqa: PLC0415

    if config is not None:
        ctx.find_root().obj["config"] = config
    flags = {"jobs_dir": jobs_dir, "tasks_dir": tasks_dir, "serve_types": serve_types, "exclude_types": exclude_types}
    try:
        settings = settings_of(ctx, **flags)
    except ConfigError as exc:
        fail(exc)
        return
    refuse_unused(console_logs=log.is_console(settings.log_format))  # before the daemon's imports
    from supervisor.daemon.app import run_daemon  # noqa: PLC0415

    log.configure(settings.log_level, settings.log_format, batch=True)  # a line per job: one write per loop pass
    import asyncio  # noqa: PLC0415

    try:
        code = asyncio.run(run_daemon(settings, lambda: settings_of(ctx, **flags)))
    except SupervisorError as exc:
        fail(exc)
        return
    finally:
        gc.enable()  # a start that failed before READY
    _exit_daemon(code)


def _exit_daemon(code: int) -> None:
    """Exit with `code` now, even with handler threads still running: a sync handler that ignored
    its cancel cannot be stopped, its job was released already, and Python would wait for it at
    exit, past the drain's budget."""
    import os  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    deadline = time.monotonic() + 0.2  # idle pool threads are on their way out: let them go
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join(max(deadline - time.monotonic(), 0))
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not stuck:
        sys.exit(code)
    import structlog  # noqa: PLC0415

    structlog.get_logger(__name__).warning("daemon.exit_leaving_threads", threads=stuck,
                                           note="sync handlers that ignored their cancel; their jobs were released")
    from supervisor.observability import log  # noqa: PLC0415

    log.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

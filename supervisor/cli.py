"""`job-supervisor` command line: argv -> Settings -> action; the only place exit codes are chosen.

Human tables by default, `--json` for scripts. Commands other than `run` talk
to Redis directly, so they work whether or not a daemon or API is running.
Built on click (mature, composable command groups, used by Flask and Celery)
with rich for tables and progress: the two most widely used choices for this.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.cells import cell_len
from rich.markup import escape
from rich.text import Text

from supervisor import errors
from supervisor.errors import ConfigError, SupervisorError

if TYPE_CHECKING:  # settings are loaded by a command that runs (`--help` never loads them)
    from supervisor.config import Settings

T = TypeVar("T")
console = Console(markup=False)  # data never goes through rich markup (payloads hold brackets)
err_console = Console(stderr=True, soft_wrap=True)
EXIT_BY_CODE = {
    "config_invalid": errors.EXIT_CONFIG, "redis_unsafe": errors.EXIT_CONFIG,
    "embedded_redis_failed": errors.EXIT_CONFIG, "job_not_found": errors.EXIT_NOT_FOUND,
}


def _fail(exc: SupervisorError) -> None:
    err_console.print(f"[bold red]error[/] ({exc.code}): {escape(str(exc))}", highlight=False, markup=True)
    sys.exit(EXIT_BY_CODE.get(exc.code, errors.EXIT_FAILURE))


def _settings(ctx: click.Context, **flags: Any) -> Settings:
    from supervisor.config import load_settings  # noqa: PLC0415

    obj = ctx.find_root().obj or {}
    return load_settings(obj.get("config"), **flags)


def _redis_url(settings: Settings) -> str:
    from supervisor.redis_server import RedisServer, embedded_socket  # noqa: PLC0415

    url = settings.redis_url_value()
    if url:
        return url
    sock = embedded_socket(settings.state_dir)
    if sock.exists() and RedisServer(settings.state_dir, unix_socket=sock).ping():
        return f"unix://{sock}"
    raise ConfigError(
        f"no Redis to talk to: REDIS_URL is unset and no embedded Redis answers at {sock}. "
        "Start the daemon (job-supervisor run), or set REDIS_URL"
    )


def _redis_errors() -> tuple[type[BaseException], ...]:
    """What a command meets when Redis is down or refuses the connection (redis-py's and the OS's)."""
    from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: PLC0415
    from redis.exceptions import TimeoutError as RedisTimeoutError  # noqa: PLC0415

    return (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


def _reported(fn: Callable[..., T]) -> Callable[..., T]:
    """A command whose SupervisorError, or unreachable Redis, becomes a message and an exit code."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except SupervisorError as exc:
            _fail(exc)
            raise  # unreachable
        except Exception as exc:
            if not isinstance(exc, _redis_errors()):
                raise
            err_console.print(f"[bold red]error[/] (redis_unavailable): Redis is unreachable ({escape(str(exc))}); "
                              "start it, or point REDIS_URL at a running server", highlight=False, markup=True)
            sys.exit(errors.EXIT_FAILURE)

    return wrapper


def _async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """An `async def` command, run by asyncio (`_reported`)."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import asyncio  # noqa: PLC0415

        return asyncio.run(fn(*args, **kwargs))

    return _reported(wrapper)


def _read(url: str, read: Callable[[Any], Coroutine[Any, Any, T]], *, connect_timeout_s: float = 5.0,
          timeout_s: float = 30.0) -> T:
    """Run a read model (`read(redis)`, e.g. `supervisor.admin.health`) against Redis at `url`.

    Over a blocking `SyncWire` (`supervisor.reads`) for redis:// and unix:// URLs: a quick
    command then loads neither redis-py nor an event loop. Over redis-py's asyncio client for
    what the wire cannot speak (rediss://, redis-py's URL options).
    """
    from supervisor.wire import WireParams  # noqa: PLC0415

    params = WireParams.from_url(url, connect_timeout_s, timeout_s)
    if params is not None:
        from supervisor.reads import SyncReads, run_blocking  # noqa: PLC0415

        reads = SyncReads(params)
        try:
            return run_blocking(read(reads))
        finally:
            reads.wire.close()
    import asyncio  # noqa: PLC0415

    from supervisor.broker import connect  # noqa: PLC0415

    async def over_redis_py() -> T:
        redis = connect(url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s)
        try:
            return await read(redis)
        finally:
            await redis.aclose()

    return asyncio.run(over_redis_py())


def _waited_exit(job: Any) -> int:
    """The exit code of a command that waited for a job to finish (`enqueue --wait`, `jobs wait`)."""
    return errors.EXIT_OK if job.state.value == "completed" else errors.EXIT_FAILURE


# --- tables: a rich table on a terminal, TSV anywhere else -------------------------------

Cell = str | list[str] | None  # a list: one item per line on a terminal, comma-separated in TSV
_WIDE = "job_supervisor.wide"  # click Context.meta key (meta is shared by every context of a run)


def _remember_wide(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_WIDE] = True


#: Added to every command that prints a table.
wide_option = click.option(
    "--wide", is_flag=True, expose_value=False, callback=_remember_wide,
    help="On a terminal, never cut a value (long ones fold). Piped output is always whole values (TSV).")


def _tsv(value: str) -> str:
    # The escapes of PostgreSQL's COPY text format, so every row stays one line of N fields.
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def print_table(columns: list[tuple[str, bool] | tuple[str, bool, int]], rows: list[list[Cell]], *,
                title: str | None = None, keyvalue: bool = False, stderr: bool = False) -> None:
    """Print a table: the one way every command prints one.

    On a terminal, a rich table: columns marked True (ids, names) stay on one line when they fit
    the terminal (else they fold too: rich would cut them), the rest fold, and a column's optional
    limit shortens long text (`…`); with `--wide` nothing is shortened. Nothing is cut. Anywhere
    else (a pipe, a file), TSV a program can read: a header line, then one line per row with
    full values; tab, newline, carriage return and backslash are written as \\t \\n \\r \\\\.
    A titled table follows another one: in TSV it starts after an empty line.

    Args:
        columns: (name, one line) or (name, one line, limit on a terminal).
        rows: one cell per column: a string, a list of strings (one per line) or None.
        keyvalue: a two-column field/value listing (no box and no header on a terminal).
        stderr: print to stderr instead of stdout.
    """
    if not (sys.stderr if stderr else sys.stdout).isatty():
        lines = [] if title is None else [""]
        lines += ["\t".join(_tsv(str(c[0])) for c in columns)]
        lines += ["\t".join(_tsv(",".join(v) if isinstance(v, list) else v or "") for v in row) for row in rows]
        click.echo("\n".join(lines), err=stderr)
        return
    from rich import box  # noqa: PLC0415 (a terminal only: piped output is TSV)
    from rich.table import Table  # noqa: PLC0415

    out = err_console if stderr else console
    ctx = click.get_current_context(silent=True)
    wide = bool(ctx and ctx.meta.get(_WIDE))
    limits = [None if wide or not limit else limit[0] for _name, _keep, *limit in columns]
    texts = [[v if n is None or len(v) <= n else v[:n - 1] + "…"
              for v, n in zip(("\n".join(c) if isinstance(c, list) else c or "" for c in row), limits, strict=True)]
             for row in rows]
    # Whole one-line ids and names, plus 4 cells of every other column, 3 per column of padding and rule.
    one_line = sum(max(cell_len(t) for t in [str(c[0]), *(r[i] for r in texts)]) if c[1] else 4
                   for i, c in enumerate(columns)) + 3 * len(columns) + 1 <= out.width
    table = Table(title=title, show_header=not keyvalue, box=None if keyvalue else box.HEAVY_HEAD)
    for i, (name, keep, *_limit) in enumerate(columns):
        table.add_column(name, no_wrap=keep and one_line, overflow="fold",
                         style="bold" if keyvalue and i == 0 else None)
    for cells in texts:
        table.add_row(*cells)
    out.print(table)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="TOML settings file (default: config/job-supervisor.toml when present).")
@click.version_option(package_name="job-supervisor")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """job-supervisor: run and inspect background jobs on Redis."""
    ctx.obj = {"config": config}


# --- run ---------------------------------------------------------------------------------


@main.command()
@click.option("--jobs-dir", type=click.Path(path_type=Path), default=None, help="Python handlers folder.")
@click.option("--tasks-dir", type=click.Path(path_type=Path), default=None, help="Polyglot tasks folder.")
@click.option("--config", "config", type=click.Path(path_type=Path), default=None, help="TOML settings file.")
@click.pass_context
def run(ctx: click.Context, jobs_dir: Path | None, tasks_dir: Path | None, config: Path | None) -> None:
    """Run the daemon until SIGTERM/SIGINT (graceful drain; a second signal stops fast)."""
    from supervisor import log  # noqa: PLC0415
    from supervisor.app import run_daemon  # noqa: PLC0415

    if config is not None:
        ctx.find_root().obj["config"] = config
    try:
        settings = _settings(ctx, jobs_dir=jobs_dir, tasks_dir=tasks_dir)
    except ConfigError as exc:
        _fail(exc)
        return
    log.configure(settings.log_level, settings.log_format)
    import asyncio  # noqa: PLC0415

    try:
        code = asyncio.run(run_daemon(settings, lambda: _settings(ctx, jobs_dir=jobs_dir, tasks_dir=tasks_dir)))
    except SupervisorError as exc:
        _fail(exc)
        return
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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- enqueue -----------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.argument("payload", default="{}")
@click.option("--wait", "wait", is_flag=True, help="Wait for the job to finish and print its record.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--delay", type=float, default=None, help="Seconds before it may run.")
@click.option("--priority", type=int, default=None, help="Higher runs first.")
@click.option("--idempotency-key", default=None, help="A second enqueue with this key returns the first job.")
@click.option("--deadline", type=float, default=None, help="Seconds from now after which it expires.")
@click.option("--allow-unknown", is_flag=True, help="Queue even if no running instance serves NAME.")
@click.option("--concurrency-key", default=None, help="Key for keyed concurrency (default: from the type's policy).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@wide_option
@click.pass_context
@_reported
def enqueue(ctx: click.Context, name: str, payload: str, wait: bool, timeout: float | None,
            delay: float | None, priority: int | None, idempotency_key: str | None,
            deadline: float | None, allow_unknown: bool, concurrency_key: str | None, as_json: bool) -> None:
    """Queue a job of type NAME with a JSON PAYLOAD."""
    # SyncClient: the enqueue goes over its blocking wire; its event loop (and redis-py) only
    # start for --wait
    from supervisor.client import SyncClient  # noqa: PLC0415

    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise errors.InvalidPayload(name, f"PAYLOAD is not JSON ({exc}); quote it, e.g. '{{\"a\": 1}}'") from None
    settings = _settings(ctx)
    with SyncClient(_redis_url(settings), allow_unknown=allow_unknown) as client:
        ref = client.enqueue(name, data, delay=delay, priority=priority, idempotency_key=idempotency_key,
                             deadline=deadline, concurrency_key=concurrency_key)
        if not wait:
            if as_json:
                _print_json({"id": ref.id, "name": ref.name, "existing": ref.existing})
            else:
                console.print(f"{'existing' if ref.existing else 'queued'} {ref.id}", highlight=False)
            return
        if as_json:
            job = client.wait(ref.id, timeout)
        else:
            with console.status(f"waiting for {ref.id} ({name})"):
                job = client.wait(ref.id, timeout)
    _show_job(job, as_json)
    sys.exit(_waited_exit(job))


# --- jobs --------------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """Inspect and steer jobs."""


@jobs.command("get")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@_reported
def jobs_get(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job: state, payload, result or error, and every attempt."""
    from supervisor.broker import read_job  # noqa: PLC0415 (a read: no need for the producer Client)

    _show_job(_read(_redis_url(_settings(ctx)), lambda redis: read_job(redis, job_id)), as_json)


class _Since(click.ParamType):
    """`--since`: an age back from now (90s, 10m, 2h, 7d) or an ISO-8601 time (naive = UTC)."""

    name = "WHEN"
    _UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from datetime import UTC, datetime, timedelta  # noqa: PLC0415

        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        number, unit = text[:-1], text[-1:].lower()
        if unit in self._UNITS and number.replace(".", "", 1).isdigit():
            return datetime.now(UTC) - timedelta(seconds=float(number) * self._UNITS[unit])
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is neither an age (90s, 10m, 2h, 7d) nor an ISO time (2025-01-31T08:00:00Z)",
                      param, ctx)
        return at if at.tzinfo else at.replace(tzinfo=UTC)


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in __import__("supervisor.states").states.State]),
              default=None)
@click.option("--type", "type_", default=None, help="Job type name.")
@click.option("--key", default=None, help="Only jobs with this concurrency key.")
@click.option("--since", type=_Since(), default=None,
              help="Only jobs created since WHEN: an age (90s, 10m, 2h, 7d) or an ISO time (naive = UTC).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Jobs per page.")
@click.option("--cursor", default=None, help="The next page: the cursor the previous page printed.")
@click.option("--json", "as_json", is_flag=True, help='{"jobs": [...], "next_cursor": ...} (null on the last page).')
@wide_option
@click.pass_context
@_async
async def jobs_list(ctx: click.Context, state: str | None, type_: str | None, key: str | None, since: Any,
                    limit: int, cursor: str | None, as_json: bool) -> None:
    """List jobs, newest first, one page at a time (the next page's cursor goes to stderr)."""
    from supervisor.admin import list_jobs  # noqa: PLC0415
    from supervisor.broker import Broker, connect  # noqa: PLC0415
    from supervisor.states import State  # noqa: PLC0415

    broker = Broker(connect(_redis_url(_settings(ctx))))
    try:
        found, next_cursor = await list_jobs(broker, name=type_, state=State(state) if state else None, key=key,
                                             since=since, limit=limit, cursor=cursor)
    except ValueError:
        raise click.BadParameter("not a cursor printed by `jobs list` (or next_cursor from the API)",
                                 param_hint="'--cursor'") from None
    finally:
        await broker.close()
    if as_json:
        _print_json({"jobs": [j.to_dict() for j in found], "next_cursor": next_cursor})
        return
    print_table([("id", True), ("type", True), ("state", True), ("key", False, 24), ("deliveries", True),
                 ("created", False), ("error", False, 60)],
                [[j.id, j.name, j.state.value, j.concurrency_key, str(j.deliveries),
                  j.created.isoformat(timespec="seconds") if j.created else "", j.error] for j in found])
    if next_cursor:
        err_console.print(f"more: --cursor {next_cursor}", highlight=False, markup=False)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return ""


def _job_action(action: str, help_text: str) -> None:
    @jobs.command(action, help=help_text)
    @click.argument("job_id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @_async
    async def command(ctx: click.Context, job_id: str, as_json: bool) -> None:
        from supervisor.client import Client  # noqa: PLC0415

        async with Client(_redis_url(_settings(ctx))) as client:
            # recorded in the job's history: from the CLI, by the local user who ran it
            result = await getattr(client, action)(job_id, source="cli", by=_local_user())
            job = await client.get(job_id)
        if as_json:
            _print_json({"id": job_id, "action": action, "result": result, "state": job.state.value})
        else:
            console.print(f"{action}: {job_id} is now {job.state.value}"
                          + (" (cancellation requested; the handler is told)" if result == "requested" else ""))


_job_action("cancel", "Cancel a job (pending/retry at once; active cooperatively).")
_job_action("retry", "Move a failed job back to pending.")
_job_action("replay", "Move a dead job back to pending.")
_job_action("dismiss", "Give up on a dead job (dismissed).")


@jobs.command("logs")
@click.argument("job_id")
@click.option("--last", type=int, default=200, show_default=True, help="How many of the newest lines.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_async
async def jobs_logs(ctx: click.Context, job_id: str, last: int, as_json: bool) -> None:
    """Print a job's output lines (a task's stdout and stderr), oldest first."""
    from supervisor.client import Client  # noqa: PLC0415

    async with Client(_redis_url(_settings(ctx))) as client:
        await client.get(job_id)  # JobNotFound for an unknown id
        lines = await client.logs(job_id, last)
    if as_json:
        _print_json(lines)
    else:
        for line in lines:
            click.echo(line)


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@_async
async def jobs_wait(ctx: click.Context, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job finishes and show it; exit 0 only when it completed (as `enqueue --wait`)."""
    from supervisor.client import Client  # noqa: PLC0415

    async with Client(_redis_url(_settings(ctx))) as client:
        if as_json:
            job = await client.wait(job_id, timeout)
        else:
            with console.status(f"waiting for {job_id}"):
                job = await client.wait(job_id, timeout)
    _show_job(job, as_json)
    sys.exit(_waited_exit(job))


def _show_job(job: Any, as_json: bool) -> None:
    if as_json:
        _print_json(job.to_dict())
        return
    rows: list[list[Cell]] = [
        ["id", job.id], ["type", job.name], ["state", job.state.value], ["deliveries", str(job.deliveries)],
        ["created", str(job.created)], ["finished", str(job.finished or "")],
        ["payload", json.dumps(job.payload)], ["result", json.dumps(job.result) if job.result is not None else ""],
        ["error", job.error], ["progress", json.dumps(job.progress) if job.progress else ""],
        ["request id", job.context.get("request_id")], ["trace id", job.context.get("trace_id")]]
    print_table([("field", True), ("value", False)], rows, keyvalue=True)
    if job.attempts:
        print_table([("attempt", True), ("started", False), ("ended", False), ("outcome", True),
                     ("instance", False), ("error", False, 80)],
                    [[str(a.attempt), str(a.started or ""), str(a.ended or ""), a.outcome, a.instance, a.error]
                     for a in job.attempts], title="attempts")
    if job.actions:
        print_table([("action", True), ("at", False), ("source", True), ("by", False)],
                    [[act.action, str(act.at or ""), act.source, act.by] for act in job.actions],
                    title="operator actions")
    if job.attempts:
        last = next((a for a in reversed(job.attempts) if a.traceback), None)
        if last is not None:  # the newest failure's stack trace, as Python (or the task's stderr) wrote it
            console.print()  # a section of its own: in a pipe, the TSV tables above end at the empty line
            console.print(Text(f"stack trace (attempt {last.attempt}):", style="bold"))
            console.print(Text(last.traceback), soft_wrap=True, highlight=False)


# --- types, config, systemd --------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@_async
async def types(ctx: click.Context, as_json: bool) -> None:
    """Job types published by instances: whether a live one serves each (and which one last did,
    when), runtime, queue counts and source file. Times are UTC."""
    from supervisor.admin import type_rows  # noqa: PLC0415
    from supervisor.broker import Broker, connect  # noqa: PLC0415
    from supervisor.presence import list_workers  # noqa: PLC0415

    broker = Broker(connect(_redis_url(_settings(ctx))))
    try:
        rows = await type_rows(broker)
        errors = {(w["instance"], path): error for w in await list_workers(broker.redis)
                  for path, error in (w.get("load_errors") or {}).items()}
    finally:
        await broker.close()
    if as_json:
        _print_json({"types": rows, "load_errors": [{"instance": i, "path": p, "error": e}
                                                     for (i, p), e in sorted(errors.items())]})
        return
    print_table([("type", True), ("served", True), ("last served (UTC)", True), ("runtime", True),
                 ("ready", True), ("scheduled", True), ("active", True), ("dead", True), ("source", False)],
                [[r["name"], "yes" if r["served"] else "NO", _utc(r["last_served"]["at"]) if r["last_served"] else "never",
                  str(r["policy"].get("runtime")), str(r["counts"]["ready"]), str(r["counts"]["sched"]),
                  str(r["counts"]["active"]), str(r["counts"]["dead"]), str(r["source"])] for r in rows])
    if errors:
        err_console.print("Files that failed to load (the last good version, if any, keeps serving):")
        print_table([("file", False), ("instance", True), ("error", False)],
                    [[path, instance, error] for (instance, path), error in sorted(errors.items())], stderr=True)


def _utc(iso: str) -> str:
    """An ISO-8601 UTC time as `YYYY-MM-DD HH:MM:SS`, for a column headed (UTC)."""
    return iso[:19].replace("T", " ")


@main.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@_async
async def keys(ctx: click.Context, type_name: str, key: str, as_json: bool) -> None:
    """Status of one concurrency KEY of TYPE: active jobs, queue depth, last decision, stale takeovers."""
    from supervisor.client import Client  # noqa: PLC0415

    async with Client(_redis_url(_settings(ctx))) as client:
        status = await client.key_status(type_name, key)
    if as_json:
        _print_json(status)
        return
    print_table([("field", True), ("value", False)],
                [[field, str(status[field])] for field in ("type", "key", "queued", "waiting_for_slot",
                                                          "stale_takeovers", "last_decision", "last_reason")])
    print_table([("active job", True), ("instance", True), ("attempt", True), ("running s", True),
                 ("lease expires in s", True)],
                [[a["id"], str(a["instance"]), str(a["attempt"]), str(a["running_s"]), str(a["lease_expires_in_s"])]
                 for a in status["active"]], title="active")


@main.command()
@click.option("--count", type=int, default=3, show_default=True, help="How many next fire times to show.")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@_async
async def schedules(ctx: click.Context, count: int, as_json: bool) -> None:
    """Every published cron schedule: whether it fires, its timezone and source, the last tick it
    really fired and (when firing) its next fire times. Times are UTC, whatever the timezone."""
    from supervisor.admin import schedule_rows  # noqa: PLC0415
    from supervisor.broker import connect  # noqa: PLC0415

    redis = connect(_redis_url(_settings(ctx)))
    try:
        rows = await schedule_rows(redis, count)
    finally:
        await redis.aclose()
    if as_json:
        _print_json(rows)
        return
    print_table([("schedule", True), ("status", True), ("timezone", True), ("last fired (UTC)", True),
                 ("next (UTC)", False), ("source", False)],
                [[r["id"], r["status"], r["timezone"], _utc(r["last_fired"]) if r["last_fired"] else "never",
                  [_utc(t) for t in r["next"]], r["source"]] for r in rows])


@main.group("config")
def config_group() -> None:
    """Settings."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    try:
        values = _settings(ctx).masked()
    except ConfigError as exc:
        _fail(exc)
        return
    if as_json:
        _print_json(values)
        return
    print_table([("setting", True), ("value", False)], [[k, str(v)] for k, v in values.items()])


@main.command("systemd-unit")
@click.option("--user", default=None, help="User= for the unit (default: the shipped job-supervisor).")
@click.pass_context
def systemd_unit(ctx: click.Context, user: str | None) -> None:
    """Print a systemd unit for this installation (redirect it to /etc/systemd/system/)."""
    import shutil  # noqa: PLC0415

    from supervisor.systemd_unit import (  # noqa: PLC0415
        default_exec_start,
        paths_hidden_by_protect_home,
        render_unit,
    )

    try:
        settings = _settings(ctx)
    except ConfigError as exc:
        _fail(exc)
        return
    binary = shutil.which("job-supervisor") or str(Path(sys.executable).with_name("job-supervisor"))
    root = ctx.find_root().obj or {}
    config = root.get("config")
    # The interpreter (a venv links to it), the venv and the install must stay readable.
    hidden = paths_hidden_by_protect_home(
        sys.base_prefix, sys.prefix, str(Path(sys.executable).resolve().parent), str(Path.cwd()),
        str(Path(settings.jobs_dir).resolve()), str(Path(settings.tasks_dir).resolve()))
    click.echo(render_unit(
        default_exec_start(binary, str(Path(config).resolve()) if config else None),
        working_dir=str(Path.cwd()), state_dir="/var/lib/job-supervisor", user=user, group=user,
        read_only_paths=hidden,
    ), nl=False)


import supervisor.cli_bench  # noqa: E402,F401  (registers bench on `main`)
import supervisor.cli_ops  # noqa: E402,F401  (registers workers, events, health, api on `main`)

if __name__ == "__main__":
    main()

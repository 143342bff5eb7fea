"""The `job-supervisor` group and what every command shares: settings, Redis, errors, exit codes.

The only place exit codes are chosen. Commands live in one module per family
(`jobs`, `job_types`, `ops`, `run`, `config`, `bench`) and are added to `main` in
`supervisor/operators/cli/__init__.py`; they import from here, never the other way round.
Commands other than `run` talk to Redis directly, so they work whether or not a
daemon or the API is running. Built on click (composable command groups, used by
Flask and Celery) with rich for tables and progress.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from supervisor import errors
from supervisor.errors import ConfigError, SupervisorError

if TYPE_CHECKING:  # settings are loaded by a command that runs (`--help` never loads them)
    from supervisor.config import Settings
    from supervisor.engine.broker import Broker

T = TypeVar("T")


class LazyConsole:
    """A rich `Console`, made (and rich imported) when something is first printed through it:
    `job-supervisor run` prints through none, and rich's import is a visible part of its start
    (BENCHMARKS.md)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console  # noqa: PLC0415 (see the class docstring)

            self._console = Console(**self._options)
        return getattr(self._console, name)


console = LazyConsole(markup=False)  # data never goes through rich markup (payloads hold brackets)
err_console = LazyConsole(stderr=True, soft_wrap=True)


def escape(text: str) -> str:
    """`text` with rich markup escaped."""
    from rich.markup import escape as escaped  # noqa: PLC0415 (LazyConsole)

    return escaped(text)


EXIT_BY_CODE = {
    "config_invalid": errors.EXIT_CONFIG, "redis_unsafe": errors.EXIT_CONFIG,
    "embedded_redis_failed": errors.EXIT_CONFIG, "job_not_found": errors.EXIT_NOT_FOUND,
    "workflow_not_found": errors.EXIT_NOT_FOUND, "type_not_found": errors.EXIT_NOT_FOUND,
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="TOML settings file (default: config/job-supervisor.toml when present).")
@click.version_option(package_name="job-supervisor")
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """job-supervisor: run and inspect background jobs on Redis."""
    ctx.obj = {"config": config}


def fail(exc: SupervisorError) -> None:
    """Print `exc` as `error (code): message` and exit with the code's exit status."""
    err_console.print(f"[bold red]error[/] ({exc.code}): {escape(str(exc))}", highlight=False, markup=True)
    sys.exit(EXIT_BY_CODE.get(exc.code, errors.EXIT_FAILURE))


def settings_of(ctx: click.Context, **flags: Any) -> Settings:
    """The settings of this run (`--config`, env, file), loaded when a command needs them."""
    from supervisor.config import load_settings  # noqa: PLC0415

    obj = ctx.find_root().obj or {}
    return load_settings(obj.get("config"), **flags)


def redis_url(settings: Settings) -> str:
    """REDIS_URL, else the embedded Redis of a daemon running here, else a ConfigError saying so."""
    from supervisor.daemon.redis_server import RedisServer, embedded_socket  # noqa: PLC0415

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


@contextlib.asynccontextmanager
async def broker_of(ctx: click.Context) -> AsyncIterator[Broker]:
    """A Broker on this run's Redis (its `redis` for redis-py reads), closed when the block ends."""
    from supervisor.engine.broker import Broker, connect  # noqa: PLC0415

    broker = Broker(connect(redis_url(settings_of(ctx))))
    try:
        yield broker
    finally:
        await broker.close()


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a command meets when Redis is down or refuses the connection (redis-py's and the OS's)."""
    from redis.exceptions import (  # noqa: PLC0415
        ConnectionError as RedisConnectionError,
        TimeoutError as RedisTimeoutError,
    )

    return (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


def reported(fn: Callable[..., T]) -> Callable[..., T]:
    """A command whose SupervisorError, or unreachable Redis, becomes a message and an exit code."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except SupervisorError as exc:
            fail(exc)
            raise  # unreachable
        except Exception as exc:
            if not isinstance(exc, redis_errors()):
                raise
            err_console.print(f"[bold red]error[/] (redis_unavailable): Redis is unreachable ({escape(str(exc))}); "
                              "start it, or point REDIS_URL at a running server", highlight=False, markup=True)
            sys.exit(errors.EXIT_FAILURE)

    return wrapper


def local_user() -> str:
    """Who runs the CLI, for the history of what it does (an operator action's `by`)."""
    import getpass  # noqa: PLC0415

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return ""


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """An `async def` command, run by asyncio (and `reported`)."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import asyncio  # noqa: PLC0415

        return asyncio.run(fn(*args, **kwargs))

    return reported(wrapper)


def read_model(url: str, read: Callable[[Any], Coroutine[Any, Any, T]], *, connect_timeout_s: float = 5.0,
               timeout_s: float = 30.0) -> T:
    """Run a read model (`read(redis)`, e.g. `supervisor.operators.admin.health`) against Redis at `url`.

    Over a blocking `SyncWire` (`supervisor.engine.reads`) for redis:// and unix:// URLs: a quick
    command then loads neither redis-py nor an event loop. Over redis-py's asyncio client for
    what the wire cannot speak (rediss://, redis-py's URL options).
    """
    from supervisor.engine.wire import WireParams  # noqa: PLC0415

    params = WireParams.from_url(url, connect_timeout_s, timeout_s)
    if params is not None:
        from supervisor.engine.reads import SyncReads, run_blocking  # noqa: PLC0415

        reads = SyncReads(params)
        try:
            return run_blocking(read(reads))
        finally:
            reads.wire.close()
    import asyncio  # noqa: PLC0415

    from supervisor.engine.broker import connect  # noqa: PLC0415

    async def over_redis_py() -> T:
        redis = connect(url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s)
        try:
            return await read(redis)
        finally:
            await redis.aclose()

    return asyncio.run(over_redis_py())


def waited_exit(job: Any) -> int:
    """The exit code of a command that waited for a job to finish (`enqueue --wait`, `jobs wait`)."""
    return errors.EXIT_OK if job.state.value == "completed" else errors.EXIT_FAILURE


def print_json(value: Any) -> None:
    """`--json` output: indented, anything not JSON (times) as its str()."""
    click.echo(json.dumps(value, indent=2, default=str))

"""Operator commands: `workers`, `events`, `health` and `api` (the admin HTTP API, standalone).

Like the rest of the CLI they talk to Redis directly, so they work whether or not
a daemon or the API is running (`api` *is* the API).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from typing import Any

import click

from supervisor import errors
from supervisor.errors import ConfigError
from supervisor.operators.cli.app import (
    broker_of,
    console,
    err_console,
    fail,
    print_json,
    read_model,
    redis_errors,
    redis_url,
    run_async,
    settings_of,
)
from supervisor.operators.cli.tables import print_table, wide_option


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, dict, set)):
        return len(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- workers -----------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@wide_option
@click.pass_context
@run_async
async def workers(ctx: click.Context, as_json: bool) -> None:
    """Daemon instances seen in the last hour: alive or stale, their types, in-flight jobs and RSS."""
    from supervisor.daemon.presence import list_workers  # noqa: PLC0415

    async with broker_of(ctx) as broker:
        found = await list_workers(broker.redis)
    if as_json:
        print_json(found)
        return
    rows = []
    for w in found:
        types = w.get("types") or []
        types_text = ", ".join(types) if isinstance(types, list) else str(types)
        if w.get("serve_types") or w.get("exclude_types"):  # a dedicated instance: what it was told to serve
            types_text += f"  (--types {','.join(w.get('serve_types') or ['*'])}" + (
                f" --exclude-types {','.join(w['exclude_types'])})" if w.get("exclude_types") else ")")
        inflight = _count(w.get("in_flight", w.get("inflight")))
        rss = ", ".join(f"{p.get('pid')}: {p.get('rss', 0) / 1_048_576:.1f}" for p in w.get("workers") or [])
        rows.append([str(w.get("instance")), str(w.get("host") or ""), str(w.get("pid") or ""), w["status"],
                     _age(w.get("age_s")), types_text, "" if inflight is None else str(inflight), rss])
    print_table([("instance", True), ("host", True), ("pid", True), ("status", True), ("age", True),
                 ("types", False), ("in flight", True), ("RSS MB (per process)", False)], rows)
    if not found:
        err_console.print("no instance has published presence in the last hour", highlight=False)


# --- events ------------------------------------------------------------------------------


def _event_line(doc: dict[str, Any]) -> str:
    extras = " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in doc.items()
                      if k not in ("type", "event", "job_id", "state", "attempt", "time", "stream_id"))
    line = (f"{doc['time']}  {doc['type']}  {doc['event']:<16} {doc['job_id']}  {doc['state']}"
            f"  attempt={doc['attempt']}")
    return f"{line}  {extras}" if extras else line


@click.command()
@click.option("--type", "types", multiple=True, help="Only this job type (repeatable).")
@click.option("--job", "job_id", default=None, help="Only this job's events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def events(ctx: click.Context, types: tuple[str, ...], job_id: str | None, as_json: bool) -> None:
    """Follow lifecycle events of every job type as they happen (from Redis; Ctrl-C stops)."""
    import asyncio  # noqa: PLC0415

    from supervisor.errors import SupervisorError  # noqa: PLC0415

    try:
        asyncio.run(_follow(ctx, types, job_id, as_json))
    except KeyboardInterrupt:
        pass
    except SupervisorError as exc:
        fail(exc)


async def _follow(ctx: click.Context, types: tuple[str, ...], job_id: str | None, as_json: bool) -> None:
    import asyncio  # noqa: PLC0415

    from supervisor.engine.broker import connect  # noqa: PLC0415
    from supervisor.operators.admin import EventFollower  # noqa: PLC0415

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    redis = connect(redis_url(settings_of(ctx)))
    follower = EventFollower(redis, types=types or None, job_id=job_id, block_ms=2000)
    delay = 0.2
    try:
        while not stop.is_set():
            try:
                async for item in follower.events(stop=stop):
                    delay = 0.2
                    if item is None:
                        continue
                    click.echo(json.dumps(item.doc, separators=(",", ":")) if as_json else _event_line(item.doc))
                return
            except redis_errors() as exc:
                # Keep the position: the follower resumes where it stood, nothing is skipped.
                err_console.print(f"Redis unavailable ({exc}); retrying in {delay:.1f}s", highlight=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)
    finally:
        await redis.aclose()


# --- health ------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Is Redis reachable, how many instances publish presence, is anything stuck?

    Exit 1 when Redis is unreachable, or when jobs are queued for a type no live instance
    serves (its file was removed or fails to load: they would wait forever).
    """
    try:
        settings = settings_of(ctx)
    except ConfigError as exc:
        fail(exc)
        return
    from supervisor.operators.admin import health as admin_health  # noqa: PLC0415

    try:
        report = read_model(redis_url(settings), admin_health, connect_timeout_s=3.0, timeout_s=5.0)
    except Exception as exc:
        if not isinstance(exc, (ConfigError, *redis_errors())):
            raise
        report = {"status": "unavailable", "redis": f"error: {exc}"}  # no Redis to talk to: unset, down, refused
    if as_json:
        print_json(report)
    elif report["status"] in ("ok", "degraded"):
        (console if report["status"] == "ok" else err_console).print(
            f"{report['status']}: Redis answers in {report['redis_ping_ms']} ms; {report['instances']} "
            f"instance(s) alive, {report['instances_stale']} stale", highlight=False, markup=False)
        for problem in report.get("problems") or ():
            err_console.print(f"problem: {problem['message']}", highlight=False, markup=False)
            for error in problem.get("load_errors") or ():
                err_console.print(f"  load error: {error}", highlight=False, markup=False)
    else:
        err_console.print(f"unavailable: {report['redis']}", highlight=False, markup=False)
    if report["status"] != "ok":
        sys.exit(errors.EXIT_FAILURE)


# --- api ---------------------------------------------------------------------------------


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: api_host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: api_port, 8765).")
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the admin HTTP API standalone until SIGTERM/SIGINT.

    The token comes from the api_token setting (env JOB_SUPERVISOR_API_TOKEN), or several named
    ones from api_tokens (env JOB_SUPERVISOR_API_TOKENS='{"alice": "..."}'). Without one
    the API serves loopback addresses only, unauthenticated; any other address is refused (exit 78).
    """
    from supervisor.observability import log  # noqa: PLC0415
    from supervisor.operators.api.server import check_bind  # noqa: PLC0415

    try:
        settings = settings_of(ctx)
        host = str(host or settings.api_host)
        port = int(settings.api_port if port is None else port)
        tokens = settings.api_bearer_tokens()
        check_bind(host, next(iter(tokens.values()), None))
        url = redis_url(settings)
    except ConfigError as exc:
        fail(exc)
        return
    log.configure(settings.log_level, settings.log_format)
    import asyncio  # noqa: PLC0415

    try:
        asyncio.run(_serve_api(settings, url, host, port, tokens))
    except ConfigError as exc:
        fail(exc)


async def _serve_api(settings: Any, url: str, host: str, port: int, tokens: dict[str, str]) -> None:
    import asyncio  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    from supervisor.operators.api.app import create_app  # noqa: PLC0415
    from supervisor.operators.api.server import bind_socket, serve  # noqa: PLC0415

    logger = structlog.get_logger("supervisor.operators.api")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = bind_socket(host, port)
    app = create_app(url, tokens, max_body_bytes=settings.api_max_body_bytes)
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, host, port, stop, sock=sock, started=started))
    bound = sock.getsockname()
    waiter = asyncio.ensure_future(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if started.is_set():
        if not tokens:
            logger.warning("api.no_token", host=host, note="loopback only; set api_token to require a token")
        logger.info("api.listening", host=host, port=bound[1], auth=bool(tokens),
                    url=f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}")
    t0 = time.monotonic()
    await task
    logger.info("api.stopped", uptime_s=round(time.monotonic() - t0, 3))


__all__ = ["api", "events", "health", "workers"]

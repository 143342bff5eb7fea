"""Serve the admin API with uvicorn, programmatically, on the caller's event loop.

`serve()` works standalone (`job-supervisor api`) and inside the daemon
(`start_in_daemon`). Unlike `uvicorn.Server.serve()` as shipped it:

- installs no signal handlers (the daemon owns SIGTERM/SIGINT/SIGHUP; uvicorn's
  would replace them and re-raise the signal after it stops);
- binds the socket itself, so a port in use is a `ConfigError` (exit 78)
  instead of uvicorn's `sys.exit(1)` inside our loop;
- leaves logging alone (`log_config=None`, no access log);
- on `shutdown_event`, ends open SSE streams first, then stops uvicorn, with a
  bounded grace period for requests in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn

from supervisor.errors import ConfigError

log = structlog.get_logger(__name__)
#: ShutdownManager priority of the API in the daemon: after janitor/presence, before Redis (80).
SHUTDOWN_PRIORITY = 70


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Signals belong to whoever owns the loop (the daemon, or the CLI's api command).
        yield


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token (ConfigError, exit 78)."""
    if not token and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the admin API on {host!r} without a token: anyone who can reach that "
            "address could cancel and trigger jobs. Set api_token (env JOB_SUPERVISOR_API_TOKEN), "
            "or bind a loopback address (api_host = \"127.0.0.1\")"
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); ConfigError when it cannot bind."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve the admin API on {host!r}: {exc}. Set api_host to an address "
                          "of this machine") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve the admin API on {host}:{port}: {exc.strerror or exc}. "
                          "Pick another api_port, or stop what listens there") from None
    return sock


async def serve(app: Any, host: str, port: int, shutdown_event: asyncio.Event, *,
                sock: socket.socket | None = None, started: asyncio.Event | None = None,
                graceful_s: int = 5) -> None:
    """Serve `app` on host:port until `shutdown_event` is set.

    Args:
        app: an ASGI app (from `create_app`; its `state.api.closing` ends SSE streams on stop).
        host, port: where to listen (ignored when `sock` is given).
        shutdown_event: set it to stop; open SSE streams end at once, other requests get
            `graceful_s` seconds to finish.
        sock: an already bound listening socket (see `bind_socket`).
        started: set once the server accepts connections.
    """
    sock = sock or bind_socket(host, port)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", proxy_headers=False,
                            server_header=False, timeout_graceful_shutdown=max(1, graceful_s),
                            timeout_keep_alive=5)
    server = _Server(config)
    api_state = getattr(getattr(app, "state", None), "api", None)

    async def watch() -> None:
        while not server.started and not server.should_exit:  # noqa: ASYNC110  (uvicorn offers no event)
            await asyncio.sleep(0.01)
        if started is not None and server.started:
            started.set()
        await shutdown_event.wait()
        if api_state is not None:
            api_state.closing.set()
        server.should_exit = True

    watcher = asyncio.create_task(watch(), name="api-shutdown-watch")
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        sock.close()
        if api_state is not None:
            await api_state.aclose()


@dataclass
class RunningApi:
    """The admin API serving inside a daemon: where it listens, and how to stop it."""

    host: str
    port: int
    task: asyncio.Task[None]
    stop_event: asyncio.Event

    async def stop(self) -> None:
        """End open SSE streams, let other requests finish (bounded), stop listening."""
        self.stop_event.set()
        await self.task


async def start_in_daemon(settings: Any, redis: Any, shutdown: Any = None, registry: Any = None,
                          tracing: Any = None) -> RunningApi | None:
    """Start the admin API inside the daemon when `api_enabled`; register its stop with `shutdown`, if given.

    Binds before returning, so a bad address or a port in use stops the daemon at start
    with a ConfigError (exit 78). Returns the running API (None when it is disabled).

    Args:
        settings: the daemon's Settings (api_enabled, api_host, api_port, api_token, api_max_body_bytes).
        redis: the daemon's `redis.asyncio.Redis` (shared; the API never closes it).
        shutdown: a ShutdownManager to stop the API at priority 70 (before Redis at 80); None: the
            caller stops it (`RunningApi.stop`; the daemon's stop plan does, at that priority).
        registry: the daemon's registry (triggers validate locally).
        tracing: where the spans of triggered enqueues go (`supervisor.observability.telemetry.Tracing`).
    """
    if not settings.api_enabled:
        return None
    from supervisor.operators.api.app import create_app  # noqa: PLC0415

    host = settings.api_host
    port = settings.api_port
    tokens = settings.api_bearer_tokens()
    check_bind(host, next(iter(tokens.values()), None))
    if not tokens:
        log.warning("api.no_token", host=host, note="loopback only; set api_token to require a bearer token")
    app = create_app(redis, tokens, max_body_bytes=settings.api_max_body_bytes,
                     registry=registry, tracing=tracing)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(serve(app, host, port, stop, sock=sock, started=started), name="admin-api")
    waiter = asyncio.ensure_future(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what stopped it
    log.info("api.listening", host=host, port=bound_port, auth=bool(tokens))
    running = RunningApi(host, bound_port, task, stop)
    if shutdown is not None:
        shutdown.register("admin-api", running.stop, priority=SHUTDOWN_PRIORITY, timeout=10)
    return running


def secret_value(value: Any) -> str | None:
    """The plain string of a SecretStr / str setting; None when unset or blank."""
    if value is None:
        return None
    plain = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return plain or None


__all__ = ["SHUTDOWN_PRIORITY", "RunningApi", "bind_socket", "check_bind", "is_loopback", "secret_value", "serve",
           "start_in_daemon"]

"""The composition root: builds every object of a daemon and owns its event loop.

Start: settings -> Redis (given, or a private embedded one) -> safety checks ->
handlers -> publish types -> dispatcher -> READY=1. Stop (SIGTERM/SIGINT): the
ShutdownManager stops fetching, drains in-flight jobs up to `drain_timeout`,
releases the leases of jobs still running, then closes Redis, and stops the
embedded Redis last. A second signal skips the rest of the drain.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from runners.base import Runner
from runners.command import CommandRunner
from runners.inprocess import InProcessRunner
from supervisor.broker import Broker, connect, mask_url
from supervisor.catalog import build_catalog
from supervisor.client import Client
from supervisor.config import Settings
from supervisor.dispatcher import REDIS_DOWN, Dispatcher, InFlight
from supervisor.errors import ConfigError, EmbeddedRedisError
from supervisor.redis_server import RedisServer
from supervisor.registry import Registry
from supervisor.scheduler import Scheduler
from supervisor.sdnotify import Notifier
from supervisor.shutdown import ShutdownManager

log = structlog.get_logger(__name__)
AVAILABLE_RUNTIMES = ("inprocess", "subprocess")


def embedded_socket(state_dir: Path) -> Path:
    return Path(state_dir) / "redis.sock"


def start_embedded(state_dir: Path) -> tuple[str, RedisServer | None]:
    """Start the private Redis in `state_dir`, or reuse the one another instance started there."""
    sock = embedded_socket(state_dir)
    server = RedisServer(Path(state_dir) / "redis", unix_socket=sock, appendonly=True)
    if sock.exists() and server.ping():
        return server.url, None  # someone else's; they stop it
    sock.unlink(missing_ok=True)
    server.start()
    return server.url, server


@dataclass
class Daemon:
    """One running instance: its Redis, handlers, runners, dispatcher and shutdown plan."""

    settings: Settings
    instance_id: str
    broker: Broker
    registry: Registry
    dispatcher: Dispatcher
    client: Client
    runners: dict[str, Runner]
    shutdown: ShutdownManager
    notifier: Notifier
    embedded: RedisServer | None

    async def _child_enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        return await self.client.enqueue(name, payload, **options)


async def _connect_with_retry(url: str, stop: asyncio.Event) -> Broker:
    broker = Broker(connect(url), blocking=connect(url))
    delay = 0.1
    while True:
        try:
            await broker.redis.ping()
            return broker
        except REDIS_DOWN as exc:
            if stop.is_set():
                raise
            log.warning("redis.unavailable", op="connect", url=mask_url(url), error=str(exc), retry_in_s=delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 5.0)


async def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    shutdown = ShutdownManager()
    stop_requested = asyncio.Event()
    signals = {"count": 0}
    fast = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        # Only record the signal; the main coroutine acts on it.
        signals["count"] += 1
        log.info("signal.received", signal=sig.name, count=signals["count"])
        stop_requested.set()
        if signals["count"] > 1:
            fast.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, lambda: log.warning(
        "signal.sighup_ignored", note="reload needs a restart in this version"))

    instance_id = f"{settings.instance_name}:{os.getpid()}:{secrets.token_hex(2)}"
    notifier = Notifier.from_env()
    notifier.status("starting")

    embedded: RedisServer | None = None
    url = settings.redis_url_value()
    if url is None:
        try:
            url, embedded = await asyncio.to_thread(start_embedded, settings.state_dir)
        except EmbeddedRedisError as exc:
            raise ConfigError(f"cannot start the embedded Redis: {exc}") from exc
        log.info("redis.embedded", url=url, owned=embedded is not None, data_dir=str(settings.state_dir))
    try:
        broker = await _connect_with_retry(url, stop_requested)
        for warning in await broker.check_server():
            log.warning("redis.unsafe", warning=warning)
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise

    catalog = build_catalog(settings, instance_id, AVAILABLE_RUNTIMES)
    registry = catalog.registry
    served = list(catalog.served.values())
    for name, meta in catalog.metas.items():
        await broker.publish_type(name, meta)

    client = Client(broker.redis, registry=registry)
    daemon_ref: dict[str, Daemon] = {}

    async def child_enqueue(name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        return await daemon_ref["d"]._child_enqueue(name, payload, options, submit)

    runners: dict[str, Runner] = {
        "inprocess": InProcessRunner(registry.get, child_enqueue, threads=settings.threads),
        "subprocess": CommandRunner(catalog.command_for),
    }
    dispatcher = Dispatcher(broker, instance_id, runners, max_idle_wait=settings.max_idle_wait)
    dispatcher.serve(served)
    daemon = Daemon(settings, instance_id, broker, registry, dispatcher, client, runners, shutdown,
                    notifier, embedded)
    daemon_ref["d"] = daemon
    _register_stops(daemon, fast)

    await dispatcher.start()
    scheduler = Scheduler(client, catalog.schedules)
    scheduler_task = asyncio.create_task(scheduler.run(), name="scheduler")

    async def stop_scheduler() -> None:
        scheduler_task.cancel()
        await asyncio.gather(scheduler_task, return_exceptions=True)

    shutdown.register("scheduler", stop_scheduler, priority=10, timeout=10)
    log.info("daemon.ready", instance=instance_id, types=sorted(t.name for t in served),
             schedules=[sp.id for sp in catalog.schedules],
             load_errors={p: str(e) for p, e in catalog.errors.items()}, redis=mask_url(url))
    notifier.ready(f"consuming {len(served)} job types")
    watchdog = asyncio.create_task(_watchdog(daemon))

    await stop_requested.wait()
    notifier.stopping("draining")
    report = await shutdown.shutdown("signal")
    watchdog.cancel()
    log.info("daemon.stopped", report=report.to_dict())
    return 0


def _register_stops(d: Daemon, fast: asyncio.Event) -> None:
    """The shutdown plan (lower priority stops first)."""
    s = d.settings

    async def drain() -> None:
        inflight = len(d.dispatcher.inflight)
        log.info("shutdown.drain", in_flight=inflight, drain_timeout_s=s.drain_timeout)
        d.notifier.status(f"draining {inflight} jobs")
        drain_task = asyncio.ensure_future(d.dispatcher.drain(s.drain_timeout))
        fast_task = asyncio.ensure_future(fast.wait())
        await asyncio.wait({drain_task, fast_task}, return_when=asyncio.FIRST_COMPLETED)
        fast_task.cancel()
        if not drain_task.done():
            log.warning("shutdown.fast", note="second signal: releasing in-flight jobs now")
            drain_task.cancel()
        still: list[InFlight] = d.dispatcher.inflight
        if still:
            await d.dispatcher.release(still, grace=0.5 if fast.is_set() else 2.0)
        else:
            await d.dispatcher.flush(5.0)
        for f in _finished_report(d, still):
            log.info("shutdown.job", **f)

    async def close_runners() -> None:
        await d.dispatcher.close()
        for runner in d.runners.values():
            await runner.close()

    async def close_redis() -> None:
        await d.broker.close()

    async def stop_embedded() -> None:
        if d.embedded is not None:
            await asyncio.to_thread(d.embedded.stop)

    d.shutdown.register("fetching", d.dispatcher.stop_fetching, priority=10, timeout=10)
    d.shutdown.register("drain", drain, priority=20, timeout=s.drain_timeout + 30)
    d.shutdown.register("runners", close_runners, priority=30, timeout=10)
    d.shutdown.register("redis", close_redis, priority=80, timeout=10)
    d.shutdown.register("embedded-redis", stop_embedded, priority=90, timeout=30)


def _finished_report(d: Daemon, still: list[InFlight]) -> list[dict[str, Any]]:
    return [{"job_id": f.job.id, "job_name": f.job.name, "attempt": f.job.attempt, "outcome": f.outcome}
            for f in still]


async def _watchdog(d: Daemon) -> None:
    """WATCHDOG=1 from the main loop (a wedged loop stops pinging and systemd restarts us)."""
    interval = d.notifier.watchdog_interval_s or 10.0
    while True:
        d.notifier.watchdog()
        d.notifier.status(f"consuming {len(d.dispatcher.lanes)} job types; {len(d.dispatcher.inflight)} in flight")
        await asyncio.sleep(interval)


__all__ = ["embedded_socket", "run_daemon", "start_embedded"]

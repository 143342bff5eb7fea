"""The composition root: builds every object of a daemon and owns its event loop.

Start: settings -> Redis (given, or a private embedded one) -> safety checks ->
handlers -> presence (the types served) -> publish types -> dispatcher -> READY=1. Stop (SIGTERM/SIGINT): the
ShutdownManager stops fetching, drains in-flight jobs, releases the leases of
jobs still running, closes the runners, then closes Redis, and stops the
embedded Redis last. All of that up to the runners' close fits in
`drain_timeout` counted from the signal (`DrainBudget`). A second signal skips
the rest of the drain.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from watchfiles import awatch

from runners.base import Runner
from runners.command import CommandRunner
from runners.inprocess import InProcessRunner
from runners.pool import ProcessPoolRunner
from supervisor.api.server import start_in_daemon
from supervisor.broker import Broker, connect, mask_url
from supervisor.catalog import Catalog, build_catalog, rebuild_catalog
from supervisor.client import Client
from supervisor.config import Settings
from supervisor.dispatcher import REDIS_DOWN, Dispatcher, InFlight
from supervisor.errors import ConfigError, EmbeddedRedisError
from supervisor.redis_server import RedisServer, embedded_socket
from supervisor import __version__
from supervisor.janitor import Janitor
from supervisor.presence import Presence
from supervisor.scheduler import Scheduler
from supervisor.sdnotify import Notifier
from supervisor.shutdown import ShutdownManager
from supervisor import telemetry

log = structlog.get_logger(__name__)
AVAILABLE_RUNTIMES = ("inprocess", "process", "subprocess")


class DrainBudget:
    """The shutdown's clock: `drain_timeout` from the signal, for draining, the release's grace
    and closing the runners alike (what is left after them is Redis's and the exit's).

    Starting it also tells the dispatcher to track the jobs in flight (the `shutdown.job` lines).
    """

    #: At most this long for jobs cancelled by the release to stop cooperatively (fast stop: 0.5 s).
    RELEASE_GRACE_S = 2.0
    #: At most this long kept for closing the runners (pool workers take ~0.1 s to exit).
    CLOSE_S = 0.5

    def __init__(self, drain_timeout: float) -> None:
        self.drain_timeout = drain_timeout
        self.started: float | None = None
        self.on_start: Callable[[], None] | None = None

    def start(self) -> None:
        """Start the clock (a no-op once started): at the signal, or when shutdown starts otherwise."""
        if self.started is None:
            self.started = time.monotonic()
            if self.on_start is not None:
                self.on_start()

    def left(self, keep: float = 0.0) -> float:
        """Seconds left before the deadline, less `keep` (never below zero)."""
        self.start()
        assert self.started is not None
        return max(self.started + self.drain_timeout - keep - time.monotonic(), 0.0)

    @property
    def release_grace(self) -> float:
        return min(self.RELEASE_GRACE_S, self.drain_timeout / 4)

    @property
    def close_s(self) -> float:
        return min(self.CLOSE_S, self.drain_timeout / 4)


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
    dispatcher: Dispatcher
    client: Client
    runners: dict[str, Runner]
    shutdown: ShutdownManager
    notifier: Notifier
    embedded: RedisServer | None
    catalog: Catalog
    scheduler: Scheduler | None = None
    api: Any = None
    presence: Presence | None = None

    async def _child_enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        if submit:
            return await self.client.submit(name, payload, **options)
        return await self.client.enqueue(name, payload, **options)

    async def reload(self, reason: str) -> None:
        """Load handlers, tasks and schedules again and serve the result, without a restart."""
        started = time.monotonic()
        new = rebuild_catalog(self.catalog, self.settings, self.instance_id, AVAILABLE_RUNTIMES)
        for name, meta in new.metas.items():
            if self.catalog.metas.get(name, {}).get("schema") != meta["schema"] or name not in self.catalog.served:
                await self.broker.publish_type(name, meta)
        self.catalog = new
        self.client.registry = new.registry
        added, removed = self.dispatcher.update(new.served.values())
        if self.scheduler is not None:
            self.scheduler.update(new.schedules)
            await self.scheduler.publish()
        if self.presence is not None:  # a removed type stops counting as served now, not at the next beat
            try:
                await self.presence.publish()
            except REDIS_DOWN as exc:
                log.warning("redis.unavailable", op="presence", error=str(exc))
        pool = self.runners.get("process")
        if isinstance(pool, ProcessPoolRunner):
            pool.accept(new.accepted)  # new accepted sources recycle the workers between jobs
            if any(t.runtime == "process" for t in new.served.values()) and not pool.started:
                await pool.start()
        log.info("reload.done", reason=reason, added=added, removed=removed,
                 types=sorted(new.served), schedules=[sp.id for sp in new.schedules],
                 load_errors={p: str(e) for p, e in new.errors.items()},
                 duration_s=round(time.monotonic() - started, 3))


async def _connect_with_retry(url: str, stop: asyncio.Event, block_timeout: float) -> Broker:
    broker = Broker(connect(url), blocking=connect(url, socket_timeout=block_timeout))
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


async def run_daemon(settings: Settings, reload_settings: Callable[[], Settings] | None = None) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code.

    Args:
        settings: validated settings.
        reload_settings: reads the settings again on SIGHUP (None: SIGHUP reloads handlers only).
    """
    loop = asyncio.get_running_loop()
    shutdown = ShutdownManager()
    stop_requested = asyncio.Event()
    signals = {"count": 0}
    fast = asyncio.Event()
    budget = DrainBudget(settings.drain_timeout)

    def on_signal(sig: signal.Signals) -> None:
        # Only record the signal (and its time: the drain's clock starts here); the main coroutine acts on it.
        budget.start()
        signals["count"] += 1
        log.info("signal.received", signal=sig.name, count=signals["count"])
        stop_requested.set()
        if signals["count"] > 1:
            fast.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    reload_requested = asyncio.Event()
    hup = {"pending": False}

    def on_hup() -> None:
        hup["pending"] = True
        reload_requested.set()

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    # Tracing by otel_exporter, /metrics on metrics_port (ConfigError when the otlp extra is missing).
    telemetry.configure(settings)
    shutdown.register("telemetry", telemetry.shutdown, priority=85, timeout=10)  # flush spans, stop /metrics
    # Watch before loading anything, so a file dropped in right after READY is never missed.
    watcher = asyncio.create_task(_watch_files(settings, reload_requested), name="watcher")
    watcher.add_done_callback(_report_crash)
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
        broker = await _connect_with_retry(url, stop_requested, settings.max_idle_wait + 10)
        for warning in await broker.check_server():
            log.warning("redis.unsafe", warning=warning)
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise

    catalog = build_catalog(settings, instance_id, AVAILABLE_RUNTIMES)
    served = list(catalog.served.values())

    client = Client(broker.redis, registry=catalog.registry)
    daemon_ref: dict[str, Daemon] = {}

    async def child_enqueue(name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        return await daemon_ref["d"]._child_enqueue(name, payload, options, submit)

    runners: dict[str, Runner] = {
        "inprocess": InProcessRunner(lambda n: daemon_ref["d"].catalog.registry.get(n), child_enqueue,
                                     threads=settings.threads, cancel_grace_s=settings.cancel_grace),
        "subprocess": CommandRunner(lambda n: daemon_ref["d"].catalog.command_for(n),
                                    lambda n, p: daemon_ref["d"].catalog.payload_error(n, p)),
    }
    pool = ProcessPoolRunner(
        settings.jobs_dir, settings.workers_concurrency, max_jobs_per_worker=settings.max_jobs_per_worker,
        max_worker_rss_mb=settings.max_worker_rss, cancel_grace_s=settings.cancel_grace,
        kill_grace_s=settings.kill_grace, child_enqueue=child_enqueue, log_level=settings.log_level,
        manifest=catalog.accepted)
    runners["process"] = pool
    if any(t.runtime == "process" for t in served):
        await pool.start()  # only when a type asks for it: starting costs ~0.5 s
    dispatcher = Dispatcher(broker, instance_id, runners, max_idle_wait=settings.max_idle_wait)
    dispatcher.serve(served)
    daemon = Daemon(settings, instance_id, broker, dispatcher, client, runners, shutdown,
                    notifier, embedded, catalog)
    daemon_ref["d"] = daemon
    budget.on_start = dispatcher.track_shutdown
    if budget.started is not None:  # signalled while starting
        dispatcher.track_shutdown()
    jobs_report = _register_stops(daemon, fast, budget)
    try:  # None when api_enabled is off; binds before returning, so a bad address is a ConfigError
        daemon.api = await start_in_daemon(settings, broker.redis, shutdown)
    except ConfigError:
        await shutdown.shutdown("admin API failed to start")  # stops the embedded Redis too
        raise

    presence = daemon.presence = Presence(broker.redis, instance_id, lambda: _describe(daemon),
                                          settings.presence_interval, version=__version__)
    try:
        # before the types: a producer that sees a type published sees it served too (presence
        # announces the served types), and `workers` lists this instance by the time of READY=1
        await presence.publish()
    except REDIS_DOWN as exc:
        log.warning("redis.unavailable", op="presence", error=str(exc))
    for name, meta in catalog.metas.items():
        await broker.publish_type(name, meta)
    await dispatcher.start()
    janitor = Janitor(broker, interval_s=settings.janitor_interval, max_finished=settings.max_finished_per_type)
    background = [asyncio.create_task(presence.run(), name="presence"),
                  asyncio.create_task(janitor.run(), name="janitor")]
    if settings.metrics_port is not None or settings.api_enabled:  # only when someone can scrape them
        background.append(asyncio.create_task(telemetry.run_gauges(  # queue_depth, worker_rss_bytes
            broker, pool.workers_info, min(settings.presence_interval, 5.0)), name="metrics"))
    for task in background:
        task.add_done_callback(_report_crash)

    async def stop_background() -> None:
        for task in background:
            await _cancel(task)
        try:
            await presence.withdraw()
        except REDIS_DOWN:
            pass

    shutdown.register("janitor-presence", stop_background, priority=40, timeout=10)
    scheduler = daemon.scheduler = Scheduler(client, catalog.schedules)
    scheduler_task = asyncio.create_task(scheduler.run(), name="scheduler")

    async def stop_scheduler() -> None:
        scheduler_task.cancel()
        await asyncio.gather(scheduler_task, return_exceptions=True)

    shutdown.register("scheduler", stop_scheduler, priority=10, timeout=10)
    log.info("daemon.ready", instance=instance_id, types=sorted(t.name for t in served),
             schedules=[sp.id for sp in catalog.schedules],
             load_errors={p: str(e) for p, e in catalog.errors.items()}, redis=mask_url(url))
    # Start-up objects (modules, handlers, settings, clients) live as long as the daemon: take
    # them out of the collector's sight, so full collections stop re-walking ~100k objects that
    # never die (they cost 25-35 % of the daemon's CPU while draining; BENCHMARKS.md).
    gc.freeze()
    notifier.ready(f"consuming {len(served)} job types")
    watchdog = asyncio.create_task(_watchdog(daemon))
    shutdown.register("watcher", lambda: _cancel(watcher), priority=10, timeout=5)

    while not stop_requested.is_set():
        waiters = {asyncio.ensure_future(stop_requested.wait()), asyncio.ensure_future(reload_requested.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if reload_requested.is_set() and not stop_requested.is_set():
            reload_requested.clear()
            notifier.notify(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1_000_000))
            reason = "files changed"
            if hup["pending"]:
                hup["pending"], reason = False, "SIGHUP"
                _apply_settings(daemon, reload_settings)
            try:
                await daemon.reload(reason)
            except Exception:  # noqa: BLE001 (a reload must never take the daemon down)
                log.exception("reload.failed", reason=reason)
            finally:
                notifier.ready(f"consuming {len(daemon.catalog.served)} job types")

    notifier.stopping("draining")
    report = await shutdown.shutdown("signal")
    watchdog.cancel()
    log.info("daemon.stopped", report={**report.to_dict(), "jobs": jobs_report})
    return 0


def _describe(d: Daemon) -> dict[str, Any]:
    """What presence publishes about this instance right now."""
    now = time.monotonic()
    pool = d.runners.get("process")
    info = pool.workers_info() if isinstance(pool, ProcessPoolRunner) else []
    return {
        "types": sorted(d.catalog.served),
        "in_flight": [{"id": f.job.id, "name": f.job.name, "attempt": f.job.attempt,
                       "age_s": round(now - f.started, 3)} for f in d.dispatcher.inflight],
        "worker_pids": [w["pid"] for w in info if w.get("pid")],
        "load_errors": {p: str(e) for p, e in d.catalog.errors.items()},
        "type_errors": d.catalog.type_errors,  # Presence announces them per type (supervisor.serving)
        "schedules": [s.id for s in d.catalog.schedules],  # what `schedules` shows as firing
    }


def _apply_settings(d: Daemon, reload_settings: Callable[[], Settings] | None) -> None:
    """SIGHUP: read the settings again; folders, defaults and schedules apply at once."""
    if reload_settings is None:
        return
    try:
        new = reload_settings()
    except ConfigError as exc:
        log.error("reload.settings_invalid", error=str(exc), note="keeping the previous settings")
        return
    needs_restart = [k for k in ("redis_url", "state_dir", "workers_concurrency", "threads", "log_format",
                                 "api_enabled", "api_host", "api_port", "api_token", "otel_exporter",
                                 "otel_endpoint", "otel_service_name", "metrics_port")
                     if getattr(new, k) != getattr(d.settings, k)]
    if needs_restart:
        log.warning("reload.needs_restart", settings=needs_restart)
    d.settings = new


def _report_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task.crashed", task=task.get_name(), error=repr(task.exception()))


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _ignore(change: Any, path: str) -> bool:
    name = Path(path).name
    return not (name.startswith(".") or name.endswith(("~", ".swp", ".swx", ".tmp", ".pyc"))
                or "__pycache__" in path)


async def _watch_files(settings: Settings, reload_requested: asyncio.Event) -> None:
    """Hot reload: a change in jobs/ or tasks/ (debounced) asks the main loop for a reload."""
    dirs = [Path(p) for p in (settings.jobs_dir, settings.tasks_dir) if Path(p).is_dir()]
    if not dirs:
        return
    # rust_timeout bounds how long a cancelled watcher takes to let go (SIGTERM waits for it).
    async for changes in awatch(*dirs, watch_filter=_ignore, debounce=300, step=50, recursive=True,
                                rust_timeout=300):
        log.info("files.changed", changes=sorted({p for _, p in changes})[:20])
        reload_requested.set()


def _register_stops(d: Daemon, fast: asyncio.Event, budget: DrainBudget) -> dict[str, int]:
    """The shutdown plan (lower priority stops first). Everything up to the runners' close takes
    its time out of `budget`. Returns the job counts the drain fills in for the final report."""
    s = d.settings
    counts: dict[str, int] = {}

    async def stop_fetching() -> None:
        budget.start()  # not stopped by a signal (the admin API): the clock starts now
        # at least 0.5 s: a claim cut short would start jobs after the release has run
        await _bounded("fetching", d.dispatcher.stop_fetching(), max(budget.left(budget.close_s), 0.5))

    async def drain() -> None:
        inflight = len(d.dispatcher.inflight)
        log.info("shutdown.drain", in_flight=inflight, drain_timeout_s=s.drain_timeout,
                 left_s=round(budget.left(), 3))
        d.notifier.status(f"draining {inflight} jobs")
        keep = budget.release_grace + budget.close_s  # the release's grace and the runners' close
        drain_task = asyncio.ensure_future(d.dispatcher.drain(budget.left(keep), settle_s=0.25))
        fast_task = asyncio.ensure_future(fast.wait())
        await asyncio.wait({drain_task, fast_task}, return_when=asyncio.FIRST_COMPLETED)
        fast_task.cancel()
        if not drain_task.done():
            log.warning("shutdown.fast", note="second signal: releasing in-flight jobs now")
            drain_task.cancel()
        still: list[InFlight] = d.dispatcher.inflight
        settle_s = max(budget.left(budget.close_s), 0.25)
        if still:
            grace = min(0.5 if fast.is_set() else budget.release_grace, budget.left(budget.close_s))
            await d.dispatcher.release(still, grace=grace, settle_s=settle_s)
        else:
            await d.dispatcher.flush(settle_s)
        for f in d.dispatcher.shutdown_jobs or []:  # every job in flight since the signal, once
            counts[f.fate] = counts.get(f.fate, 0) + 1
            log.info("shutdown.job", job_id=f.job.id, job_name=f.job.name, attempt=f.job.attempt,
                     runtime=f.served.runtime, fate=f.fate, outcome=f.outcome)

    async def close_runners() -> None:
        await d.dispatcher.close()
        # Concurrently, in what is left (close_s at least): pool workers still running a job were
        # killed by the release, and any left when we exit see their pipe close and exit too.
        closes = {name: asyncio.ensure_future(runner.close()) for name, runner in d.runners.items()}
        _, pending = await asyncio.wait(closes.values(), timeout=max(budget.left(), 0.1))
        for name, task in closes.items():
            if task in pending:
                log.warning("shutdown.runner_not_closed", runner=name, note="drain_timeout used up")
                task.cancel()

    async def close_redis() -> None:
        await d.broker.close()

    async def stop_embedded() -> None:
        if d.embedded is not None:
            await asyncio.to_thread(d.embedded.stop)

    d.shutdown.register("fetching", stop_fetching, priority=10, timeout=10)
    d.shutdown.register("drain", drain, priority=20, timeout=s.drain_timeout + 30)
    d.shutdown.register("runners", close_runners, priority=30, timeout=10)
    d.shutdown.register("redis", close_redis, priority=80, timeout=10)
    d.shutdown.register("embedded-redis", stop_embedded, priority=90, timeout=30)
    return counts


async def _bounded(what: str, coro: Any, timeout: float) -> None:
    """Await `coro` for up to `timeout` seconds (at least 0.1); past that it is cancelled and logged."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.1))
    if not done:
        log.warning("shutdown.cut_short", step=what, note="drain_timeout used up")
        await _cancel(task)


async def _watchdog(d: Daemon) -> None:
    """WATCHDOG=1 from the main loop (a wedged loop stops pinging and systemd restarts us)."""
    interval = d.notifier.watchdog_interval_s or 10.0
    while True:
        d.notifier.watchdog()
        d.notifier.status(f"consuming {len(d.dispatcher.lanes)} job types; {len(d.dispatcher.inflight)} in flight")
        await asyncio.sleep(interval)


__all__ = ["embedded_socket", "run_daemon", "start_embedded"]

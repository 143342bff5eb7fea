"""The composition root: `Daemon` builds every object of one instance, runs it, reloads it, and
stops it by one plan.

`build()` makes each object from what was made before it (nothing refers to an object made
later): the file watcher first (before any handler is loaded, so no change is missed), Redis
(given, or a private embedded one, started first and stopped last) and its safety checks,
then the catalog (handlers, tasks, schedules), the client, the runners, the dispatcher, and
presence, janitor and scheduler. `run()` starts them: the runners a served type needs, the
admin API, presence (which announces the types served) before the types are published, then
the dispatcher, the background loops and the scheduler; READY=1; reloads on SIGHUP or changed
files until SIGTERM/SIGINT; then the stop plan (`stop_plan()`), which the ShutdownManager runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from runners.base import Runner, lifecycle_hook
from runners.command import CommandRunner, CommandSpec
from runners.inprocess import InProcessRunner
from supervisor import __version__
from supervisor.config import Settings
from supervisor.daemon.catalog import Catalog, build_catalog, rebuild_catalog
from supervisor.daemon.dispatcher import Dispatcher
from supervisor.daemon.janitor import Janitor
from supervisor.daemon.liveness import REDIS_DOWN
from supervisor.daemon.presence import Presence
from supervisor.daemon.redis_server import RedisServer, embedded_server, spawn_unless_running
from supervisor.daemon.releaser import Releaser
from supervisor.daemon.scheduler import Scheduler
from supervisor.daemon.sdnotify import Notifier
from supervisor.daemon.shutdown import ShutdownManager
from supervisor.daemon.stop_plan import (
    DrainBudget,
    StopStep,
    cancel,
    close_runners,
    drain,
    register_plan,
    stop_fetching,
)
from supervisor.daemon.watcher import watch_files
from supervisor.engine.broker import Broker, connect
from supervisor.engine.redis_url import mask_url
from supervisor.engine.topology import watch_failover
from supervisor.errors import ConfigError, EmbeddedRedisError
from supervisor.handler import JobType
from supervisor.observability.metrics import Metrics
from supervisor.observability.run_observer import RunObserver
from supervisor.observability.telemetry import Tracing
from supervisor.producers.client import Client

if TYPE_CHECKING:  # the admin API (FastAPI, uvicorn: a third of the start) is imported when enabled
    from supervisor.operators.api.server import RunningApi

log = structlog.get_logger(__name__)
AVAILABLE_RUNTIMES = ("inprocess", "process", "subprocess")
#: Settings a SIGHUP cannot change in a running daemon (a restart applies them).
RESTART_SETTINGS = ("redis_url", "state_dir", "workers_concurrency", "threads", "log_format", "api_enabled",
                    "api_host", "api_port", "api_token", "otel_exporter", "otel_endpoint", "otel_service_name",
                    "metrics_port")


class LiveCatalog:
    """The catalog being served, swapped whole by a reload: runners look types up through it."""

    __slots__ = ("current",)

    def __init__(self, catalog: Catalog) -> None:
        self.current = catalog

    def handler(self, name: str) -> JobType | None:
        return self.current.registry.get(name)

    def command_for(self, name: str) -> CommandSpec:
        return self.current.command_for(name)

    def payload_error(self, name: str, payload_json: str) -> str | None:
        return self.current.payload_error(name, payload_json)


class Signals:
    """What SIGTERM/SIGINT/SIGHUP ask for. The handlers only record it; the main coroutine acts."""

    def __init__(self, budget: DrainBudget) -> None:
        self.stop = asyncio.Event()
        self.fast = asyncio.Event()  # a second stop signal: skip the rest of the drain
        self.reload = asyncio.Event()
        self.hup = False  # the pending reload was asked by SIGHUP (it reads the settings again)
        self.count = 0
        self._budget = budget

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_stop(self, sig: signal.Signals) -> None:
        self._budget.start()  # the drain's clock starts at the signal
        self.count += 1
        log.info("signal.received", signal=sig.name, count=self.count)
        self.stop.set()
        if self.count > 1:
            self.fast.set()

    def _on_hup(self) -> None:
        self.hup = True
        self.reload.set()


@dataclass(slots=True)
class Parts:
    """What serves the jobs, made by `Daemon.build` in this order."""

    catalog: LiveCatalog
    client: Client
    runners: dict[str, Runner]
    dispatcher: Dispatcher
    presence: Presence
    janitor: Janitor
    scheduler: Scheduler


class Daemon:
    """One instance: builds its objects, runs them until SIGTERM/SIGINT, and stops them by `stop_plan`.

    Args:
        settings: validated settings.
        reload_settings: reads the settings again on SIGHUP (None: SIGHUP reloads handlers only).
        tracing: where spans go (default: by `settings.otel_exporter`).
        metrics: the Prometheus metrics (default: made here, in prometheus_client's registry,
            and taken out of it at stop).
        embedded: the embedded Redis, already spawned for this daemon (`redis_server.spawn_embedded`):
            it is this daemon's to wait for and to stop.
    """

    def __init__(self, settings: Settings, reload_settings: Callable[[], Settings] | None = None, *,
                 tracing: Tracing | None = None, metrics: Metrics | None = None,
                 embedded: RedisServer | None = None) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self.instance_id = f"{settings.instance_name}:{os.getpid()}:{secrets.token_hex(2)}"
        self.shutdown = ShutdownManager()
        self.notifier = Notifier.from_env()
        self.budget = DrainBudget(settings.drain_timeout, on_start=self._track_shutdown)
        self.signals = Signals(self.budget)
        self.jobs_report: dict[str, int] = {}  # the drain's count of job fates, for the final report
        self.tracing = tracing if tracing is not None else Tracing.from_settings(settings)  # ConfigError: no SDK
        url = settings.redis_url_value()
        self._embedded: RedisServer | None = embedded  # no redis_url: a private Redis in state_dir
        if url is None:
            self._embedded = self._embedded or _embedded_server(Path(settings.state_dir))
            url = self._embedded.url
        # we started it (another instance may have): we stop it last; one spawned for us is ours
        self._owns_embedded = embedded is not None
        self.redis_url = url
        self.broker = Broker(connect(self.redis_url),  # connects on first use
                             blocking=connect(self.redis_url, socket_timeout=settings.max_idle_wait + 10))
        self._owns_metrics = metrics is None
        # in prometheus_client's registry when something can scrape it (else prometheus_client is not imported)
        exported = settings.metrics_port is not None or settings.api_enabled
        self.metrics = Metrics(exported=exported) if metrics is None else metrics
        self.parts: Parts | None = None  # by build()
        self.api: RunningApi | None = None  # by run(), when api_enabled
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watch_stop = asyncio.Event()
        self._started_runners: set[str] = set()
        self._runners_started: asyncio.Task[None] | None = None  # by build(), awaited by _start()
        register_plan(self.shutdown, self.stop_plan())

    # --- build -----------------------------------------------------------------------

    async def build(self) -> Parts:
        """Make every object, each from what was made before it (see the module docstring)."""
        self.notifier.status("starting")
        # Watch before loading anything, so a file dropped in right after READY is never missed.
        self._spawn("watcher", watch_files(self.settings, self.signals.reload, self._watch_stop))
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        # the embedded redis-server starts (its own process) while this one loads the handlers
        opening = asyncio.create_task(self._open_redis())
        await asyncio.sleep(0)
        try:
            catalog = LiveCatalog(build_catalog(self.settings, self.instance_id, AVAILABLE_RUNTIMES))
        finally:
            await asyncio.gather(opening, return_exceptions=True)  # a started Redis is known, to be stopped
        opening.result()
        client = Client(self.broker.redis, registry=catalog.current.registry, tracing=self.tracing)
        self.broker.replica_wait_ms = client.broker.replica_wait_ms = int(self.settings.replica_wait * 1000)
        client.broker.replicated = self.broker.replicated  # one set: its child jobs wait as the settles do
        _mark_replicated(self.broker, catalog.current)
        runners = self._make_runners(catalog, client)
        dispatcher = Dispatcher(self.broker, self.instance_id, runners,
                                observer=RunObserver(self.tracing, self.metrics, self.instance_id),
                                max_idle_wait=self.settings.max_idle_wait,
                                settle_window=self.settings.settle_window_ms / 1000)
        dispatcher.serve(catalog.current.served.values())
        if self.budget.started is not None:  # signalled while starting
            dispatcher.track_shutdown()
        s = self.settings
        presence = Presence(self.broker.redis, self.instance_id, self.describe, s.presence_interval,
                            version=__version__, republish=self._publish_types)
        janitor = Janitor(self.broker, interval_s=s.janitor_interval, max_finished=s.max_finished_per_type,
                          instance_id=self.instance_id, identity=presence.identity)
        scheduler = Scheduler(client, catalog.current.schedules, self.metrics)
        self.parts = Parts(catalog, client, runners, dispatcher, presence, janitor, scheduler)
        # the pool's workers start (other processes) while this one publishes and starts the rest
        self._runners_started = asyncio.create_task(self._start_runners(self.parts))
        return self.parts

    async def _open_redis(self) -> None:
        """Start the embedded Redis (unless another instance runs it), wait for Redis, check it."""
        if self._embedded is not None:
            try:
                self._owns_embedded = await asyncio.to_thread(_start_embedded, self._embedded)
            except EmbeddedRedisError as exc:
                raise ConfigError(f"cannot start the embedded Redis: {exc}") from exc
            log.info("redis.embedded", url=self.redis_url, owned=self._owns_embedded,
                     data_dir=str(self.settings.state_dir))
        await _wait_for_redis(self.broker, self.redis_url, self.signals.stop)
        for warning in await self.broker.check_server():
            log.warning("redis.unsafe", warning=warning)

    async def _publish_types(self, names: Iterable[str]) -> None:
        """Publish the metadata of these served types (at start, and again when presence finds
        it gone from Redis)."""
        metas = self.parts.catalog.current.metas if self.parts is not None else {}
        for name in names:
            if name in metas:
                await self.broker.publish_type(name, metas[name])

    def _make_runners(self, catalog: LiveCatalog, client: Client) -> dict[str, Runner]:
        """The runners every daemon has; the pool's is made when needed (`_add_runners`)."""
        s, child_enqueue = self.settings, _child_enqueue(client)
        return {
            "inprocess": InProcessRunner(catalog.handler, child_enqueue, threads=s.threads,
                                         cancel_grace_s=s.cancel_grace),
            "subprocess": CommandRunner(catalog.command_for, catalog.payload_error, child_enqueue=child_enqueue),
        }

    def _add_runners(self, parts: Parts) -> None:
        """The `process` runner, made when a served type first needs it: importing the pool
        (multiprocessing, psutil, the worker's code) costs a daemon without one a sixth of its start."""
        if "process" in parts.runners or all(t.runtime != "process" for t in parts.catalog.current.served.values()):
            return
        from runners.pool import ProcessPoolRunner  # noqa: PLC0415 (see the docstring)

        s = self.settings
        parts.runners["process"] = ProcessPoolRunner(
            s.jobs_dir, s.workers_concurrency, max_jobs_per_worker=s.max_jobs_per_worker,
            max_worker_rss_mb=s.max_worker_rss, cancel_grace_s=s.cancel_grace, kill_grace_s=s.kill_grace,
            child_enqueue=_child_enqueue(parts.client), log_level=s.log_level, manifest=parts.catalog.current.accepted)

    # --- run -------------------------------------------------------------------------

    async def run(self) -> int:
        """Build and start, say READY=1, serve reloads until SIGTERM/SIGINT, then stop by the plan;
        returns the exit code. A start that fails (a bad admin API address, Redis not reached
        before a stop signal, ...) runs the stop plan for what was made, then raises."""
        self.signals.install(asyncio.get_running_loop())
        try:
            parts = await self.build()
            await self._start(parts)
        except BaseException as exc:
            if self._runners_started is not None:  # the stop plan closes a pool that finished starting
                await asyncio.gather(self._runners_started, return_exceptions=True)
            await self.shutdown.shutdown(f"start failed: {type(exc).__name__}")
            raise
        catalog = parts.catalog.current
        log.info("daemon.ready", instance=self.instance_id, types=sorted(catalog.served),
                 schedules=[sp.id for sp in catalog.schedules],
                 load_errors={p: str(e) for p, e in catalog.errors.items()}, redis=mask_url(self.redis_url))
        # Start-up objects (modules, handlers, settings, clients) live as long as the daemon: take
        # them out of the collector's sight, so full collections stop re-walking ~100k objects that
        # never die (they cost 25-35 % of the daemon's CPU while draining; BENCHMARKS.md).
        # `run` switched the collector off for the start: it runs from here on.
        gc.freeze()
        gc.enable()
        self.notifier.ready(f"consuming {len(catalog.served)} job types")
        watchdog = asyncio.create_task(self._watchdog(parts.dispatcher))
        await self._serve_reloads()
        self.notifier.stopping("draining")
        report = await self.shutdown.shutdown("signal")
        watchdog.cancel()
        log.info("daemon.stopped", report={**report.to_dict(), "jobs": self.jobs_report})
        return 0

    async def _start(self, parts: Parts) -> None:
        """Start what serves: runners a type needs, the admin API, presence, the published types,
        the dispatcher, the background loops and the scheduler."""
        # None when api_enabled is off; binds before returning, so a bad address is a ConfigError
        if self.settings.api_enabled:
            from supervisor.operators.api.server import start_in_daemon  # noqa: PLC0415 (see TYPE_CHECKING)

            self.api = await start_in_daemon(self.settings, self.broker.redis, tracing=self.tracing)
        try:
            # before the types: a producer that sees a type published sees it served too (presence
            # announces the served types), and `workers` lists this instance by the time of READY=1
            await parts.presence.publish(check_metadata=False)  # the types are published next
        except REDIS_DOWN as exc:
            log.warning("redis.unavailable", op="presence", error=str(exc))
        await self._publish_types(parts.catalog.current.metas)
        if self._runners_started is not None:  # before a lane claims: every claimed job has its runner
            await self._runners_started
        await parts.dispatcher.start()
        self._spawn("presence", parts.presence.run())
        self._spawn("janitor", parts.janitor.run())
        # release notices of workflows and batches (after the drain too: its last jobs leave some)
        self._spawn("releaser", Releaser(parts.client, janitor_s=self.settings.janitor_interval).run())
        if self.settings.metrics_port is not None or self.settings.api_enabled:  # only when someone can scrape
            self._spawn("metrics", self.metrics.run_gauges(  # queue_depth, worker_rss_bytes
                self.broker, self.workers_info, min(self.settings.presence_interval, 5.0)))
        self._spawn("scheduler", parts.scheduler.run(), report=False)
        self._spawn("failover", watch_failover(self.broker.redis))  # Sentinel only; till Redis closes

    async def _start_runners(self, parts: Parts) -> None:
        """Call the `start` hook of each runner a served type needs, once (the pool: ~0.5 s)."""
        self._add_runners(parts)
        needed = {t.runtime for t in parts.catalog.current.served.values()}
        for kind, runner in parts.runners.items():
            start = lifecycle_hook(runner, "start")
            if start is not None and kind in needed and kind not in self._started_runners:
                self._started_runners.add(kind)
                await start()

    async def _serve_reloads(self) -> None:
        """Reload on SIGHUP or changed files until a stop signal."""
        sig = self.signals
        while not sig.stop.is_set():
            waiters = {asyncio.ensure_future(sig.stop.wait()), asyncio.ensure_future(sig.reload.wait())}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if not sig.reload.is_set() or sig.stop.is_set():
                continue
            sig.reload.clear()
            self.notifier.notify(RELOADING=1, MONOTONIC_USEC=int(time.monotonic() * 1_000_000))
            reason = "files changed"
            if sig.hup:
                sig.hup, reason = False, "SIGHUP"
                self._apply_settings()
            try:
                await self.reload(reason)
            except Exception:  # a reload must never take the daemon down
                log.exception("reload.failed", reason=reason)
            finally:
                served = self.parts.catalog.current.served if self.parts is not None else {}
                self.notifier.ready(f"consuming {len(served)} job types")

    # --- reload ----------------------------------------------------------------------

    async def reload(self, reason: str) -> None:
        """Load handlers, tasks and schedules again and serve the result, without a restart."""
        p = self.parts
        if p is None:
            return
        started = time.monotonic()
        old = p.catalog.current
        new = rebuild_catalog(old, self.settings, self.instance_id, AVAILABLE_RUNTIMES)
        for name, meta in new.metas.items():
            if _published_changed(old.metas.get(name), meta) or name not in old.served:
                await self.broker.publish_type(name, meta)
        p.catalog.current = new
        p.client.registry = new.registry
        self._add_runners(p)  # before a `process` type's lane can claim
        _mark_replicated(self.broker, new)
        added, removed = p.dispatcher.update(new.served.values())
        p.scheduler.update(new.schedules)
        await p.scheduler.publish()
        try:  # a removed type stops counting as served now, not at the next beat
            await p.presence.publish()
        except REDIS_DOWN as exc:
            log.warning("redis.unavailable", op="presence", error=str(exc))
        for runner in p.runners.values():
            accept = lifecycle_hook(runner, "accept")
            if accept is not None:
                accept(new.accepted)  # new accepted sources recycle the pool's workers between jobs
        await self._start_runners(p)
        log.info("reload.done", reason=reason, added=added, removed=removed,
                 types=sorted(new.served), schedules=[sp.id for sp in new.schedules],
                 load_errors={path: str(e) for path, e in new.errors.items()},
                 duration_s=round(time.monotonic() - started, 3))

    def _apply_settings(self) -> None:
        """SIGHUP: read the settings again; folders, defaults and schedules apply at once."""
        if self._reload_settings is None:
            return
        try:
            new = self._reload_settings()
        except ConfigError as exc:
            log.error("reload.settings_invalid", error=str(exc), note="keeping the previous settings")
            return
        needs_restart = [k for k in RESTART_SETTINGS if getattr(new, k) != getattr(self.settings, k)]
        if needs_restart:
            log.warning("reload.needs_restart", settings=needs_restart)
        self.settings = new

    # --- what this instance reports ----------------------------------------------------

    def workers_info(self) -> list[dict[str, Any]]:
        """The worker processes of every runner that has some (the `workers_info` hook)."""
        info: list[dict[str, Any]] = []
        for runner in self.parts.runners.values() if self.parts is not None else ():
            hook = lifecycle_hook(runner, "workers_info")
            if hook is not None:
                info += hook()
        return info

    def describe(self) -> dict[str, Any]:
        """What presence publishes about this instance right now."""
        p = self.parts
        if p is None:
            return {}
        now, catalog = time.monotonic(), p.catalog.current
        return {
            "types": sorted(catalog.served),
            "serve_types": self.settings.serve_types, "exclude_types": self.settings.exclude_types,
            "in_flight": [{"id": f.job.id, "name": f.job.name, "attempt": f.job.attempt,
                           "age_s": round(now - f.started, 3)} for f in p.dispatcher.inflight],
            "worker_pids": [w["pid"] for w in self.workers_info() if w.get("pid")],
            "load_errors": {path: str(e) for path, e in catalog.errors.items()},
            "type_errors": catalog.type_errors,  # Presence announces them per type (supervisor.engine.serving)
            "schedules": [s.id for s in catalog.schedules],  # what `schedules` shows as firing
        }

    async def _watchdog(self, dispatcher: Dispatcher) -> None:
        """WATCHDOG=1 from the main loop (a wedged loop stops pinging and systemd restarts us)."""
        interval = self.notifier.watchdog_interval_s or 10.0
        while True:
            self.notifier.watchdog()
            self.notifier.status(f"consuming {len(dispatcher.lanes)} job types; "
                                 f"{len(dispatcher.inflight)} in flight")
            await asyncio.sleep(interval)

    # --- stop ------------------------------------------------------------------------

    def stop_plan(self) -> list[StopStep]:
        """The one stop order: lower priority first, equal priorities in this order. The steps
        up to the runners' close take their time out of the `DrainBudget` (`drain_timeout` from
        the signal); a step whose object was never made (a failed start) does nothing."""
        api = []
        if self.settings.api_enabled:  # (api_enabled needs a restart)
            from supervisor.operators.api.server import SHUTDOWN_PRIORITY  # noqa: PLC0415 (see TYPE_CHECKING)

            api = [StopStep("admin-api", SHUTDOWN_PRIORITY, 10, self._stop_api)]
        return [
            StopStep("fetching", 10, 10, self._stop_fetching),  # claim nothing more
            StopStep("scheduler", 10, 10, lambda: self._stop_tasks("scheduler")),
            StopStep("watcher", 10, 5, self._stop_watcher),
            StopStep("drain", 20, self.settings.drain_timeout + 30, self._drain),  # then release
            StopStep("runners", 30, 10, self._close_runners),
            StopStep("janitor-presence", 40, 10, self._stop_background),
            *api,
            StopStep("redis", 80, 10, self.broker.close),  # after the runs: heartbeats outlive them
            StopStep("telemetry", 85, 10, self._stop_telemetry),  # flush spans, stop /metrics
            StopStep("embedded-redis", 90, 30, self._stop_embedded),  # last: everything above uses it
        ]

    def _track_shutdown(self) -> None:
        if self.parts is not None:
            self.parts.dispatcher.track_shutdown()

    async def _stop_fetching(self) -> None:
        if self.parts is not None:
            await stop_fetching(self.parts.dispatcher, self.budget)

    async def _drain(self) -> None:
        if self.parts is not None:
            await drain(self.parts.dispatcher, self.budget, self.signals.fast, self.notifier, self.jobs_report)

    async def _close_runners(self) -> None:
        if self.parts is not None:
            await close_runners(self.parts.dispatcher, self.parts.runners, self.budget)

    async def _stop_watcher(self) -> None:
        self._watch_stop.set()  # its thread lets go within a step; then the task ends
        await self._stop_tasks("watcher")

    async def _stop_tasks(self, *names: str) -> None:
        for name in names:
            await cancel(self._tasks.pop(name, None))

    async def _stop_background(self) -> None:
        published = "presence" in self._tasks
        await self._stop_tasks("presence", "janitor", "releaser", "metrics", "failover")
        if published and self.parts is not None:
            try:
                await self.parts.presence.withdraw()
            except REDIS_DOWN:
                pass

    async def _stop_api(self) -> None:
        if self.api is not None:
            await self.api.stop()

    async def _stop_telemetry(self) -> None:
        await self.tracing.shutdown()
        self.metrics.stop_serving()
        if self._owns_metrics:
            self.metrics.unregister()

    async def _stop_embedded(self) -> None:
        if self._embedded is not None and self._owns_embedded:
            await asyncio.to_thread(self._embedded.stop)

    def _spawn(self, name: str, coro: Any, *, report: bool = True) -> None:
        task = self._tasks[name] = asyncio.create_task(coro, name=name)
        if report:
            task.add_done_callback(_report_crash)


def _mark_replicated(broker: Broker, catalog: Catalog) -> None:
    """The served types of `durability = "replicated"` wait for a replica (`Broker.replicated`)."""
    broker.replicated.clear()
    broker.replicated.update(name for name, t in catalog.served.items() if t.policy.durability == "replicated")


def _child_enqueue(client: Client) -> Callable[[str, Any, dict[str, Any], bool], Awaitable[Any]]:
    """A handler's ctx.enqueue / ctx.submit, as the runners call it: through the daemon's own client."""

    async def child_enqueue(name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        if submit:
            return await client.submit(name, payload, **options)
        return await client.enqueue(name, payload, **options)

    return child_enqueue


def _embedded_server(state_dir: Path) -> RedisServer:
    try:
        return embedded_server(state_dir)
    except EmbeddedRedisError as exc:
        raise ConfigError(f"cannot start the embedded Redis: {exc}") from exc


def _start_embedded(server: RedisServer) -> bool:
    """Start the private Redis of `server`, unless another instance runs it already; True when we did."""
    # spawned before this module loaded (supervisor.daemon.app), else now unless another instance runs it
    if server.process is None and not spawn_unless_running(server):
        return False
    server.wait_ready()
    return True


async def _wait_for_redis(broker: Broker, url: str, stop: asyncio.Event) -> None:
    """Until Redis answers PING, retry with backoff (0.1 s doubling to 5 s); a stop signal ends the wait."""
    delay = 0.1
    while True:
        try:
            await broker.redis.ping()
            return
        except REDIS_DOWN as exc:
            if stop.is_set():
                raise
            log.warning("redis.unavailable", op="connect", url=mask_url(url), error=str(exc), retry_in_s=delay)
            gc.enable()  # `run` starts without the collector; a wait of any length collects (each try's cycles)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 5.0)


def _published_changed(old: dict[str, str] | None, new: dict[str, str]) -> bool:
    """Whether a reload must publish the type again: its schema, policy, source or retention
    changed (a sidecar's new deadline or rate limit reaches producers without a restart)."""
    if old is None:
        return True
    return any(old.get(k) != v for k, v in new.items() if k != "updated_ms")


def _report_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task.crashed", task=task.get_name(), error=repr(task.exception()))


__all__ = ["AVAILABLE_RUNTIMES", "RESTART_SETTINGS", "Daemon", "LiveCatalog", "Parts", "Signals"]

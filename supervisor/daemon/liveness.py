"""The dispatcher's liveness loops: heartbeats and cancel requests.

The heartbeat loop renews the leases of the jobs in flight in one script call per type (with
their progress and the log lines they wrote since), and hears of cancels and lost leases in its
reply. The cancel loop holds this instance's pub/sub subscription to its cancel channel, so a
cancel reaches a running job at once. `Liveness` is a base class of `Dispatcher`: its methods
read the dispatcher's lanes and events directly (no extra call per job).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from supervisor.daemon.lanes import InFlight, Lane
from supervisor.engine import keys
from supervisor.engine.broker import Broker

log = structlog.get_logger("supervisor.daemon.dispatcher")  # one logger name for the dispatcher's events
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class Liveness:
    """Heartbeats and cancel requests of the dispatcher's jobs in flight (a base of `Dispatcher`)."""

    broker: Broker
    instance_id: str
    lanes: dict[str, Lane]
    _beat_now: asyncio.Event
    _full_beat: bool
    _early_cancels: dict[str, float]

    @property
    def inflight(self) -> list[InFlight]:
        return [f for lane in self.lanes.values() for f in lane.inflight.values()]

    async def _redis_down(self, op: str, name: str, exc: BaseException, backoff: float) -> float:
        log.warning("redis.unavailable", op=op, job_type=name, error=str(exc), retry_in_s=round(backoff, 2))
        await asyncio.sleep(backoff)
        return min(backoff * 2, 2.0)

    def beat_soon(self) -> None:
        self._beat_now.set()

    def _beat_interval(self) -> float:
        if not self.lanes:
            return 60.0
        return max(min(lane.served.ack_wait_s for lane in self.lanes.values()) / 3, 0.05)

    async def _flush_running_logs(self) -> None:
        lines: dict[str, list[str]] = {}
        retention: dict[str, float] = {}
        pending = [f for f in self.inflight if f.log_lines]
        for f in pending:
            lines[f.job.id], f.log_lines = f.log_lines, []
            retention[f.job.id] = f.served.retention_s
        if not lines:
            return
        try:
            await self.broker.append_logs(lines, retention)
        except REDIS_DOWN as exc:
            log.warning("redis.unavailable", op="logs", error=str(exc))
            for f in pending:  # keep them for the next flush
                f.log_lines[:0] = lines[f.job.id]

    async def _heartbeat_loop(self) -> None:
        last_full = time.monotonic()
        while True:
            interval = self._beat_interval()
            try:
                await asyncio.wait_for(self._beat_now.wait(), timeout=interval)
            except TimeoutError:
                pass
            self._beat_now.clear()
            full = self._full_beat or time.monotonic() - last_full >= interval * 0.9
            self._full_beat = False
            if full:
                last_full = time.monotonic()
            await self._flush_running_logs()
            for lane in self.lanes.values():
                group = [f for f in lane.inflight.values() if full or f.progress]
                if not group:
                    continue
                items = [(f.job.id, f.job.lease, f.progress or "") for f in group]
                try:
                    statuses = await self.broker.heartbeat(lane.served.name, lane.served.ack_wait_ms, items)
                except REDIS_DOWN as exc:
                    log.warning("redis.unavailable", op="heartbeat", job_type=lane.served.name, error=str(exc))
                    continue
                for f, (_, _, sent), status in zip(group, items, statuses, strict=True):
                    if f.progress == sent:
                        f.progress = None
                    if status == "cancel" and not f.cancel.is_set():
                        log.info("run.cancel_requested", job_id=f.job.id, job_name=f.job.name)
                        f.cancel.set()
                    elif status == "lost" and not f.lease_lost:
                        f.lease_lost = True
                        log.warning("run.lease_lost", job_id=f.job.id, job_name=f.job.name,
                                    note="another instance took the job over; this run's outcome will be refused")
                        f.cancel.set()

    # --- cancel requests -------------------------------------------------------------

    async def _cancel_loop(self) -> None:
        """Listen on this instance's cancel channel and cancel the runs it names.

        Once subscribed (again), one full heartbeat asks Redis about every job in flight, so
        a request published while the subscription was down is not left to the next renewal.
        """
        channel = keys.cancel_channel(self.instance_id)
        backoff = 0.05
        while True:
            pubsub = self.broker.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while (await pubsub.get_message(timeout=30.0) or {}).get("type") != "subscribe":
                    pass  # the server has us on the channel only once it confirms
                self._full_beat = True
                self._beat_now.set()
                backoff = 0.05
                while True:
                    # a timeout, not a block: the read checks the connection's health meanwhile
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                    if msg is not None and msg.get("type") == "message":
                        self._cancel_requested(msg["data"])
            except REDIS_DOWN as exc:
                backoff = await self._redis_down("cancel-subscribe", channel, exc, backoff)
            except Exception as exc:  # noqa: BLE001 (e.g. a foreign message: resubscribe, keep serving)
                log.warning("cancel.subscription_error", channel=channel, error=repr(exc))
                backoff = await self._redis_down("cancel-subscribe", channel, exc, backoff)
            finally:
                await pubsub.aclose()

    def _cancel_requested(self, data: str | bytes) -> None:
        job_id = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        for lane in self.lanes.values():
            f = lane.inflight.get(job_id)
            if f is not None:
                if not f.cancel.is_set():
                    log.info("run.cancel_requested", job_id=job_id, job_name=f.job.name, via="channel")
                    f.cancel.set()
                return
        # Not (yet) ours: its claim's reply may still be on its way (another connection).
        now = time.monotonic()
        if len(self._early_cancels) > 1000:
            self._early_cancels = {k: t for k, t in self._early_cancels.items() if now - t < 60}
        self._early_cancels[job_id[:64]] = now

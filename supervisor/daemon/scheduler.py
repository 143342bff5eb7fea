"""Fires cron schedules: every tick enqueued exactly once, however many instances run.

Every instance runs the same loop. The clock is Redis's (`TIME`), so hosts
whose clocks disagree still compute the same ticks. A tick is enqueued with
the idempotency key `schedule:<id>:<tick>`: whichever instance gets there
first creates the job, the others get the same job back. The last fired tick
of each schedule lives in Redis (under the type's hash tag), so after every
instance was down a missed tick is fired once (`misfire="run-once"`) or
skipped (`"skip"`), and a fresh deployment fires no backlog. The cron
arithmetic (seconds field, aliases, time zones, DST) is `supervisor.daemon.schedule`.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from supervisor.daemon.schedule import ScheduleSpec, due_ticks, latest_tick, seconds_until_next, tick_key
from supervisor.engine import keys
from supervisor.engine.wire import Script
from supervisor.errors import CorruptRecord, SupervisorError
from supervisor.observability.telemetry import span_error
from supervisor.producers.client import Client

if TYPE_CHECKING:
    from supervisor.observability.metrics import Metrics

log = structlog.get_logger(__name__)
SPECS_KEY = f"{keys.PREFIX}:schedules"  # id -> JSON of every published schedule (for `schedules`)

# Move a schedule's last fired tick forward only (two instances may race to record one).
_MARK = Script("""
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if cur == nil or tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return cur
""")


def last_fired_key(job_name: str) -> str:
    """Hash of the last tick each schedule of one job type has dealt with (schedule id -> epoch
    seconds): fired, skipped by its misfire policy, or the baseline of its first start."""
    return keys.queue_prefix(job_name) + "schedules"


def fired_key(job_name: str) -> str:
    """Hash of the last tick each schedule of one job type really enqueued (schedule id -> epoch
    seconds): what `schedules` shows as "last fired"."""
    return keys.queue_prefix(job_name) + "schedules:fired"


def spec_document(spec: ScheduleSpec) -> dict[str, Any]:
    return {"id": spec.id, "job": spec.job, "cron": spec.cron, "timezone": spec.timezone,
            "misfire": spec.misfire, "payload": spec.payload, "source": spec.source}


class Scheduler:
    """The cron loop of one instance."""

    def __init__(self, client: Client, specs: Iterable[ScheduleSpec], metrics: Metrics | None = None) -> None:
        self.client = client
        self.tracing = client.tracing  # a tick's span and its enqueue span go to the same place
        self.metrics = metrics  # counts the ticks fired (None: not counted)
        self.redis = client.broker.redis
        self.specs = list(specs)
        self._transport = client.broker.transport
        self._changed = asyncio.Event()
        self.fired = 0

    def update(self, specs: Iterable[ScheduleSpec]) -> None:
        """Replace the schedules (hot reload); takes effect at once."""
        self.specs = list(specs)
        self._changed.set()

    async def publish(self) -> None:
        if self.specs:
            await self.redis.hset(SPECS_KEY, mapping={s.id: json.dumps(spec_document(s)) for s in self.specs})

    async def _now(self) -> float:
        seconds, micros = await self.redis.time()
        return seconds + micros / 1_000_000

    async def run(self) -> None:
        """Fire due ticks until cancelled; Redis outages are waited out."""
        await self.publish()
        delay = 0.1
        while True:
            try:
                wait = await self.tick()
                delay = 0.1
            except SupervisorError as exc:  # a bad payload or unknown type: reported, loop goes on
                log.error("schedule.error", error=str(exc))
                wait = 1.0
            except (ConnectionError, OSError, Exception) as exc:  # noqa: BLE001 (Redis down: retry)
                log.warning("redis.unavailable", op="schedule", error=str(exc), retry_in_s=delay)
                wait, delay = delay, min(delay * 2, 5.0)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait)
            except TimeoutError:
                pass

    async def tick(self) -> float:
        """Enqueue every due tick once; returns the seconds until the next one."""
        if not self.specs:
            return 3600.0
        now = await self._now()
        async with self.redis.pipeline(transaction=False) as pipe:
            for spec in self.specs:
                pipe.hget(last_fired_key(spec.job), spec.id)
            stored = await pipe.execute(raise_on_error=False)
        for spec, raw in zip(self.specs, stored, strict=True):
            last, writable = _last_fired(spec, raw)
            ticks = due_ticks(spec, last, now)
            for tick in ticks:
                await self._fire(spec, tick)
            baseline = ticks[-1] if ticks else latest_tick(spec, now)
            if writable and baseline is not None and (last is None or baseline > last):
                await self._transport.evalsha(_MARK, [last_fired_key(spec.job)], [spec.id, int(baseline)])
        return max(min(seconds_until_next(spec, now) for spec in self.specs) + 0.002, 0.005)

    async def _fire(self, spec: ScheduleSpec, tick: float) -> None:
        # Shielded: a stop that cancels the loop mid-fire still lets a created tick be counted,
        # logged and marked (otherwise its job exists with no `schedule.fired` line).
        await asyncio.shield(self._fire_tick(spec, tick))

    async def _fire_tick(self, spec: ScheduleSpec, tick: float) -> None:
        # telemetry: a root span `schedule <id>` (the tick's enqueue span is its child; None when off)
        with self.tracing.schedule_span(spec.id, spec.job, tick) as span:
            try:
                ref = await self.client.enqueue(spec.job, spec.effective_payload,
                                                idempotency_key=tick_key(spec, tick))
            except SupervisorError as exc:
                span_error(span, exc)
                log.error("schedule.enqueue_refused", schedule=spec.id, source=spec.source, tick=int(tick),
                          error=str(exc))
                return
            if span is not None:
                span.set_attribute("job.id", ref.id)
                span.set_attribute("job.schedule.duplicate", ref.existing)
        if not ref.existing:
            self.fired += 1
            if self.metrics is not None:
                self.metrics.schedule_fired(spec.id)
            log.info("schedule.fired", schedule=spec.id, job_name=spec.job, tick=int(tick), job_id=ref.id)
        # Marked by whichever instance got the job back: another may have created it first.
        await self._transport.evalsha(_MARK, [fired_key(spec.job)], [spec.id, int(tick)])


def _last_fired(spec: ScheduleSpec, raw: Any) -> tuple[float | None, bool]:
    """The last fired tick as stored (None: never), and whether the hash can take a new one.
    A value job-supervisor did not write is reported and read as never fired: the schedule
    fires no backlog and the next tick overwrites it."""
    if raw is None:
        return None, True
    try:
        if isinstance(raw, Exception):  # WRONGTYPE: the key is not a hash
            raise CorruptRecord(last_fired_key(spec.job), str(raw))
        last = float(raw)
        if not math.isfinite(last):
            raise ValueError(f"{raw!r} is not a time")
        return last, True
    except ValueError as exc:
        err = CorruptRecord(last_fired_key(spec.job), f"field {spec.id!r}: {exc}")
    except CorruptRecord as exc:
        err = exc
    log.warning("record.corrupt", code=err.code, key=err.key, error=err.detail, schedule=spec.id)
    return None, not isinstance(raw, Exception)


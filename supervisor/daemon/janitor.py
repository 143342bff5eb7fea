"""The janitor: periodic housekeeping that is safe when every instance runs it at once.

Each sweep, for every published job type: expires jobs whose deadline passed
(through the `expire` transition script, so the state table still rules),
trims finished records past their retention or beyond `max_finished` per
type, drops index entries whose record is gone, and forgets instances that
stopped heartbeating long ago. Every step is idempotent: two janitors doing
the same work at once just find less to do.

At its start and before each sweep, it ends the leases of instances of this host whose process
is gone (`release_dead`, SPEC §4): a daemon SIGKILLed and restarted by systemd has its jobs
delivered again at once, not after `ack_wait`. Only same-host, same-boot, pid-gone evidence
counts (`supervisor.daemon.presence.process_gone`); an instance elsewhere keeps its leases
until they lapse.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import cast

import structlog

from supervisor.daemon.presence import (
    FORGET_AFTER_S,
    ProcessIdentity,
    dead_instances,
    forget_instance,
    forget_stale,
)
from supervisor.engine import keys
from supervisor.engine.broker import Broker
from supervisor.engine.scripts import DEFAULT_DEAD_RETENTION_MS, DEFAULT_RETENTION_MS
from supervisor.engine.states import FINISHED, PARKED
from supervisor.engine.wire import redis_errors
from supervisor.errors import CorruptRecord, SupervisorError

log = structlog.get_logger(__name__)


@dataclass
class SweepReport:
    expired: int = 0
    trimmed: int = 0
    stale_entries: int = 0
    forgotten_instances: int = 0
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)


class Janitor:
    """Sweeps every `interval_s` (with jitter, so many instances do not sweep in step)."""

    def __init__(self, broker: Broker, *, interval_s: float = 30.0, max_finished: int = 100_000,
                 batch: int = 500, forget_after_s: float = FORGET_AFTER_S, instance_id: str = "",
                 identity: ProcessIdentity | None = None) -> None:
        self.broker = broker
        self.instance_id = instance_id
        self.identity = identity  # None: this instance cannot tell a dead neighbour (no boot id)
        self.forget_after_s = forget_after_s
        self.interval_s = interval_s
        self.max_finished = max_finished
        self.batch = batch

    async def run(self) -> None:
        await self._release_dead()  # at start: a predecessor killed on this host (a systemd restart)
        while True:
            await asyncio.sleep(self.interval_s * random.uniform(0.8, 1.2))  # noqa: S311  (jitter, not crypto)
            await self._release_dead()
            try:
                report = await self.sweep()
            except (ConnectionError, OSError, Exception) as exc:  # noqa: BLE001 (Redis down: next sweep)
                log.warning("janitor.sweep_failed", error=str(exc))
                continue
            if report.expired or report.trimmed or report.stale_entries or report.forgotten_instances:
                log.info("janitor.swept", expired=report.expired, trimmed=report.trimmed,
                         stale_entries=report.stale_entries, forgotten_instances=report.forgotten_instances)

    async def release_dead(self) -> list[str]:
        """End, fenced, the leases of every instance of this host whose process is gone; the
        claims reap them as lapsed leases at once. Returns the ids of the jobs released."""
        if self.identity is None:
            return []
        redis = self.broker.redis
        released: list[str] = []
        for instance, other, types in await dead_instances(redis, self.identity, self.instance_id):
            ids: list[str] = []
            reason = (f"instance {instance} is gone: its process (pid {other.pid} on {other.host}) ended; "
                      f"its lease ended at once (found by {self.instance_id})")
            for name in types:
                try:
                    ids += await self.broker.release_instance(name, instance, reason)
                except (SupervisorError, redis_errors().ResponseError) as exc:  # a key another program wrote
                    log.warning("instance.release_failed", instance=instance, type=name, error=str(exc))
            await forget_instance(redis, instance)
            log.warning("instance.gone", instance=instance, host=other.host, pid=other.pid, released=len(ids),
                        jobs=ids[:20])
            released += ids
        return released

    async def _release_dead(self) -> None:
        try:
            await self.release_dead()
        except (ConnectionError, OSError, Exception) as exc:  # noqa: BLE001 (Redis down: next sweep)
            log.warning("janitor.release_dead_failed", error=str(exc))

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        redis = self.broker.redis
        now_s, now_us = await redis.time()
        now_ms = now_s * 1000 + now_us // 1000
        names = await self.broker.type_names()
        # One round trip tells the types with nothing to sweep (no deadline, no finished job): an
        # idle daemon's sweep sends a few commands, not twenty per type.
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.exists(*(keys.index_key(name, k) for k in ("deadline", *(f"st:{s.value}" for s in FINISHED))))
            busy = await pipe.execute()
        for name, keys_found in zip(names, busy, strict=True):
            counts = report.by_type.setdefault(name, {"expired": 0, "trimmed": 0, "stale": 0})
            if keys_found:
                await self._sweep_type(name, now_ms, counts)
            report.expired += counts["expired"]
            report.trimmed += counts["trimmed"]
            report.stale_entries += counts["stale"]
        report.forgotten_instances = await forget_stale(redis, self.forget_after_s)
        return report

    async def _sweep_type(self, name: str, now_ms: int, counts: dict[str, int]) -> None:
        """One type's share of a sweep (see the module docstring)."""
        redis = self.broker.redis
        due = cast(list[str], await redis.zrangebyscore(keys.index_key(name, "deadline"), "-inf", now_ms,
                                                        start=0, num=self.batch))
        for job_id in due:
            try:
                result = await self.broker.expire(job_id)
            except SupervisorError:
                result = "gone"
            if result == "expired":
                counts["expired"] += 1
            elif result != "not-due":  # finished or gone: the entry is stale
                await redis.zrem(keys.index_key(name, "deadline"), job_id)
        meta = await self.broker.type_meta(name)
        for state in FINISHED:
            idx = keys.index_key(name, f"st:{state.value}")
            field_ = "dead_retention_ms" if state in PARKED else "retention_ms"
            default = DEFAULT_DEAD_RETENTION_MS if state in PARKED else DEFAULT_RETENTION_MS
            retention = _retention_ms(name, meta, field_, default)
            old = cast(list[str], await redis.zrangebyscore(idx, "-inf", now_ms - retention, start=0,
                                                            num=self.batch))
            # Everything but the newest max_finished, in one command: janitors running at once
            # agree on the set (a count read first and a range read later would over-trim).
            beyond = cast(list[str], await redis.zrange(idx, 0, -(self.max_finished + 1)))
            if beyond:
                old = list(dict.fromkeys(old + beyond[: self.batch]))
            if old:
                async with redis.pipeline(transaction=False) as pipe:
                    for job_id in old:
                        pipe.delete(keys.job_key(job_id), keys.log_key(job_id))
                    pipe.zrem(idx, *old)
                    removed = (await pipe.execute())[-1]
                counts["trimmed"] += int(removed)  # another janitor may have taken some
            oldest = cast(list[str], await redis.zrange(idx, 0, 99))
            if oldest:
                async with redis.pipeline(transaction=False) as pipe:
                    for job_id in oldest:
                        pipe.exists(keys.job_key(job_id))
                    present = await pipe.execute()
                missing = [j for j, ok in zip(oldest, present, strict=True) if not ok]
                if missing:
                    counts["stale"] += int(await redis.zrem(idx, *missing))


def _retention_ms(name: str, meta: dict[str, str], field_: str, default: int) -> int:
    """A type's published retention; the default when its metadata holds what job-supervisor
    did not write (reported), so one bad entry never stops the sweep of every type."""
    value = meta.get(field_)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        err = CorruptRecord(keys.meta_key(name), f"field {field_!r}: {value!r} is not a number of ms")
        log.warning("record.corrupt", code=err.code, key=err.key, error=err.detail, using_ms=default)
        return default


__all__ = ["Janitor", "SweepReport"]

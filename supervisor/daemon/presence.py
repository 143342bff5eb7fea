"""Worker presence: every instance publishes who it is and what it runs, with a TTL.

Each instance writes `js:instance:<id>` (JSON, expires after `3 x interval`)
and its last-seen time in the sorted set `js:instances`. Readers see an
instance whose key expired but whose entry remains as `stale`; the janitor
forgets such entries after `forget_after_s`. The same heartbeat says, per job
type, that this instance serves it (`supervisor.engine.serving`): `describe()`'s
`types`, and the load errors of `type_errors` (name -> error).

Each heartbeat also keeps, in the hash `js:instances:proc`, where this instance's process runs
(`ProcessIdentity`: host, boot id, pid namespace, pid, start time) and every type it served:
a record that outlives the presence key's TTL, so an instance of the same host and boot can
tell, from the record alone, that the process is gone (`process_gone`) and end its leases
(`supervisor.daemon.janitor`). A clean stop, a release, or forgetting the instance removes it.

Each heartbeat also checks that the published metadata of every type it serves is still there,
and publishes it again when it is not (`republish`): a failover of Redis loses the writes its
replica had not received yet, and a type whose metadata is gone is refused to producers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from supervisor.engine import keys, serving
from supervisor.engine.records import loads
from supervisor.errors import CorruptRecord, printable
from supervisor.observability.log import LazyLogger

if TYPE_CHECKING:  # `health` and `workers` read presence without redis-py or psutil (supervisor.engine.reads)
    import psutil
    import redis.asyncio as aioredis

log = LazyLogger(__name__)
INSTANCES_KEY = f"{keys.PREFIX}:instances"
#: instance -> JSON {host, boot, pidns, pid, started, types}: see the module doc.
PROCESSES_KEY = f"{keys.PREFIX}:instances:proc"
FORGET_AFTER_S = 3600.0
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
PID_NS_PATH = Path("/proc/self/ns/pid")


def instance_key(instance_id: str) -> str:
    return f"{keys.PREFIX}:instance:{instance_id}"


def process_stats(pid: int) -> dict[str, Any]:
    """RSS (bytes) and CPU (percent since the last call) of one process; {} if it is gone."""
    import psutil  # noqa: PLC0415

    try:
        proc = _procs.setdefault(pid, psutil.Process(pid))
        with proc.oneshot():
            return {"pid": pid, "rss": proc.memory_info().rss, "cpu_percent": proc.cpu_percent(None)}
    except psutil.Error:
        _procs.pop(pid, None)
        return {}


_procs: dict[int, psutil.Process] = {}


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Where one instance's process runs: a pid means that process only on the same host, the
    same boot (`boot_id`) and the same pid namespace (containers sharing a host name and a kernel
    each have their own pids); `started` (psutil's create time) tells a reused pid apart."""

    host: str
    boot: str
    pidns: str
    pid: int
    started: float

    @classmethod
    def current(cls) -> ProcessIdentity | None:
        """This process's identity; None where there is no boot id to compare (not Linux)."""
        import psutil  # noqa: PLC0415

        try:
            boot = BOOT_ID_PATH.read_text().strip()
            pidns = os.readlink(PID_NS_PATH)
            started = psutil.Process(os.getpid()).create_time()
        except (OSError, psutil.Error):
            return None
        return cls(socket.gethostname(), boot, pidns, os.getpid(), started) if boot else None

    @classmethod
    def parse(cls, raw: Any) -> ProcessIdentity | None:
        """A record of `PROCESSES_KEY` (JSON); None for anything that is not one."""
        try:
            doc = loads(raw)
            return cls(str(doc["host"]), str(doc["boot"]), str(doc["pidns"]), int(doc["pid"]),
                       float(doc["started"]))
        except (ValueError, TypeError, KeyError):
            return None

    def same_machine(self, other: ProcessIdentity) -> bool:
        """Whether `other`'s pid can be looked up here: same host name, boot and pid namespace."""
        return (self.host, self.boot, self.pidns) == (other.host, other.boot, other.pidns)


#: Two reads of one process's start time may differ by the boot time's rounding (psutil adds
#: /proc/stat's btime, whole seconds); a reused pid started later than that.
_SAME_START_S = 1.5


def process_gone(me: ProcessIdentity, other: ProcessIdentity) -> bool:
    """Whether `other`'s process is certainly gone: only evidence of this host, boot and pid
    namespace counts (pid gone, a zombie, or the pid reused by a process started at another
    time). Anything else, or a process we may not inspect, is not evidence: the lease decides."""
    import psutil  # noqa: PLC0415

    if not me.same_machine(other):
        return False
    if other.pid == me.pid:
        return abs(other.started - me.started) > _SAME_START_S  # our pid now, another start: its process is gone
    try:
        proc = psutil.Process(other.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return abs(proc.create_time() - other.started) > _SAME_START_S
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # AccessDenied and the like: cannot tell
        return False


class Presence:
    """Publishes this instance's heartbeat every `interval_s`."""

    def __init__(self, redis: aioredis.Redis, instance_id: str, describe: Callable[[], dict[str, Any]],
                 interval_s: float = 10.0, version: str = "",
                 republish: Callable[[list[str]], Awaitable[None]] | None = None) -> None:
        self.redis = redis
        self.instance_id = instance_id
        self.describe = describe
        self.republish = republish  # publishes the metadata of the served types named again
        self.interval_s = interval_s
        self.started = time.time()
        self.base = {"instance": instance_id, "host": socket.gethostname(), "pid": os.getpid(),
                     "version": version, "started": self.started}
        self.identity = ProcessIdentity.current()
        self._served: set[str] = set()  # what the last heartbeat said this instance serves
        self._ever_served: set[str] = set()  # ... and every type it served since it started
        self._record_refused = False  # the last write of its process record failed (reported once)
        self._errored: set[str] = set()  # ... and the names it reported a load error for

    def snapshot(self) -> dict[str, Any]:
        doc = {**self.base, **self.describe(), "seen": time.time()}
        workers = [process_stats(os.getpid())]
        workers += [process_stats(p) for p in doc.pop("worker_pids", [])]
        doc["workers"] = [w for w in workers if w]
        return doc

    async def publish(self, check_metadata: bool = True) -> None:
        """One heartbeat (also called at once after a hot reload, so a removed type stops
        counting as served without waiting for the next beat). `check_metadata=False`: the
        types' metadata is not published yet (the first beat, at start), so it is not checked."""
        doc = self.snapshot()
        type_errors: dict[str, str] = doc.pop("type_errors", None) or {}
        served = set(doc.get("types") or ())
        ttl_ms = int(self.interval_s * 3000)
        checked = sorted(served) if self.republish is not None and check_metadata else []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(instance_key(self.instance_id), json.dumps(doc, default=str), px=ttl_ms)
            pipe.zadd(INSTANCES_KEY, {self.instance_id: doc["seen"]})
            for name in checked:
                pipe.exists(keys.meta_key(name))
            if self.identity is not None:
                self._ever_served |= served
                record = {**asdict(self.identity), "types": sorted(self._ever_served)}
                pipe.hset(PROCESSES_KEY, self.instance_id, json.dumps(record))
            replies = await pipe.execute(raise_on_error=False)
        found, record_reply = replies[2:2 + len(checked)], replies[2 + len(checked):]
        for reply in [*replies[:2], *found]:
            if isinstance(reply, Exception):
                raise reply
        if record_reply and isinstance(record_reply[0], Exception) and not self._record_refused:
            # another program's value at the key: named once; presence and serving go on without it
            err = CorruptRecord(PROCESSES_KEY, str(record_reply[0]))
            log.warning("record.corrupt", code=err.code, key=err.key, error=err.detail,
                        note="without its process record, a restart on this host waits out this instance's leases")
        self._record_refused = bool(record_reply) and isinstance(record_reply[0], Exception)
        missing = [name for name, n in zip(checked, found, strict=True) if not n]
        if missing and self.republish is not None:
            log.warning("types.republished", job_types=missing,
                        note="their published metadata was gone (a Redis failover that lost recent writes?)")
            await self.republish(missing)
        await serving.announce(self.redis, self.instance_id, ttl_ms, serve=served, stop=self._served - served,
                               errors=type_errors, clear=self._errored - type_errors.keys())
        self._served, self._errored = served, set(type_errors)

    async def run(self) -> None:
        while True:
            try:
                await self.publish()
            except (ConnectionError, OSError, Exception) as exc:  # noqa: BLE001 (Redis down: next beat)
                log.warning("redis.unavailable", op="presence", error=str(exc))
            await asyncio.sleep(self.interval_s)

    async def withdraw(self) -> None:
        """On a clean stop: disappear at once instead of going stale. What it said it serves
        lapses on its own (`supervisor.engine.serving`), so producers are not refused during a restart."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(instance_key(self.instance_id))
            pipe.zrem(INSTANCES_KEY, self.instance_id)
            pipe.hdel(PROCESSES_KEY, self.instance_id)
            await pipe.execute()


async def list_workers(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """Every instance not yet forgotten: live ones with their heartbeat, others as stale."""
    now = time.time()
    entries = cast(list[tuple[str, float]],
                   await redis.zrangebyscore(INSTANCES_KEY, "-inf", "+inf", withscores=True))
    if not entries:
        return []
    mget = getattr(redis, "mget_nonatomic", redis.mget)  # a Redis Cluster: the keys are in many slots
    docs = cast(list[str | None], await mget([instance_key(i) for i, _ in entries]))
    out = []
    for (instance, seen), raw in zip(entries, docs, strict=True):
        doc = None
        if raw:
            try:
                doc = loads(raw)
                if not isinstance(doc, dict) or not isinstance(doc.get("instance"), str):
                    raise ValueError(f"a {type(doc).__name__} that is not an instance's heartbeat")
                doc["age_s"] = round(now - float(doc.get("seen", seen)), 3)
                doc["status"] = "alive"
            except (ValueError, TypeError) as exc:  # written by another program: named, not fatal
                err = CorruptRecord(instance_key(instance), str(exc))
                doc = {"instance": printable(instance), "seen": seen, "status": "corrupt",
                       "error": str(err), "code": err.code}
        if doc is None:
            doc = {"instance": printable(instance), "seen": seen, "status": "stale"}
        doc.setdefault("age_s", round(now - seen, 3))
        out.append(doc)
    return sorted(out, key=lambda d: (d["status"] != "alive", d["instance"]))


async def forget_stale(redis: aioredis.Redis, forget_after_s: float = FORGET_AFTER_S) -> int:
    """Drop instances not seen for `forget_after_s` (janitor), and their process records."""
    old = cast(list[str], await redis.zrangebyscore(INSTANCES_KEY, "-inf", time.time() - forget_after_s))
    if not old:
        return 0
    await redis.hdel(PROCESSES_KEY, *old)
    return int(await redis.zrem(INSTANCES_KEY, *old))


async def dead_instances(redis: aioredis.Redis, me: ProcessIdentity, instance_id: str,
                         ) -> list[tuple[str, ProcessIdentity, list[str]]]:
    """The instances whose process records show them gone (`process_gone`), with the types each
    served: (instance, identity, types)."""
    records = cast(dict[str, str], await redis.hgetall(PROCESSES_KEY))
    out = []
    for instance, raw in records.items():
        other = ProcessIdentity.parse(raw) if instance != instance_id else None
        if other is not None and process_gone(me, other):
            types = loads(raw).get("types")
            out.append((instance, other, [t for t in types if isinstance(t, str)] if isinstance(types, list) else []))
    return out


async def forget_instance(redis: aioredis.Redis, instance_id: str) -> None:
    """An instance found dead: out of the live list at once (its entry stays, as stale, until forgotten)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(instance_key(instance_id))
        pipe.hdel(PROCESSES_KEY, instance_id)
        await pipe.execute()

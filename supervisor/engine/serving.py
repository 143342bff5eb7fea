"""Which live instance serves each job type, when one last did, and the load errors reported for it.

Owns the per-type hash `js:{tag}:<type>:served` (under the type's hash tag, next to its
metadata). Each instance's presence heartbeat renews, per type it serves, a statement that
holds for `3 x presence_interval` (`announce`); hot reload withdraws a removed type at once.
A clean stop withdraws nothing: the statements lapse on their own, so a restart (the new
instance is up within seconds) never makes a type look unserved. A crashed instance's
statements lapse the same way. Every time is Redis's (`TIME` in the scripts).

Producers read a type's metadata and this hash in one script call (`type_state`), the read
`Client` already makes at most every 5 s per type, so refusing an unserved type costs the
enqueue hot path nothing. `types`, `schedules` and `health` read the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from supervisor.engine import keys
from supervisor.engine.records import hash_reply
from supervisor.engine.scripts import lua_text
from supervisor.engine.transport import RedisPyTransport
from supervisor.engine.wire import Script
from supervisor.errors import UnknownJobType

if TYPE_CHECKING:  # annotations only: a CLI read through supervisor.engine.reads never loads redis-py
    import redis.asyncio as aioredis

    from supervisor.engine.transport import ScriptTransport, SyncScriptTransport


def _script(name: str) -> Script:
    return Script(lua_text(name))


SERVED = _script("served")
TYPE_STATE = _script("type_state")


def served_key(name: str) -> str:
    """The hash of who serves the job type `name` (see the module doc)."""
    return keys.queue_prefix(name) + "served"


def iso_ms(ms: int | float) -> str:
    """Epoch milliseconds as ISO-8601 UTC (`2025-01-31T12:00:00.000+00:00`)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class Serving:
    """Who serves one job type, as of one read."""

    instances: tuple[str, ...] = ()  # live instances serving it now
    last_instance: str | None = None  # the last instance that served it ...
    last_ms: int | None = None  # ... and when (Redis ms): its last heartbeat, or when it stopped
    load_errors: tuple[tuple[str, str], ...] = ()  # (instance, error) for a file of that name

    @property
    def served(self) -> bool:
        return bool(self.instances)

    def describe(self) -> dict[str, Any]:
        """JSON fields for `types`: served, served_by, last_served {instance, at}, load_errors."""
        last = ({"instance": self.last_instance, "at": iso_ms(self.last_ms)}
                if self.last_instance and self.last_ms is not None else None)
        return {"served": self.served, "served_by": list(self.instances), "last_served": last,
                "load_errors": [{"instance": i, "error": e} for i, e in self.load_errors]}

    def refusal(self, name: str) -> UnknownJobType:
        """The error for an enqueue of `name` that no live instance serves."""
        return UnknownJobType(
            name, last_instance=self.last_instance,
            last_served=iso_ms(self.last_ms) if self.last_ms is not None else None,
            load_errors=tuple(dict.fromkeys(f"{e} (on instance {i})" for i, e in self.load_errors)))


NOBODY = Serving()


def parse_serving(fields: Mapping[str, str], now_ms: int) -> Serving:
    """A served hash as read at Redis time `now_ms`; lapsed statements and bad values are ignored."""
    instances, errors = [], []
    for field, value in fields.items():
        kind, _, instance = field.partition(":")
        till, _, rest = value.partition("|")
        if kind not in ("i", "e") or not instance or not till.isdigit() or int(till) < now_ms:
            continue
        if kind == "i":
            instances.append(instance)
        else:
            errors.append((instance, rest))
    last_ms = fields.get("last_ms", "")
    return Serving(tuple(sorted(instances)), fields.get("last_instance") or None,
                   int(last_ms) if last_ms.isdigit() else None, tuple(sorted(errors)))


def _state(reply: Any) -> tuple[dict[str, str], Serving]:
    meta, served, now_ms = reply
    return hash_reply(meta), parse_serving(hash_reply(served), int(now_ms))


async def type_state(transport: ScriptTransport, name: str) -> tuple[dict[str, str], Serving]:
    """The type's published metadata ({} when none) and who serves it: one script call."""
    return _state(await transport.evalsha(TYPE_STATE, [keys.meta_key(name), served_key(name)], []))


def type_state_sync(transport: SyncScriptTransport, name: str) -> tuple[dict[str, str], Serving]:
    """`type_state` over a blocking transport (SyncClient)."""
    return _state(transport.evalsha(TYPE_STATE, [keys.meta_key(name), served_key(name)], []))


async def serving_of(redis: aioredis.Redis, names: Iterable[str]) -> dict[str, Serving]:
    """Who serves each of `names` (for listings: one script call per type). `redis` is what the
    read models read through: redis-py's client or `supervisor.engine.reads.SyncReads`."""
    script = redis.register_script(TYPE_STATE.source)  # EVALSHA, the script loaded on NOSCRIPT
    return {name: _state(await script(keys=[keys.meta_key(name), served_key(name)], args=[]))[1]
            for name in names}


async def announce(redis: aioredis.Redis, instance: str, ttl_ms: int, *, serve: Iterable[str] = (),
                   stop: Iterable[str] = (), errors: Mapping[str, str] | None = None,
                   clear: Iterable[str] = ()) -> None:
    """What `instance` says, in one round trip: it serves `serve` for `ttl_ms` more, no longer
    serves `stop`, failed to load a file of each name in `errors` (for `ttl_ms`), and no longer
    reports one for `clear`."""
    calls = [(n, "serve", ttl_ms, "") for n in serve] + [(n, "stop", 0, "") for n in stop]
    calls += [(n, "error", ttl_ms, e) for n, e in (errors or {}).items()] + [(n, "clear", 0, "") for n in clear]
    if calls:  # redis-py's own connections (a Cluster's pipeline: each master's calls on its own)
        await RedisPyTransport(redis).evalsha_stream(
            SERVED, [(served_key(name), (instance, what, ttl, error)) for name, what, ttl, error in calls])


__all__ = ["NOBODY", "Serving", "announce", "iso_ms", "parse_serving", "served_key", "serving_of",
           "type_state", "type_state_sync"]

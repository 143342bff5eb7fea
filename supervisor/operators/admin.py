"""Operator read models over Redis, shared by the CLI and the admin HTTP API.

Each function reads Redis directly (no daemon needed) and returns JSON-ready
values, so `job-supervisor schedules` and `GET /schedules` (and the rest)
cannot drift apart:

- `schedule_rows`: every published cron schedule, whether it fires, its last and next fire times.
- `type_rows`: published job types with schema, policy, source, index counts and who serves them.
- `list_jobs` (in `supervisor.operators.listing`): filtered, cursor-paginated job listing.
- `recent_executions`: the newest attempt events across types.
- `EventFollower`: follows every type's lifecycle stream with a resume token.
- `health`: Redis PING, the number of instances seen by presence, and problems (jobs queued
  for types no live instance serves).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from supervisor.engine import keys
from supervisor.engine.control import paused_states
from supervisor.engine.records import check_text, loads, parsed
from supervisor.engine.serving import serving_of
from supervisor.engine.topology import xread_streams
from supervisor.engine.wire import redis_errors
from supervisor.errors import CorruptRecord, printable

if TYPE_CHECKING:  # `health` also reads through supervisor.engine.reads, without redis-py
    import redis.asyncio as aioredis

    from supervisor.engine.broker import Broker

# --- schedules -----------------------------------------------------------------------------


async def schedule_rows(redis: aioredis.Redis, count: int = 3) -> list[dict[str, Any]]:
    """Every published schedule: its document, `status`, `last_fired` and the next `count` fire times.

    Every time is ISO-8601 in UTC (`+00:00`), whatever the schedule's own `timezone` (which
    decides when its ticks fall). `last_fired` is the last tick really enqueued (None: never;
    a tick skipped by `misfire="skip"` or a first start's baseline is not one). `status`:
    `firing` (a live instance has the schedule and one serves its type), `not served` (no live
    instance serves its type: its file was removed or fails to load) or `inactive` (its type is
    served, but no live instance has this schedule any more); only a firing schedule has `next`
    times. A schedule that no longer parses gets `next: []` and an `error`.
    """
    from supervisor.daemon.presence import list_workers  # noqa: PLC0415
    from supervisor.daemon.schedule import ScheduleError, ScheduleSpec, next_fire_times  # noqa: PLC0415
    from supervisor.daemon.scheduler import SPECS_KEY, fired_key  # noqa: PLC0415

    docs, corrupt = _schedule_docs(SPECS_KEY, cast(dict[str, str], await redis.hgetall(SPECS_KEY)))
    live = {sid for w in await list_workers(redis) if w.get("status") == "alive" for sid in w.get("schedules") or ()}
    served = {name: s.served for name, s in (await serving_of(redis, {d["job"] for d in docs})).items()}
    now_s, now_us = await redis.time()
    now = datetime.fromtimestamp(now_s + now_us / 1e6, UTC)
    rows = []
    for doc in sorted(docs, key=lambda d: d["id"]):
        last = await _hget_or_none(redis, fired_key(doc["job"]), doc["id"])
        entry = {**doc, "last_fired": _epoch_iso(last), "served": served[doc["job"]], "next": []}
        entry["status"] = "not served" if not entry["served"] else "firing" if doc["id"] in live else "inactive"
        try:
            spec = ScheduleSpec.parse({k: doc[k] for k in ("job", "cron", "timezone", "payload", "misfire")},
                                      source=doc["source"])
            if entry["status"] == "firing":
                entry["next"] = [t.astimezone(UTC).isoformat() for t in next_fire_times(spec, now, count)]
        except (ScheduleError, KeyError) as exc:
            entry["error"] = str(exc)
        rows.append(entry)
    return rows + corrupt


def _schedule_docs(key: str, raw: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The published schedule documents that parse, and a row naming each one that does not."""
    docs, corrupt = [], []
    for sid, value in raw.items():
        try:
            doc = loads(value)
            if not (isinstance(doc, dict) and all(isinstance(doc.get(k), str) for k in ("id", "job", "cron"))):
                raise ValueError("not a schedule document (id, job, cron)")
            docs.append(doc)
        except ValueError as exc:
            err = CorruptRecord(key, f"field {sid!r}: {exc}")
            corrupt.append({"id": printable(sid), "job": "", "cron": "", "status": "corrupt", "next": [],
                            "error": str(err), "code": err.code})
    return docs, corrupt


async def _hget_or_none(redis: aioredis.Redis, key: str, field: str) -> str | None:
    try:
        return cast(str | None, await redis.hget(key, field))
    except redis_errors().ResponseError:  # WRONGTYPE: another program's key; shown as never
        return None


def _epoch_iso(value: str | None) -> str | None:
    """Epoch seconds as stored, in ISO-8601 (None when absent or not a time)."""
    try:
        return datetime.fromtimestamp(int(float(value)), UTC).isoformat() if value else None
    except (ValueError, OverflowError, OSError):
        return None


# --- types ---------------------------------------------------------------------------------


async def type_rows(broker: Broker) -> list[dict[str, Any]]:
    """Published job types: name, source, schema, policy, publishing instance and counts per index."""
    rows = []
    names = await broker.type_names()
    serving = await serving_of(broker.redis, names)  # served, served_by, last_served, load_errors
    paused = await paused_states(broker, names)
    for name in names:
        try:
            parsed(keys.TYPES_KEY, "member", check_text, name)
            meta = await broker.type_meta(name)
            updated = meta.get("updated_ms")
            row = {
                "name": name,
                "source": meta.get("source"),
                "schema": parsed(keys.meta_key(name), "schema", _object, meta.get("schema") or "{}"),
                "policy": parsed(keys.meta_key(name), "policy", _object, meta.get("policy") or "{}"),
                "instance": meta.get("instance"),
                "updated": datetime.fromtimestamp(int(updated) / 1000, UTC).isoformat() if updated else None,
                "counts": await broker.counts(name),
                **serving[name].describe(),
                **{k: v for k, v in paused[name].to_dict().items() if k in ("paused", "paused_info")},
            }
            check_text(json.dumps(row, ensure_ascii=False, default=str))  # every text of it is UTF-8
        except (CorruptRecord, redis_errors().ResponseError, ValueError, OverflowError,
                OSError) as exc:  # named, not fatal
            err = exc if isinstance(exc, CorruptRecord) else CorruptRecord(keys.meta_key(name), str(exc))
            row = {"name": printable(name), "counts": {}, "error": str(err), "code": err.code}
        rows.append(row)
    return rows


def _object(text: str) -> dict[str, Any]:
    doc = loads(text)
    if not isinstance(doc, dict):
        raise TypeError(f"a {type(doc).__name__}, not an object")
    return doc


# --- lifecycle events ----------------------------------------------------------------------

#: Events that start or end an attempt (what `executions` lists).
EXECUTION_EVENTS = frozenset({"started", "completed", "failed", "retry", "dead", "lease-expired"})


def _stream_time(stream_id: str) -> str:
    ms = int(stream_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


#: The fields of a batch entry that hold one value per job (space-separated lists, in one order).
_BATCH_LISTS = (("ids", "id"), ("attempts", "attempt"), ("request_ids", "request_id"), ("trace_ids", "trace_id"))


def job_fields(fields: dict[str, str]) -> list[dict[str, str]]:
    """The events of one lifecycle stream entry, each with the fields a single job's entry has
    (event, id, state, attempt, request_id, trace_id, ...). The scripts that move a batch of jobs
    at once (claim's `started`, complete's `completed`, the bulk enqueue's `enqueued`) write one
    entry for the batch: the shared fields, then `ids`, `attempts`, `request_ids`, `trace_ids`
    (space-separated, one value per job) and for `completed` `results` (a JSON array) and maybe
    `result_bytes` (a list; 0: carried). Any other entry is one job's event, returned as it is."""
    if "ids" not in fields:
        return [fields]
    lists = [fields.get(key, "").split(" ") for key, _ in _BATCH_LISTS]
    n = len(lists[0])
    results: Any = None
    try:
        if "results" in fields:
            results = loads(fields["results"])
    except ValueError:
        return [fields]
    sizes = fields["result_bytes"].split(" ") if "result_bytes" in fields else None
    if any(len(values) != n for values in lists) or (results is not None and (
            not isinstance(results, list) or len(results) != n)) or (sizes is not None and len(sizes) != n):
        return [fields]  # another program's entry: shown as it is
    skip = {key for key, _ in _BATCH_LISTS} | {"results", "result_bytes", "event", "state"}
    shared = {k: v for k, v in fields.items() if k not in skip}
    out = []
    for i in range(n):
        one = {"event": fields.get("event", ""), "id": lists[0][i], "state": fields.get("state", ""),
               "attempt": lists[1][i], "request_id": lists[2][i], "trace_id": lists[3][i], **shared}
        if sizes is not None and sizes[i] != "0":
            one["result_bytes"] = sizes[i]
        elif results is not None:  # as a single job's event carries it: the result's JSON text
            one["result"] = json.dumps(results[i], separators=(",", ":"))
        out.append(one)
    return out


def event_documents(type_name: str, stream_id: str, fields: dict[str, str]) -> list[dict[str, Any]]:
    """One lifecycle stream entry as JSON documents, one per job (`job_fields`, `event_document`)."""
    return [event_document(type_name, stream_id, one) for one in job_fields(fields)]


def event_document(type_name: str, stream_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """One lifecycle stream entry as JSON: type, event, job_id, state, attempt, time, stream_id, extras."""
    # An entry another program added is shown as it is, its non-UTF-8 bytes escaped, never an error.
    fields = {printable(k): printable(v) for k, v in fields.items()}
    attempt = fields.get("attempt") or "0"
    doc: dict[str, Any] = {
        "type": printable(type_name),
        "event": fields.get("event", ""),
        "job_id": fields.get("id", ""),
        "state": fields.get("state", ""),
        "attempt": int(attempt) if attempt.isdigit() else 0,
        "time": _stream_time(stream_id),
        "stream_id": stream_id,
    }
    for k, v in fields.items():
        if k in ("event", "id", "state", "attempt"):
            continue
        if k == "progress":
            try:
                doc[k] = loads(v)
                continue
            except ValueError:
                pass
        elif k == "delay_ms":
            try:
                doc[k] = int(v)
                continue
            except ValueError:
                pass
        doc[k] = v
    return doc


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def recent_executions(
    redis: aioredis.Redis, names: Iterable[str], limit: int = 100, scan_max: int = 10_000,
) -> list[dict[str, Any]]:
    """The newest attempt events (started/completed/failed/retry/dead/lease-expired) across `names`.

    Reads each type's stream backwards until it has `limit` such events or has looked at
    `scan_max` entries, then merges them newest first.
    """
    out: list[dict[str, Any]] = []
    page = max(min(limit * 4, 1000), 50)
    for name in names:
        stream = keys.events_key(name)
        got: list[dict[str, Any]] = []
        upper, scanned = "+", 0
        while len(got) < limit and scanned < scan_max:
            entries = cast(list[tuple[str, dict[str, str]]],
                           await redis.xrevrange(stream, max=upper, min="-", count=page))
            if not entries:
                break
            for sid, fields in entries:
                if fields.get("event") in EXECUTION_EVENTS:
                    got.extend(reversed(event_documents(name, sid, fields)))  # newest first
            scanned += len(entries)
            if len(entries) < page:
                break
            upper = "(" + entries[-1][0]
        out += got[:limit]
    out.sort(key=lambda d: _id_key(d["stream_id"]), reverse=True)
    return out[:limit]


@dataclass
class StreamPositions:
    """Where a follower stands in every type's lifecycle stream; `token()` is its resume token.

    The token is base64url (no padding) of compact JSON `{"v": 1, "f": FLOOR, "p": {type: id}}`:
    `p` is the id of the last entry delivered (or skipped by a filter) per stream, and `f` the
    floor for every stream not in `p` (Redis time when the follow began), so a type that
    appears later is read from then on and nothing is lost. Positions still at the floor are
    left out to keep the token short.
    """

    floor: str
    # an entry id, or `<id>/<k>`: the first k events of the batch entry <id> were delivered
    pos: dict[str, str] = field(default_factory=dict)

    def of(self, name: str) -> str:
        """Where the next read of `name`'s stream starts (after this id): right before an entry
        that was delivered only in part."""
        sid, partial, _ = self.pos.get(name, self.floor).partition("/")
        if not partial:
            return sid
        ms, seq = _id_key(sid)
        return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-18446744073709551615"

    def delivered(self, name: str, sid: str) -> int:
        """How many events of entry `sid` were delivered already (a batch entry read in part)."""
        at, partial, k = self.pos.get(name, "").partition("/")
        return int(k) if partial and at == sid else 0

    def token(self) -> str:
        doc = {"v": 1, "f": self.floor, "p": {k: v for k, v in sorted(self.pos.items()) if v != self.floor}}
        return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> StreamPositions:
        """Decode a token; ValueError when it is not one of ours."""
        try:
            doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            floor, pos = doc["f"], doc.get("p", {})
            _id_key(floor)
            for v in pos.values():
                sid, partial, k = v.partition("/")
                _id_key(sid)
                if partial and not k.isdigit():
                    raise ValueError(v)
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error) as exc:
            raise ValueError("not an event id returned by this API") from exc
        if doc.get("v") != 1 or not isinstance(pos, dict):
            raise ValueError("not an event id returned by this API")
        return cls(str(floor), {str(k): str(v) for k, v in pos.items()})


@dataclass(frozen=True, slots=True)
class FollowedEvent:
    """One delivered lifecycle event and the token that resumes right after it."""

    token: str
    name: str
    doc: dict[str, Any]


class EventFollower:
    """Follows the lifecycle streams of every published type (or of `types`) with XREAD BLOCK.

    Args:
        redis: client for the blocking reads (one connection per follower is held while it blocks).
        types: follow only these types (default: every type published, re-read every `refresh_s`).
        job_id: deliver only this job's events (other entries are read and skipped).
        start: a resume token (`FollowedEvent.token`); None starts with events from now on.
        block_ms: longest single XREAD BLOCK; `events()` yields None when one times out.
    """

    def __init__(self, redis: aioredis.Redis, *, types: Iterable[str] | None = None, job_id: str | None = None,
                 start: str | None = None, block_ms: int = 5000, refresh_s: float = 5.0, batch: int = 200) -> None:
        self.redis = redis
        self.fixed_types = sorted(set(types)) if types else None
        self.job_id = job_id
        self.positions = StreamPositions.parse(start) if start else None
        self.block_ms = block_ms
        self.refresh_s = refresh_s
        self.batch = batch

    async def _names(self) -> list[str]:
        if self.fixed_types is not None:
            return self.fixed_types
        return sorted(cast(set[str], await self.redis.smembers(keys.TYPES_KEY)))

    async def _floor(self) -> str:
        now_s, now_us = await self.redis.time()
        # XREAD reads after this id: the last possible id of the millisecond before now, so the
        # first entry written in this very millisecond (id `<now>-0`) is not skipped
        return f"{int(now_s) * 1000 + int(now_us) // 1000 - 1}-18446744073709551615"

    async def prepare(self) -> None:
        """Fix the starting position now (without a resume token: "from now on" means from this call)."""
        if self.positions is None:
            self.positions = StreamPositions(await self._floor())
        if self.job_id and self.fixed_types is None:
            name = await _job_type_or_none(self.redis, self.job_id)
            if name is not None:
                self.fixed_types = [name]

    async def _read(self, streams: dict[str, str], stop: asyncio.Event | None) -> list[Any] | None:
        """One XREAD BLOCK; None when `stop` was set first (the read is abandoned)."""
        if stop is None:
            return await xread_streams(self.redis, streams, self.batch, self.block_ms)
        read = asyncio.ensure_future(xread_streams(self.redis, streams, self.batch, self.block_ms))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({read, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not read.done():  # stopped, or our caller was cancelled (client gone)
                read.cancel()
                read.add_done_callback(_retrieve)
        if not read.done() or read.cancelled():
            return None
        return read.result()

    async def events(self, stop: asyncio.Event | None = None) -> AsyncIterator[FollowedEvent | None]:
        """Yield events in stream order per type (merged by time across types).

        Yields None after a read that delivered nothing (idle, or every entry filtered out),
        so a caller can send heartbeats. Ends when `stop` is set (a pending read is abandoned).
        """
        await self.prepare()
        positions = self.positions
        assert positions is not None
        names: list[str] = []
        refreshed = -self.refresh_s
        while stop is None or not stop.is_set():
            if time.monotonic() - refreshed >= self.refresh_s:
                names = await self._names()
                refreshed = time.monotonic()
            if not names:
                if await _wait(stop, self.block_ms / 1000):
                    return
                yield None
                continue
            streams = {keys.events_key(n): positions.of(n) for n in names}
            by_stream = {keys.events_key(n): n for n in names}
            rows = await self._read(streams, stop)
            if rows is None and stop is not None and stop.is_set():
                return
            merged = [(by_stream[stream], sid, fields) for stream, entries in rows or [] for sid, fields in entries]
            merged.sort(key=lambda e: _id_key(e[1]))
            delivered = False
            for name, sid, fields in merged:
                events = job_fields(fields)
                done = positions.delivered(name, sid)  # a batch entry delivered in part before a resume
                positions.pos[name] = sid
                for k in range(done, len(events)):
                    positions.pos[name] = sid if k + 1 == len(events) else f"{sid}/{k + 1}"
                    if self.job_id and printable(events[k].get("id", "")) != self.job_id:
                        continue  # (a document is made only for an event delivered)
                    delivered = True
                    yield FollowedEvent(positions.token(), name, event_document(name, sid, events[k]))
            if not delivered:
                yield None


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned read's error is expected; don't report it as unretrieved


async def _wait(stop: asyncio.Event | None, seconds: float) -> bool:
    """Sleep `seconds` or until `stop` is set; True when stopped."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def _job_type_or_none(redis: aioredis.Redis, job_id: str) -> str | None:
    try:
        key = keys.job_key(job_id)
    except ValueError:
        return None
    name = await redis.hget(key, "name")
    return str(name) if name else None


# --- health --------------------------------------------------------------------------------


async def health(redis: aioredis.Redis) -> dict[str, Any]:
    """PING Redis, count instances (alive / stale) from presence, and list `problems`; raises the
    Redis error when down. `status` is `ok`, or `degraded` when there is a problem."""
    # presence.py is the daemon's heartbeat (psutil, structlog): imported here, not at the top,
    # so `job-supervisor health` starts light.
    from supervisor.daemon.presence import list_workers  # noqa: PLC0415

    started = time.perf_counter()
    await redis.ping()
    ping_ms = round((time.perf_counter() - started) * 1000, 3)
    workers = await list_workers(redis)
    alive = sum(1 for w in workers if w.get("status") == "alive")
    problems = await unserved_backlog(redis)
    return {"status": "degraded" if problems else "ok", "redis": "ok", "redis_ping_ms": ping_ms,
            "instances": alive, "instances_stale": len(workers) - alive, "problems": problems}


async def unserved_backlog(redis: aioredis.Redis) -> list[dict[str, Any]]:
    """Job types with jobs queued (pending, delayed, retrying, leased, or waiting on their
    dependencies) that no live instance serves: those jobs wait until one does. One problem per
    type, with who served it last."""
    names = sorted(cast(set[str], await redis.smembers(keys.TYPES_KEY)))
    parts = ("ready", "sched", "active", "waiting")
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for part in parts:
                pipe.zcard(keys.index_key(name, part))
        sizes = await pipe.execute()
    queued = {name: sum(sizes[i * len(parts):(i + 1) * len(parts)]) for i, name in enumerate(names)}
    waiting = [name for name in names if queued[name]]
    problems = []
    for name, serving in (await serving_of(redis, waiting)).items():
        if serving.served:
            continue
        err = serving.refusal(name)
        last = f"last served by {err.last_instance} at {err.last_served}" if err.last_instance else "never served"
        problems.append({
            "problem": "unserved_jobs", "type": name, "queued": queued[name],
            "last_served": serving.describe()["last_served"], "load_errors": list(err.load_errors),
            "message": f"{queued[name]} job(s) of {name!r} queued, but no live instance serves it ({last})",
        })
    return problems

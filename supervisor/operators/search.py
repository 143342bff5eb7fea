"""Finding jobs by what an operator has in hand: an id, a request or trace id, an idempotency
key, a parent's id, or a piece of error text (the dashboard's search box and its child list).
Error text matches as the job list's and bulk actions' `error` filter does (in Lua): a substring,
ASCII letters in any case, other characters as written.

Exact lookups cost one read each (the record, the type's `idem:<key>`). The rest is a bounded
scan of the newest entries of each index (`scan` records at most, read in pipelined chunks of a
few small fields), so a search never walks a million-record type in one go; the answer says
how many records it read and whether that was all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from supervisor.engine import keys
from supervisor.engine.broker import Broker
from supervisor.engine.control import ascii_lower
from supervisor.engine.records import Job, indexed_job_key
from supervisor.engine.states import FINISHED, State
from supervisor.errors import CorruptRecord

Field = Literal["any", "id", "idempotency_key", "request_id", "trace_id", "parent", "error"]
_SCANNED_FIELDS = ("ctx", "parent", "error")
_CHUNK = 500


@dataclass
class SearchResult:
    """The jobs found (newest index entries first), why each matched, and how much was read."""

    jobs: list[Job] = field(default_factory=list)
    matched: dict[str, str] = field(default_factory=dict)  # job id -> the field that matched
    scanned: int = 0
    complete: bool = True  # every record of the types searched was read
    corrupt: list[CorruptRecord] = field(default_factory=list)


def _index_parts() -> list[str]:
    return ["active", "ready", "sched", "waiting", *(f"st:{s.value}" for s in State if s in FINISHED)]


def _scan_match(q: str, want: Field, row: list[str | None]) -> str | None:
    """The field of a record's (ctx, parent, error) row that matches `q`, else None."""
    ctx_json, parent, error = row
    if want in ("any", "parent") and parent == q:
        return "parent"
    if want in ("any", "request_id", "trace_id") and ctx_json:
        try:
            ctx = json.loads(ctx_json)
        except ValueError:
            ctx = None
        if isinstance(ctx, dict):
            for name in ("request_id", "trace_id"):
                if want in ("any", name) and ctx.get(name) == q:
                    return name
    if want in ("any", "error") and error and ascii_lower(q) in ascii_lower(error):
        return "error"
    return None


async def _exact(broker: Broker, names: list[str], q: str, want: Field, found: dict[str, str]) -> None:
    """The lookups that cost one read each: the id itself and the types' idempotency keys."""
    redis = broker.redis
    if want in ("any", "id"):
        try:
            if await redis.exists(keys.job_key(q)):
                found[q] = "id"
        except ValueError:
            pass  # not a job id: nothing to look up
    if want in ("any", "idempotency_key"):
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.get(keys.queue_prefix(name) + "idem:" + q)
            for job_id in await pipe.execute():
                if job_id:
                    found.setdefault(job_id, "idempotency_key")


async def search_jobs(broker: Broker, q: str, *, name: str | None = None, want: Field = "any",
                      limit: int = 50, scan: int = 20_000) -> SearchResult:
    """Jobs whose id, idempotency key, request id, trace id or parent equals `q`, or whose
    error contains it (case-insensitive); `want` narrows it to one of those.

    Args:
        name: one job type (default: every published type).
        limit: most jobs returned.
        scan: most records read by the scan (spread over the types' indexes, newest first).
    """
    result = SearchResult()
    names = [name] if name else await broker.type_names()
    found: dict[str, str] = {}
    await _exact(broker, names, q, want, found)
    if want not in ("id", "idempotency_key") and len(found) < limit:
        await _scan(broker, names, q, want, limit, scan, found, result)
    result.matched = dict(list(found.items())[:limit])
    result.jobs = await broker.get_many(result.matched, result.corrupt)
    return result


async def _scan(broker: Broker, names: list[str], q: str, want: Field, limit: int, scan: int,
                found: dict[str, str], result: SearchResult) -> None:
    redis = broker.redis
    parts = _index_parts()
    per_index = max(1, scan // max(1, len(names) * len(parts)))
    async with redis.pipeline(transaction=False) as pipe:
        for n in names:
            for part in parts:
                pipe.zrevrange(keys.index_key(n, part), 0, per_index - 1)
                pipe.zcard(keys.index_key(n, part))
        replies = await pipe.execute()
    ids: list[str] = []
    for members, size in zip(replies[::2], replies[1::2], strict=True):
        ids.extend(members)
        result.complete = result.complete and size <= per_index
    ids = [i for i in dict.fromkeys(ids) if _is_job_id(i, result.corrupt)]
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(keys.job_key(job_id), _SCANNED_FIELDS)
            rows: list[Any] = await pipe.execute(raise_on_error=False)
        result.scanned += len(chunk)
        for job_id, row in zip(chunk, rows, strict=True):
            if isinstance(row, list) and (why := _scan_match(q, want, row)):
                found.setdefault(job_id, why)
        if len(found) >= limit:
            result.complete = result.complete and start + _CHUNK >= len(ids)
            return


def _is_job_id(job_id: str, bad: list[CorruptRecord]) -> bool:
    return indexed_job_key(job_id, bad) is not None


async def key_waiters(broker: Broker, name: str, key: str, limit: int = 100) -> list[str]:
    """The ids of the jobs of a concurrency key that wait for a slot (live, not active), oldest first."""
    prefix = keys.queue_prefix(name)
    async with broker.redis.pipeline(transaction=False) as pipe:
        pipe.zrange(prefix + f"kj:{key}", 0, limit + 200)
        pipe.smembers(prefix + f"ka:{key}")
        live, active = await pipe.execute()
    return [job_id for job_id in live if job_id not in active][:limit]


__all__ = ["Field", "SearchResult", "key_waiters", "search_jobs"]

"""The job listing shared by `job-supervisor jobs list` and `GET /jobs`: filtered, newest first,
paginated with a cursor that names the last job of a page (so jobs created meanwhile never shift
later pages).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from supervisor.engine import keys
from supervisor.engine.records import Job
from supervisor.engine.states import FINISHED, State
from supervisor.errors import CorruptRecord

if TYPE_CHECKING:
    from supervisor.engine.broker import Broker

# --- job listing ---------------------------------------------------------------------------

_LIST_FIELDS = ("created", "state", "ctx", "ckey", "key")
_CHUNK = 1000


def job_key_of(ctx_json: str | None, *key_fields: str | None) -> str | None:
    """The concurrency key of a job record: its `ckey` (or `key`) field, else `concurrency_key` in its context.

    This is the one place that decides where a job's key lives (keyed concurrency, SPEC §9,
    stores it as the record's `ckey` field), so the listing filter follows it.
    """
    for value in key_fields:
        if value:
            return value
    if ctx_json:
        try:
            ctx = json.loads(ctx_json)
        except ValueError:
            return None
        if isinstance(ctx, dict) and ctx.get("concurrency_key") is not None:
            return str(ctx["concurrency_key"])
    return None


def encode_cursor(created_ms: int, job_id: str) -> str:
    raw = json.dumps([created_ms, job_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """(created_ms, job id) of a listing cursor; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("not a cursor returned by this API") from exc
    if not isinstance(created, int) or not isinstance(job_id, str):
        raise ValueError("not a cursor returned by this API")
    return created, job_id


def _index_parts(state: State | None) -> list[str]:
    if state is None:
        return ["ready", "sched", "active", *(f"st:{s.value}" for s in State if s in FINISHED)]
    if state in FINISHED:
        return [f"st:{state.value}"]
    if state is State.ACTIVE:
        return ["active"]
    return ["ready", "sched"]  # pending and retry share them; the record tells them apart


def _ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    at = value if value.tzinfo else value.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


async def _indexed_ids(broker: Broker, names: list[str], state: State | None, bad: list[CorruptRecord]) -> list[str]:
    """The ids in the indexes of `names` (for `state`), each once; a forged member goes to `bad`."""
    async with broker.redis.pipeline(transaction=False) as pipe:
        for n in names:
            for part in _index_parts(state):
                pipe.zrange(keys.index_key(n, part), 0, -1)
        indexed = await pipe.execute()
    ids = []
    for job_id in dict.fromkeys(i for group in indexed for i in group):
        try:
            keys.job_key(job_id)
            ids.append(job_id)
        except ValueError as exc:  # a forged index member
            bad.append(CorruptRecord(job_id, f"an index holds {str(exc).replace(repr(job_id), 'it')}"))
    return ids


async def list_jobs(
    broker: Broker,
    *,
    name: str | None = None,
    state: State | None = None,
    key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    cursor: str | None = None,
    corrupt: list[CorruptRecord] | None = None,
) -> tuple[list[Job], str | None]:
    """One page of jobs, newest first by (created, id), and the cursor of the next page (None at the end).

    The order is stable: a cursor names the last job of its page, so jobs created meanwhile
    never shift later pages. Cost: one ZRANGE per index of the types asked and one HMGET of a
    few small fields per retained job; the full records are read only for the page.

    Args:
        name: one job type (default: every published type).
        state: only jobs in this state.
        key: only jobs whose concurrency key (see `job_key_of`) equals it.
        since: created at or after; `until`: created before (naive datetimes are UTC).
        limit: page size.
        cursor: `next_cursor` of the previous page.
        corrupt: receives a CorruptRecord per index member or record skipped because
            job-supervisor did not write it (a listing never fails for one bad record).

    Raises:
        ValueError: a cursor this function did not produce.
    """
    after = decode_cursor(cursor) if cursor else None
    since_ms, until_ms = _ms(since), _ms(until)
    names = [name] if name else await broker.type_names()
    redis = broker.redis
    bad = corrupt if corrupt is not None else []
    ids = await _indexed_ids(broker, names, state, bad)
    found: list[tuple[int, str]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(keys.job_key(job_id), _LIST_FIELDS)
            rows = await pipe.execute(raise_on_error=False)
        for job_id, row in zip(chunk, rows, strict=True):
            created_ms = _listed(job_id, row, state, since_ms, until_ms, key, after, bad)
            if created_ms is not None:
                found.append((created_ms, job_id))
    found.sort(reverse=True)
    page = found[:limit]
    jobs = await broker.get_many((job_id for _, job_id in page), bad) if page else []
    next_cursor = encode_cursor(*page[-1]) if len(found) > limit and page else None
    return jobs, next_cursor



def _listed(job_id: str, row: Any, state: State | None, since_ms: int | None, until_ms: int | None,
            key: str | None, after: tuple[int, str] | None, bad: list[CorruptRecord]) -> int | None:
    """The creation time (ms) of a job whose `_LIST_FIELDS` row passes the filters of
    `list_jobs`, else None (a record job-supervisor did not write is added to `bad`)."""
    if isinstance(row, Exception):  # WRONGTYPE: not a hash
        bad.append(CorruptRecord(keys.job_key(job_id), str(row)))
        return None
    created, st, ctx, ckey, key_field = row
    if st is None:
        return None  # trimmed since it was indexed
    if state is not None and st != state.value:
        return None
    try:
        created_ms = int(created or 0)
    except ValueError:
        bad.append(CorruptRecord(keys.job_key(job_id), f"field 'created': {created!r} is not a time"))
        return None
    if since_ms is not None and created_ms < since_ms:
        return None
    if until_ms is not None and created_ms >= until_ms:
        return None
    if key is not None and job_key_of(ctx, ckey, key_field) != key:
        return None
    if after is not None and (created_ms, job_id) >= after:
        return None
    return created_ms

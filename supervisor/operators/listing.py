"""The job listing shared by `job-supervisor jobs list` and `GET /jobs`: filtered, paginated with a
cursor, at a cost that does not grow with the number of records in Redis.

Order: live jobs first (active by lease expiry, then pending and retrying in the order they will
run, then delayed by run time, then waiting), then finished jobs, most recently finished first
(every finished state merged). That is the order of the indexes themselves, so a page reads
only the index entries it walks: a cursor names the last entry (index group, score, id), and
the next page starts right after it; jobs created meanwhile never shift later pages. Filters on
fields the indexes do not hold (key, created time, pending vs retry) read a few small fields
per entry walked; one request walks at most `SCAN_MAX` entries, and when a selective filter
has not filled the page by then it answers with what it found and a cursor to go on from.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from supervisor.engine import keys
from supervisor.engine.records import Job
from supervisor.engine.states import FINISHED, State
from supervisor.errors import CorruptRecord

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from supervisor.engine.broker import Broker

_LIST_FIELDS = ("created", "state", "ctx", "ckey", "key")
#: Index entries one listing request walks at most (what bounds its time on a selective filter).
SCAN_MAX = 5_000
_FINISHED_PARTS = tuple(f"st:{s.value}" for s in State if s in FINISHED)
#: The index groups, in listing order: (parts, newest first?).
_GROUPS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("active",), False), (("ready",), False), (("sched",), False), (("waiting",), False), (_FINISHED_PARTS, True),
)


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


@dataclass(frozen=True, slots=True)
class Position:
    """Where a listing stands: an index group (see `_GROUPS`), and the score and id of the last entry walked."""

    group: int
    score: float
    id: str


def encode_cursor(pos: Position) -> str:
    raw = json.dumps([2, pos.group, pos.score, pos.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a listing cursor names; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, group, score, job_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("not a cursor returned by this API") from exc
    if (version != 2 or not isinstance(group, int) or not 0 <= group < len(_GROUPS)
            or not isinstance(score, int | float) or not isinstance(job_id, str)):
        raise ValueError("not a cursor returned by this API")
    return Position(group, float(score), job_id)


def _groups(state: State | None) -> list[int]:
    if state is None:
        return list(range(len(_GROUPS)))
    if state in FINISHED:
        return [len(_GROUPS) - 1]
    if state is State.ACTIVE:
        return [0]
    if state in (State.PENDING, State.RETRY):
        return [1, 2]  # they share the ready and scheduled sets; the record tells them apart
    return [3]


def _ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    at = value if value.tzinfo else value.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def _after(score: float, job_id: str, cur: tuple[float, str] | None, desc: bool) -> bool:
    """Whether the entry (score, id) comes after `cur` in the group's order."""
    if cur is None:
        return True
    return (score, job_id) < cur if desc else (score, job_id) > cur


async def _walk(redis: aioredis.Redis, index_keys: list[str], desc: bool, cur: tuple[float, str] | None,
                n: int, floor: int | None) -> list[tuple[float, str]]:
    """The next `n` entries after `cur` across `index_keys`, merged in the group's order (none below
    `floor` when newest first). The key that holds `cur`'s entry is read from its rank on; the others
    from `cur`'s score on (entries tied with it that come before it are read and skipped)."""
    out: list[tuple[float, str]] = []
    for key in index_keys:
        rank = None
        if cur is not None:
            rank = cast(int | None, await (redis.zrevrank(key, cur[1]) if desc else redis.zrank(key, cur[1])))
        if rank is not None:
            rows = await (redis.zrevrange if desc else redis.zrange)(key, int(rank) + 1, int(rank) + n,
                                                                     withscores=True)
            out += [(float(sc), str(m)) for m, sc in cast(list[tuple[str, float]], rows)
                    if floor is None or not desc or float(sc) >= floor]
        else:
            out += await _walk_by_score(redis, key, desc, cur, n, floor)
    out.sort(reverse=desc)
    return out[:n]


async def _walk_by_score(redis: aioredis.Redis, key: str, desc: bool, cur: tuple[float, str] | None,
                         n: int, floor: int | None) -> list[tuple[float, str]]:
    bound: float | str = cur[0] if cur else ("+inf" if desc else "-inf")
    end: float | str = floor if (desc and floor is not None) else ("-inf" if desc else "+inf")
    offset = 0
    while True:
        if desc:
            rows = await redis.zrevrangebyscore(key, bound, end, start=offset, num=n + 1, withscores=True)
        else:
            rows = await redis.zrangebyscore(key, bound, end, start=offset, num=n + 1, withscores=True)
        got = [(float(sc), str(m)) for m, sc in cast(list[tuple[str, float]], rows)
               if _after(float(sc), str(m), cur, desc)]
        # a page of nothing but entries tied with the cursor: read on past them (bounded)
        if got or len(rows) <= n or offset > SCAN_MAX:
            return got
        offset += len(rows)


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
    """One page of jobs in listing order (see the module docstring), and the cursor of the next page
    (None at the end). A page may hold fewer than `limit` jobs and still have a cursor: the request
    walked `SCAN_MAX` index entries without filling it (a selective filter); the next page goes on.

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
    filt = _Filter(state, key, _ms(since), _ms(until), corrupt if corrupt is not None else [])
    names = [name] if name else await broker.type_names()
    found, last, scanned = await _collect(broker, names, after, filt, limit)
    page = found[:limit]
    jobs = await broker.get_many((job_id for _, job_id in page), filt.bad) if page else []
    if len(found) > limit:
        next_cursor: str | None = encode_cursor(page[-1][0])
    elif scanned >= SCAN_MAX and last is not None:
        next_cursor = encode_cursor(last)
    else:
        next_cursor = None
    return jobs, next_cursor


async def _collect(broker: Broker, names: list[str], after: Position | None, filt: _Filter,
                   limit: int) -> tuple[list[tuple[Position, str]], Position | None, int]:
    """Walk the index groups from `after` until `limit` + 1 jobs passed `filt` or `SCAN_MAX` entries were
    walked: (the jobs found with their positions, the last position walked, how many were walked)."""
    state = filt.state
    found: list[tuple[Position, str]] = []
    last: Position | None = None
    scanned = 0
    for group in _groups(state):
        if after is not None and group < after.group:
            continue
        parts, desc = _GROUPS[group]
        if state in FINISHED:
            parts = (f"st:{state.value}",)
        index_keys = [keys.index_key(n, p) for n in names for p in parts]
        cur = (after.score, after.id) if after is not None and group == after.group else None
        while len(found) <= limit and scanned < SCAN_MAX:
            chunk = await _walk(broker.redis, index_keys, desc, cur, min(max(limit + 1, 200), SCAN_MAX - scanned),
                                filt.since_ms if desc else None)  # finished >= created >= since
            if not chunk:
                break
            for (score, job_id), ok in zip(chunk, await filt.passes(broker, [i for _, i in chunk]), strict=True):
                scanned += 1
                cur = (score, job_id)
                last = Position(group, score, job_id)
                if ok:
                    found.append((last, job_id))
                    if len(found) > limit:
                        break
        if len(found) > limit or scanned >= SCAN_MAX:
            break
    return found, last, scanned


@dataclass
class _Filter:
    """The filters of `list_jobs` that need a job's record (a few small fields, read in one pipeline)."""

    state: State | None
    key: str | None
    since_ms: int | None
    until_ms: int | None
    bad: list[CorruptRecord]

    def needs_record(self) -> bool:
        return (self.key is not None or self.since_ms is not None or self.until_ms is not None
                or self.state in (State.PENDING, State.RETRY))

    async def passes(self, broker: Broker, ids: list[str]) -> list[bool]:
        valid = []
        for job_id in ids:
            try:
                keys.job_key(job_id)
                valid.append(True)
            except ValueError as exc:  # a forged index member
                self.bad.append(CorruptRecord(job_id, f"an index holds {str(exc).replace(repr(job_id), 'it')}"))
                valid.append(False)
        if not self.needs_record():
            return valid
        async with broker.redis.pipeline(transaction=False) as pipe:
            for job_id, ok in zip(ids, valid, strict=True):
                if ok:
                    pipe.hmget(keys.job_key(job_id), _LIST_FIELDS)
            rows = iter(await pipe.execute(raise_on_error=False))
        return [ok and self._row_passes(job_id, next(rows)) for job_id, ok in zip(ids, valid, strict=True)]

    def _row_passes(self, job_id: str, row: Any) -> bool:
        if isinstance(row, Exception):  # WRONGTYPE: not a hash
            self.bad.append(CorruptRecord(keys.job_key(job_id), str(row)))
            return False
        created, st, ctx, ckey, key_field = row
        if st is None:
            return False  # trimmed since it was indexed
        if self.state is not None and st != self.state.value:
            return False
        try:
            created_ms = int(created or 0)
        except ValueError:
            self.bad.append(CorruptRecord(keys.job_key(job_id), f"field 'created': {created!r} is not a time"))
            return False
        if self.since_ms is not None and created_ms < self.since_ms:
            return False
        if self.until_ms is not None and created_ms >= self.until_ms:
            return False
        return self.key is None or job_key_of(ctx, ckey, key_field) == self.key

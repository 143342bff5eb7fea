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

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from supervisor.engine import keys
from supervisor.engine.control import ascii_lower, epoch_ms
from supervisor.engine.records import Job, indexed_job_key
from supervisor.engine.scripts import script_source
from supervisor.engine.states import FINISHED, State
from supervisor.engine.wire import Script
from supervisor.errors import CorruptRecord

if TYPE_CHECKING:

    from supervisor.engine.broker import Broker

#: Walks one index set from a cursor and filters the records it passes, inside Redis.
LIST_SCAN = Script(script_source("list_scan"))
#: Index entries one listing request walks at most (what bounds its time on a selective filter).
SCAN_MAX = 5_000
_FINISHED_PARTS = tuple(f"st:{s.value}" for s in State if s in FINISHED)
#: The index groups, in listing order: (parts, newest first?).
_GROUPS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("active",), False), (("ready",), False), (("sched",), False), (("waiting",), False), (_FINISHED_PARTS, True),
)


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


async def list_jobs(
    broker: Broker,
    *,
    name: str | None = None,
    state: State | None = None,
    key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    error: str | None = None,
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
        key: only jobs whose concurrency key (`job_key_of` in lua/lib.lua) equals it.
        since: created at or after; `until`: created before (naive datetimes are UTC).
        error: only jobs whose error contains this text (ASCII letters in any case), as bulk actions filter.
        limit: page size.
        cursor: `next_cursor` of the previous page.
        corrupt: receives a CorruptRecord per index member or record skipped because
            job-supervisor did not write it (a listing never fails for one bad record).

    Raises:
        ValueError: a cursor this function did not produce.
    """
    after = decode_cursor(cursor) if cursor else None
    filt = _Filter(state, key, epoch_ms(since), epoch_ms(until), corrupt if corrupt is not None else [],
                   ascii_lower(error or ""))
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
    found: list[tuple[Position, str]] = []
    last: Position | None = None
    scanned = 0
    for group in _groups(filt.state):
        if after is not None and group < after.group:
            continue
        parts, desc = _GROUPS[group]
        if filt.state in FINISHED:
            parts = (f"st:{filt.state.value}",)
        index_keys = [keys.index_key(n, p) for n in names for p in parts]
        cur = (after.score, after.id) if after is not None and group == after.group else None
        going = len(index_keys)
        while len(found) <= limit and scanned < SCAN_MAX and going:
            # the budget shared by the group's sets that go on, but enough in each to fill the page from one
            walk = max(limit + 1, min(500, (SCAN_MAX - scanned) // going))
            matches, boundary, walked, going = await _scan(broker, index_keys, desc, cur, walk,
                                                           limit + 1 - len(found), filt)
            scanned += walked
            for score, job_id in matches:
                found.append((Position(group, score, job_id), job_id))
            if boundary is not None:
                cur = boundary
                last = Position(group, *boundary)
        if len(found) > limit or scanned >= SCAN_MAX:
            break
    return found, last, scanned


async def _scan(broker: Broker, index_keys: list[str], desc: bool, cur: tuple[float, str] | None, walk: int,
                want: int, filt: _Filter) -> tuple[list[tuple[float, str]], tuple[float, str] | None, int, int]:
    """One step of a group's walk: `list_scan.lua` on each of its keys from `cur`, merged. Returns the
    matches up to the boundary (the earliest point any key that goes on stopped at: past it, that
    key's entries are unread), the boundary (None: every key ended), entries walked, how many keys go on
    (0 when every key ended; else every key walks on from the boundary: one that ended may hold
    matches past it, dropped here)."""
    args = ["1" if desc else "0", "" if cur is None else repr(cur[0]), "" if cur is None else cur[1], walk, want,
            filt.state.value if filt.state else "", filt.since_ms or "", filt.until_ms or "", filt.key or "",
            (filt.since_ms or "") if desc else "", "1" if filt.needs_record() else "0", filt.error]
    # every key at once: the script transport pipelines the calls (js:{tag}:<type>:<part> -> js:{tag}:j:)
    replies = await asyncio.gather(*(broker.transport.evalsha(LIST_SCAN, [key], [key[:key.index("}") + 1] + ":j:",
                                                                                  *args]) for key in index_keys))
    per_key = []
    for key, (walked, last_score, last_id, exhausted, flat) in zip(index_keys, replies, strict=True):
        matches = [(float(flat[i]), str(flat[i + 1])) for i in range(0, len(flat), 2)]
        end = (float(last_score), str(last_id)) if last_score != "" else None
        per_key.append((key, int(walked), end, bool(int(exhausted)), matches))
    going = [(k, end) for k, _w, end, done, _m in per_key if not done and end is not None]
    boundary = None
    if going:  # the walk is only complete up to the key that stopped first
        boundary = max(e for _k, e in going) if desc else min(e for _k, e in going)
    merged = sorted((m for *_rest, matches in per_key for m in matches), reverse=desc)
    if boundary is not None:
        merged = [m for m in merged if (m >= boundary if desc else m <= boundary)]
    merged = [m for m in merged if filt.valid_id(m[1])][:want]
    if len(merged) == want:  # the page is full: go on right after its last job
        boundary = merged[-1]
    return merged, boundary, sum(w for _k, w, *_rest in per_key), len(going) if boundary is not None else 0


@dataclass
class _Filter:
    """The filters of `list_jobs` that need a job's record (applied in Redis by `list_scan.lua`)."""

    state: State | None
    key: str | None
    since_ms: int | None
    until_ms: int | None
    bad: list[CorruptRecord]
    error: str = ""  # lower-cased as Lua lower-cases the job's error

    def needs_record(self) -> bool:
        return (self.key is not None or self.since_ms is not None or self.until_ms is not None
                or self.state in (State.PENDING, State.RETRY) or self.error != "")

    def valid_id(self, job_id: str) -> bool:
        """Whether an index member is a job id (a forged one goes to `bad`)."""
        return indexed_job_key(job_id, self.bad) is not None

"""Per-minute history of job types, for plots (shared by the CLI and the admin API).

The transition scripts keep the counters (`hist_add` in `supervisor/engine/lua/lib.lua`): one
Redis hash per type and minute, expiring after 25 h, with counts of enqueued (`e`), completed
(`c`), failed (`f`), dead (`d`) and retried (`r`) jobs, and run times (`R<b>`) and queue waits
(`W<b>`) counted in log-scale buckets, 4 per doubling. Percentiles come from those buckets (each
read as its geometric middle: within 9% of the true value), and buckets of several types or
minutes add up, so totals across types are exact merges, not averages of percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from supervisor.engine import keys

if TYPE_CHECKING:
    import redis.asyncio as aioredis

#: Longest window kept (minutes): the hashes expire after 25 h.
MAX_MINUTES = 1440
COUNTS = {"e": "enqueued", "c": "completed", "f": "failed", "d": "dead", "r": "retried"}
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def history_key(name: str, minute: int) -> str:
    """The hash of one type's counters for one minute (`minute` = epoch ms // 60000)."""
    return keys.index_key(name, f"hist:{minute}")


def bucket_ms(bucket: int) -> float:
    """The duration a bucket stands for: the geometric middle of [2^((b-1)/4), 2^(b/4)) ms (0: under 1 ms)."""
    return 0.5 if bucket <= 0 else 2 ** ((bucket - 0.5) / 4)


def percentiles(buckets: dict[int, int]) -> dict[str, float | None]:
    """p50/p95/p99 (ms, 3 significant digits) of the durations counted in `buckets`; None when empty."""
    total = sum(buckets.values())
    out: dict[str, float | None] = dict.fromkeys(QUANTILES)
    if not total:
        return out
    ordered = sorted(buckets.items())
    for name, q in QUANTILES.items():
        rank, seen = max(math.ceil(q * total), 1), 0
        for bucket, n in ordered:
            seen += n
            if seen >= rank:
                value = bucket_ms(bucket)
                out[name] = float(f"{value:.3g}")
                break
    return out


class _Minute:
    """The counters of one minute (of one type, or merged over several)."""

    __slots__ = ("counts", "run", "wait")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTS.values(), 0)
        self.run: dict[int, int] = {}
        self.wait: dict[int, int] = {}

    def add(self, fields: dict[str, str]) -> None:
        for field, value in fields.items():
            try:
                n = int(value)
            except ValueError:
                continue  # not ours: skipped, never an error
            if field in COUNTS:
                self.counts[COUNTS[field]] += n
            elif field[:1] in ("R", "W") and field[1:].isdigit():
                into = self.run if field[0] == "R" else self.wait
                into[int(field[1:])] = into.get(int(field[1:]), 0) + n

    def merge(self, other: _Minute) -> None:
        for k, v in other.counts.items():
            self.counts[k] += v
        for mine, theirs in ((self.run, other.run), (self.wait, other.wait)):
            for b, n in theirs.items():
                mine[b] = mine.get(b, 0) + n

    def point(self, minute: int) -> dict[str, Any]:
        at = datetime.fromtimestamp(minute * 60, UTC).isoformat()
        return {"minute": at, **self.counts, "run_ms": percentiles(self.run), "wait_ms": percentiles(self.wait)}


async def _minutes(redis: aioredis.Redis, names: list[str], minutes: int) -> tuple[list[int], list[list[_Minute]]]:
    """The last `minutes` minutes (ending with the current one, by Redis's clock) of each type."""
    now_s, _us = await redis.time()
    last = int(now_s) // 60
    span = list(range(last - minutes + 1, last + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            for minute in span:
                pipe.hgetall(history_key(name, minute))
        rows = await pipe.execute(raise_on_error=False)
    per_type = []
    for i in range(len(names)):
        got = []
        for row in rows[i * len(span):(i + 1) * len(span)]:
            m = _Minute()
            if isinstance(row, dict):  # a WRONGTYPE error (another program's key) reads as empty
                m.add(row)
            got.append(m)
        per_type.append(got)
    return span, per_type


async def type_history(redis: aioredis.Redis, name: str, minutes: int = 60) -> dict[str, Any]:
    """One type's points, oldest first, one per minute (see `HistoryOut`)."""
    span, (got,) = await _minutes(redis, [name], minutes)
    return {"type": name, "minutes": minutes, "points": [m.point(t) for t, m in zip(span, got, strict=True)]}


async def all_history(redis: aioredis.Redis, names: Iterable[str], minutes: int = 60) -> dict[str, Any]:
    """Every type's points and their totals (buckets merged, so total percentiles are exact merges)."""
    names = sorted(names)
    span, per_type = await _minutes(redis, names, minutes)
    totals = [_Minute() for _ in span]
    for got in per_type:
        for total, m in zip(totals, got, strict=True):
            total.merge(m)
    return {"minutes": minutes,
            "totals": [m.point(t) for t, m in zip(span, totals, strict=True)],
            "types": {n: [m.point(t) for t, m in zip(span, got, strict=True)] for n, got in zip(names, per_type,
                                                                                                 strict=True)}}

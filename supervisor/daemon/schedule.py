"""Cron schedules as pure computation: which ticks exist, and which are due now.

This module owns the *meaning* of a schedule; it does no I/O (no Redis, no
asyncio, no clock of its own: every function takes `now`). The scheduler loop
(elsewhere) asks `due_ticks` what to enqueue, enqueues each tick with the
idempotency key `tick_key` so that any number of instances enqueue it once, and
keeps the last fired tick per schedule in Redis.

Cron syntax
    * 5 fields: ``minute hour day-of-month month day-of-week`` (``0 * * * *``).
    * 6 fields: the extra **seconds field comes first**, as in Quartz and
      Spring: ``second minute hour day-of-month month day-of-week``
      (``*/10 * * * * *`` = every 10 seconds, ``30 0 * * * *`` = at second 30
      of minute 0 of every hour). croniter's own default puts seconds last; we
      always pass ``second_at_beginning=True``.
    * Aliases: ``@yearly @annually @monthly @weekly @daily @midnight @hourly``.
    * croniter's field syntax otherwise (lists, ranges, steps, names like
      ``mon``/``jan``, ``L``, ``W``, ``#``). Random (``R``) and hashed (``H``)
      values are refused: every instance must compute the same ticks.
    * Day-of-month and day-of-week both restricted means either (classic cron).

Time representation
    Ticks are epoch seconds as ``float`` (always integral), the form the
    Redis side stores. `next_fire_times` returns aware datetimes in the
    schedule's timezone, for display.

Timezones and DST (IANA names, `zoneinfo`)
    A cron expression names wall-clock times. Twice a year some wall times do
    not exist (spring forward) or exist twice (fall back). Every tick is a
    distinct instant and ticks are strictly increasing; the rule depends on
    the hour field, as in ISC/Vixie cron:

    * **Hour field covers every hour** (``*/5 * * * *``, ``0 * * * *``,
      ``* * * * * *``): the schedule follows elapsed time. It fires at every
      instant whose local wall time matches, so wall times that do not exist
      are skipped and the repeated hour fires in both passes. ``0 * * * *``
      stays exactly 60 minutes apart across both changes.
    * **Specific hours** (``0 2 * * *``, ``30 1 * * *``, ``*/15 1-3 * * *``):
      the schedule follows the wall clock; each matching wall time fires
      once. A wall time that does not exist fires once, at the instant the
      clock jumps (``0 2 * * *`` in Europe/Berlin on 2026-03-29 fires at
      03:00 CEST = 01:00 UTC; several skipped wall times collapse into that
      one tick). A wall time that happens twice fires at its first occurrence
      only (``30 1 * * *`` in America/New_York on 2026-11-01 fires at
      01:30 EDT = 05:30 UTC, not again at 01:30 EST).

    croniter's own timezone support fires ``0 2 * * *`` twice on a fall-back
    night, so it is only used on naive wall-clock times here; the mapping to
    instants is ours.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from supervisor.daemon.schedule_spec import (
    ALIASES,
    CRON_FIX,
    DEFAULT_FIRST_RUN_GRACE_S,
    DEFAULT_ON_TIME_S,
    UNKNOWN_SOURCE,
    Misfire,
    ScheduleError,
    ScheduleSpec,
    zone_cached,
)

__all__ = [
    "DEFAULT_FIRST_RUN_GRACE_S",
    "DEFAULT_ON_TIME_S",
    "Misfire",
    "ScheduleError",
    "ScheduleSpec",
    "due_ticks",
    "latest_tick",
    "next_fire_times",
    "next_tick",
    "seconds_until_next",
    "tick_key",
]

_DAY_S = 86_400
#: A clock turned back less than this long ago may still be repeating wall times.
_FALL_BACK_LOOKBACK_S = 6 * 3600
#: `latest_tick` looks back at most this far (croniter's own search horizon).
_MAX_LOOKBACK_S = 50 * 366 * _DAY_S


# --- the tick engine -----------------------------------------------------------------
#
# Integers throughout: `t`/`u` are instants (epoch seconds), `w`/`cursor` are
# wall-clock times as naive seconds since 1970-01-01 00:00 (wall = t + offset).


@dataclass(eq=False)
class _Compiled:
    """A parsed cron expression in one timezone; shared by every spec that uses it."""

    expr: str
    tz: ZoneInfo
    every_hour: bool
    _iter: croniter
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_wall(self, cursor: int) -> int:
        """First matching wall time strictly after wall time `cursor`."""
        with self._lock:  # the croniter object keeps state between calls
            try:
                return int(self._iter.get_next(float, start_time=float(cursor)))
            except CroniterBadDateError:
                raise ScheduleError(
                    UNKNOWN_SOURCE, "cron", self.expr,
                    "fires no more within croniter's 50-year horizon", CRON_FIX,
                ) from None


@functools.lru_cache(maxsize=1024)
def _compile(expr: str, tz_name: str) -> _Compiled:
    cron = ALIASES.get(expr, expr)
    it = croniter(cron, 0.0, second_at_beginning=True)
    hours = it.expanded[1]  # croniter moves a leading seconds field to the end
    every_hour = hours == ["*"] or set(hours) >= set(range(24))
    return _Compiled(expr=expr, tz=zone_cached(tz_name), every_hour=every_hour, _iter=it)


def _compiled(spec: ScheduleSpec) -> _Compiled:
    return _compile(spec.cron, spec.timezone)


def _offset(tz: ZoneInfo, t: int) -> int:
    """UTC offset in seconds at instant `t`."""
    off = datetime.fromtimestamp(t, tz).utcoffset()
    assert off is not None  # a ZoneInfo always has one
    return int(off.total_seconds())


def _first_change(tz: ZoneInfo, a: int, b: int) -> int | None:
    """First instant in (a, b] whose UTC offset differs from the one at `a`."""
    base = _offset(tz, a)
    lo = a
    while lo < b:
        # Probe a day at a time (zones never change offset twice in a day),
        # then bisect to the second.
        hi = min(lo + _DAY_S, b)
        if _offset(tz, hi) != base:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(tz, mid) == base:
                    lo = mid
                else:
                    hi = mid
            return hi
        lo = hi
    return None


def _replayed_wall_end(tz: ZoneInfo, t: int) -> int | None:
    """If the clock was turned back shortly before `t`, the last wall second before it was."""
    probe = t - _FALL_BACK_LOOKBACK_S
    before = _offset(tz, probe)
    if before <= _offset(tz, t):
        return None
    turned = _first_change(tz, probe, t)
    assert turned is not None
    return turned + before - 1


@functools.lru_cache(maxsize=8192)
def _next_tick(c: _Compiled, after: int) -> int:
    """First tick strictly after instant `after` (see the module docstring for DST)."""
    tz = c.tz
    cur = after
    off = _offset(tz, cur)
    cursor = cur + off
    if not c.every_hour:
        # In the second pass of a repeated hour, wall times up to the moment
        # the clock was turned back already fired in the first pass.
        replayed = _replayed_wall_end(tz, cur)
        if replayed is not None:
            cursor = max(cursor, replayed)
    while True:
        w = c.next_wall(cursor)
        u = w - off
        change = _first_change(tz, cur, u)
        if change is None:
            return u
        new_off = _offset(tz, change)
        wall_after_change = change + new_off
        if new_off > off:  # clock jumps forward: walls [change+off, wall_after_change) don't exist
            if not c.every_hour and w < wall_after_change:
                return change  # a skipped wall time fires when the clock jumps
            cursor = max(cursor, wall_after_change - 1)
        elif c.every_hour:  # clock turned back: the repeated walls fire again
            cursor = wall_after_change - 1
        # else: specific hours fired the repeated walls in the first pass; keep the cursor.
        cur, off = change, new_off


def _latest_at_or_before(c: _Compiled, now: int, floor: int | None = None) -> int | None:
    """Latest tick <= `now` (and > `floor` when given), or None."""
    # g(x) := there is a tick in (x, now]. g is true below the answer and false
    # from it on; gallop down from `now`, then bisect. O(log(now - answer)) steps.
    hi = now  # g(hi) is false
    lo: int | None = None
    step = 1
    while lo is None:
        x = now - step
        if floor is not None and x <= floor:
            x = floor
        elif step > _MAX_LOOKBACK_S:
            return None
        t = _next_tick(c, x)
        if t <= now:
            lo = t - 1  # g(t - 1) is true: t is in (t - 1, now]
        elif x == floor:
            return None
        else:
            hi = x
            step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        t = _next_tick(c, mid)
        if t <= now:
            lo = max(mid, t - 1)
        else:
            hi = mid
    return _next_tick(c, lo)


# --- public API ----------------------------------------------------------------------


def next_tick(spec: ScheduleSpec, after: float) -> float:
    """The first tick strictly after `after`.

    Args:
        spec: the schedule.
        after: epoch seconds.

    Returns:
        The tick, in epoch seconds (integral).
    """
    return float(_next_tick(_compiled(spec), math.floor(after)))


def latest_tick(spec: ScheduleSpec, now: float) -> float | None:
    """The latest tick at or before `now`, fired or not.

    Use it as the baseline to store on first start, or after `due_ticks`
    dropped missed ticks (``misfire="skip"``), so they are not reconsidered.

    Args:
        spec: the schedule.
        now: epoch seconds.

    Returns:
        The tick in epoch seconds, or None if the expression matched nothing
        in the last 50 years.
    """
    tick = _latest_at_or_before(_compiled(spec), math.floor(now))
    return None if tick is None else float(tick)


def next_fire_times(spec: ScheduleSpec, after: datetime, count: int) -> list[datetime]:
    """The next `count` fire times strictly after `after`, for display.

    Args:
        spec: the schedule.
        after: an aware datetime (any timezone).
        count: how many fire times to return (>= 0).

    Returns:
        Aware datetimes in the schedule's timezone, strictly increasing. A
        repeated wall time carries the right ``fold``.

    Raises:
        ValueError: if `after` is naive or `count` is negative.
    """
    if after.tzinfo is None or after.utcoffset() is None:
        raise ValueError("next_fire_times needs an aware datetime (e.g. datetime.now(UTC))")
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    c = _compiled(spec)
    t = math.floor(after.timestamp())
    out: list[datetime] = []
    for _ in range(count):
        t = _next_tick(c, t)
        out.append(datetime.fromtimestamp(t, c.tz))
    return out


def due_ticks(
    spec: ScheduleSpec,
    last_fired: float | None,
    now: float,
    *,
    on_time_s: float = DEFAULT_ON_TIME_S,
    first_run_grace_s: float = DEFAULT_FIRST_RUN_GRACE_S,
) -> list[float]:
    """The ticks to enqueue now (zero or one of them).

    Rules:

    * **Never fired** (``last_fired is None``, a schedule's first ever start):
      no backlog. Only a tick in ``(now - first_run_grace_s, now]`` fires,
      i.e. the daemon came up right at a tick. When nothing fires, store
      ``latest_tick(spec, now)`` as the baseline so that the next tick is
      judged by the rules below even if the loop runs late.
    * **Normal operation**: the one tick in ``(last_fired, now]`` fires.
    * **Several ticks, or one late tick, in** ``(last_fired, now]`` (downtime):
      ``run-once`` fires only the latest of them (one catch-up job);
      ``skip`` fires the latest only if it is on time
      (``now - tick <= on_time_s``), and drops the rest. Store
      ``latest_tick(spec, now)`` after dropping, so they are not reconsidered.
    * ``last_fired`` in the future (clock skew between instances): nothing.

    Args:
        spec: the schedule.
        last_fired: the last tick enqueued (epoch seconds), None if never.
        now: epoch seconds.
        on_time_s: how late a tick may be and still count as on time (``skip``).
        first_run_grace_s: how old the current tick may be on first start.

    Returns:
        The ticks to enqueue, in epoch seconds (integral); store the largest as
        the new ``last_fired`` once enqueued.
    """
    c = _compiled(spec)
    now_i = math.floor(now)
    floor = math.floor(last_fired if last_fired is not None else now - first_run_grace_s)
    first = _next_tick(c, floor)
    if first > now_i:  # the common case: nothing due, one cached lookup
        return []
    latest = first if _next_tick(c, first) > now_i else _latest_at_or_before(c, now_i, first)
    assert latest is not None  # `first` itself qualifies
    if last_fired is not None and spec.misfire == "skip" and now - latest > on_time_s:
        return []
    return [float(latest)]


def tick_key(spec: ScheduleSpec, tick: float) -> str:
    """Idempotency key for enqueueing `tick`: the same on every instance.

    Args:
        spec: the schedule.
        tick: a tick in epoch seconds.

    Returns:
        ``"schedule:{spec.id}:{int(tick)}"``.
    """
    return f"schedule:{spec.id}:{int(tick)}"


def seconds_until_next(spec: ScheduleSpec, now: float) -> float:
    """Seconds from `now` to the first tick strictly after it (always > 0).

    Args:
        spec: the schedule.
        now: epoch seconds.

    Returns:
        The delay in seconds.
    """
    return next_tick(spec, now) - now


"""Unit tests for supervisor.daemon.schedule: cron syntax, DST, due ticks, validation."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from supervisor.daemon.schedule import (
    ScheduleError,
    ScheduleSpec,
    due_ticks,
    latest_tick,
    next_fire_times,
    next_tick,
    seconds_until_next,
    tick_key,
)
from supervisor.errors import SupervisorError

SOURCE = "jobs/cleanup.py"


def spec(cron: str, tz: str = "UTC", **kw: Any) -> ScheduleSpec:
    return ScheduleSpec(job="cleanup", cron=cron, timezone=tz, source=SOURCE, **kw)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def ts(*args: int) -> float:
    return utc(*args).timestamp()


def utc_times(s: ScheduleSpec, after: datetime, count: int) -> list[datetime]:
    return [d.astimezone(UTC) for d in next_fire_times(s, after, count)]


# --- syntax --------------------------------------------------------------------------


def test_five_field_next_fire_times() -> None:
    assert utc_times(spec("0 * * * *"), utc(2026, 5, 4, 10, 15), 3) == [
        utc(2026, 5, 4, 11), utc(2026, 5, 4, 12), utc(2026, 5, 4, 13),
    ]
    assert utc_times(spec("*/15 9-10 * * mon-fri"), utc(2026, 5, 8, 10, 40), 3) == [
        utc(2026, 5, 8, 10, 45), utc(2026, 5, 11, 9, 0), utc(2026, 5, 11, 9, 15),
    ]


def test_next_fire_times_are_strictly_after() -> None:
    assert utc_times(spec("0 * * * *"), utc(2026, 5, 4, 11), 1) == [utc(2026, 5, 4, 12)]


def test_six_fields_put_seconds_first() -> None:
    assert utc_times(spec("30 0 * * * *"), utc(2026, 5, 4, 10, 15), 2) == [
        utc(2026, 5, 4, 11, 0, 30), utc(2026, 5, 4, 12, 0, 30),
    ]
    assert utc_times(spec("*/15 * * * * *"), utc(2026, 5, 4, 10, 15, 5), 3) == [
        utc(2026, 5, 4, 10, 15, 15), utc(2026, 5, 4, 10, 15, 30), utc(2026, 5, 4, 10, 15, 45),
    ]
    assert utc_times(spec("* * * * * *"), utc(2026, 5, 4, 10, 15, 59), 2) == [
        utc(2026, 5, 4, 10, 16, 0), utc(2026, 5, 4, 10, 16, 1),
    ]


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("@yearly", utc(2027, 1, 1)),
        ("@annually", utc(2027, 1, 1)),
        ("@monthly", utc(2026, 6, 1)),
        ("@weekly", utc(2026, 5, 10)),  # Sunday
        ("@daily", utc(2026, 5, 5)),
        ("@midnight", utc(2026, 5, 5)),
        ("@hourly", utc(2026, 5, 4, 11)),
        ("@DAILY", utc(2026, 5, 5)),
    ],
)
def test_aliases(alias: str, expected: datetime) -> None:
    s = spec(alias)
    assert s.cron == alias.lower()
    assert utc_times(s, utc(2026, 5, 4, 10, 15), 1) == [expected]


def test_fire_times_are_in_the_schedules_timezone() -> None:
    (first,) = next_fire_times(spec("0 9 * * *", "Europe/Berlin"), utc(2026, 7, 1), 1)
    assert first.tzinfo == ZoneInfo("Europe/Berlin")
    assert first.isoformat() == "2026-07-01T09:00:00+02:00"


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire_times(spec("* * * * *"), datetime(2026, 1, 1), 1)


# --- DST -----------------------------------------------------------------------------

# Spring forward: Berlin 2026-03-29 02:00 CET -> 03:00 CEST (01:00Z);
#                 New York 2026-03-08 02:00 EST -> 03:00 EDT (07:00Z).
# Fall back:      Berlin 2026-10-25 03:00 CEST -> 02:00 CET (01:00Z);
#                 New York 2026-11-01 02:00 EDT -> 01:00 EST (06:00Z).
DST_CASES = [
    # Berlin, spring: 02:00 does not exist -> fires once when the clock jumps (03:00 CEST).
    ("0 2 * * *", "Europe/Berlin", utc(2026, 3, 27, 12),
     [utc(2026, 3, 28, 1), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0)]),
    ("30 1 * * *", "Europe/Berlin", utc(2026, 3, 27, 12),
     [utc(2026, 3, 28, 0, 30), utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 23, 30)]),
    # Berlin, fall: 02:00 happens twice -> fires at the first (CEST) only.
    ("0 2 * * *", "Europe/Berlin", utc(2026, 10, 23, 12),
     [utc(2026, 10, 24, 0), utc(2026, 10, 25, 0), utc(2026, 10, 26, 1)]),
    ("30 1 * * *", "Europe/Berlin", utc(2026, 10, 23, 12),
     [utc(2026, 10, 23, 23, 30), utc(2026, 10, 24, 23, 30), utc(2026, 10, 26, 0, 30)]),
    # New York, spring: 02:00 does not exist -> 03:00 EDT = 07:00Z.
    ("0 2 * * *", "America/New_York", utc(2026, 3, 6, 12),
     [utc(2026, 3, 7, 7), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6)]),
    ("30 1 * * *", "America/New_York", utc(2026, 3, 6, 12),
     [utc(2026, 3, 7, 6, 30), utc(2026, 3, 8, 6, 30), utc(2026, 3, 9, 5, 30)]),
    # New York, fall: 01:30 happens twice -> fires at 01:30 EDT only; 02:00 EST is unique.
    ("0 2 * * *", "America/New_York", utc(2026, 10, 30, 12),
     [utc(2026, 10, 31, 6), utc(2026, 11, 1, 7), utc(2026, 11, 2, 7)]),
    ("30 1 * * *", "America/New_York", utc(2026, 10, 30, 12),
     [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]),
]


@pytest.mark.parametrize(("cron", "tz", "after", "expected"), DST_CASES)
def test_dst_exact_instants(cron: str, tz: str, after: datetime, expected: list[datetime]) -> None:
    assert utc_times(spec(cron, tz), after, len(expected)) == expected


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
@pytest.mark.parametrize("cron", ["0 2 * * *", "30 1 * * *", "30 2 * * *", "0,30 1-3 * * *"])
def test_fixed_hours_fire_once_per_wall_time_all_year(tz: str, cron: str) -> None:
    """Given a whole year of ticks, then every (date, wall time) fires exactly once."""
    s = spec(cron, tz)
    zone = ZoneInfo(tz)
    ticks = [
        datetime.fromtimestamp(t, zone)
        for t in _all_ticks(s, utc(2025, 12, 31, 12).timestamp(), 366 * 6)
        if t < utc(2026, 12, 31, 12).timestamp()
    ]
    instants = [d.timestamp() for d in ticks]
    assert instants == sorted(set(instants)), "ticks must be strictly increasing"
    assert ticks[0].date().isoformat() == "2026-01-01"
    assert ticks[-1].date().isoformat() == "2026-12-31"
    per_day = len(croniter.expand(cron)[0][0]) * len(croniter.expand(cron)[0][1])
    counts = {d.date(): 0 for d in ticks}
    for d in ticks:
        counts[d.date()] += 1
    assert len(counts) == 365  # every day fires
    short = {day: n for day, n in counts.items() if n != per_day}
    # Only the spring-forward day may have fewer (skipped wall times collapse), never more.
    assert all(n < per_day for n in short.values())
    assert len(short) <= 1
    walls = [(d.date(), d.hour, d.minute) for d in ticks]
    assert len(walls) == len(set(walls)), "a wall time fired twice"


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
def test_hourly_keeps_elapsed_time_across_both_changes(tz: str) -> None:
    """`0 * * * *` stays 3600 s apart: the skipped hour is skipped, the repeated one fires twice."""
    s = spec("0 * * * *", tz)
    ticks = [d.timestamp() for d in next_fire_times(s, utc(2026, 1, 1), 365 * 24)]
    assert all(b - a == 3600 for a, b in itertools.pairwise(ticks))


def test_sub_hourly_in_repeated_hour_fires_in_both_passes() -> None:
    s = spec("*/20 * * * *", "America/New_York")
    got = next_fire_times(s, utc(2026, 11, 1, 4, 50), 8)
    assert [d.astimezone(UTC) for d in got] == [
        utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 5, 20), utc(2026, 11, 1, 5, 40),  # 01:xx EDT
        utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 6, 20), utc(2026, 11, 1, 6, 40),  # 01:xx EST
        utc(2026, 11, 1, 7, 0), utc(2026, 11, 1, 7, 20),
    ]
    assert [d.fold for d in got] == [0, 0, 0, 1, 1, 1, 0, 0]


def test_skipped_wall_times_collapse_into_one_catch_up_tick() -> None:
    # 02:00, 02:30 and 03:00 CEST all name 01:00Z on 2026-03-29 in Berlin: one tick.
    s = spec("0,30 2,3 * * *", "Europe/Berlin")
    assert utc_times(s, utc(2026, 3, 29, 0), 3) == [
        utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 0),
    ]


# A reference model of the documented DST rules, written the slow obvious way:
# scan every minute of real time (hour field = every hour) or every minute of
# wall time (specific hours), and compare next_tick / latest_tick with it.


def _wall_matcher(cron: str) -> Callable[[datetime], bool]:
    minutes, hours, *days = croniter.expand(cron)[0]
    assert days == [["*"], ["*"], ["*"]], "the reference model ignores day fields"

    def match(wall: datetime) -> bool:
        return (minutes == ["*"] or wall.minute in minutes) and (
            hours == ["*"] or wall.hour in hours
        )

    return match


def _reference_ticks(cron: str, tz_name: str, start: datetime, end: datetime) -> list[int]:
    tz = ZoneInfo(tz_name)
    hours = croniter.expand(cron)[0][1]
    matches = _wall_matcher(cron)
    out: set[int] = set()
    if hours == ["*"]:
        t = start
        while t <= end:
            wall = t.astimezone(tz).replace(tzinfo=None)
            if matches(wall):
                out.add(int(t.timestamp()))
            t += timedelta(minutes=1)
        return sorted(out)
    wall = start.astimezone(tz).replace(tzinfo=None) - timedelta(hours=3)
    wall_end = end.astimezone(tz).replace(tzinfo=None) + timedelta(hours=3)
    while wall <= wall_end:
        if matches(wall):
            first = wall.replace(tzinfo=tz, fold=0)
            if first.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall:
                out.add(int(first.timestamp()))
            else:  # does not exist: the instant the clock jumped past it
                jump = int(first.timestamp())
                while datetime.fromtimestamp(jump - 60, tz).replace(tzinfo=None) >= wall:
                    jump -= 60
                out.add(jump)
        wall += timedelta(minutes=1)
    return sorted(t for t in out if start.timestamp() <= t <= end.timestamp())


TRANSITIONS = [
    ("Europe/Berlin", utc(2026, 3, 28, 12)),
    ("Europe/Berlin", utc(2026, 10, 24, 12)),
    ("America/New_York", utc(2026, 3, 7, 18)),
    ("America/New_York", utc(2026, 10, 31, 18)),
]


@pytest.mark.parametrize(("tz", "start"), TRANSITIONS)
@pytest.mark.parametrize(
    "cron", ["*/20 * * * *", "15 * * * *", "* 1 * * *", "0,30 2,3 * * *", "45 1-3 * * *"]
)
def test_matches_reference_model_around_transitions(tz: str, start: datetime, cron: str) -> None:
    end = start + timedelta(days=1)
    expected = _reference_ticks(cron, tz, start, end)
    s = spec(cron, tz)
    got = [int(d.timestamp()) for d in next_fire_times(s, start - timedelta(seconds=1), 400)]
    assert [t for t in got if t <= end.timestamp()] == expected
    rng = random.Random(f"{cron}{tz}")  # noqa: S311  (seeded test data, not a secret)
    lo, hi = int(start.timestamp()), int(end.timestamp()) - 3 * 3600
    for x in [rng.randrange(lo, hi) for _ in range(150)] + [t + d for t in expected for d in (-1, 0)]:
        assert next_tick(s, x) == min(t for t in got if t > x), x
        if x >= expected[0]:
            assert latest_tick(s, x) == max(t for t in expected if t <= x), x


# --- due_ticks -----------------------------------------------------------------------


def test_first_start_fires_no_backlog() -> None:
    s = spec("0 * * * *")
    assert due_ticks(s, None, ts(2026, 5, 4, 10, 30)) == []
    assert due_ticks(s, None, ts(2026, 5, 4, 10, 0, 2)) == []  # 2 s late: not "now"


def test_first_start_fires_the_current_tick_when_exactly_now() -> None:
    s = spec("0 * * * *")
    assert due_ticks(s, None, ts(2026, 5, 4, 10)) == [ts(2026, 5, 4, 10)]
    assert due_ticks(s, None, ts(2026, 5, 4, 10) + 0.4) == [ts(2026, 5, 4, 10)]


def test_first_start_baseline_then_normal_operation() -> None:
    """Given a first start with nothing due, storing latest_tick makes the next tick count."""
    s = spec("0 * * * *")
    baseline = latest_tick(s, ts(2026, 5, 4, 10, 30))
    assert baseline == ts(2026, 5, 4, 10)
    assert due_ticks(s, baseline, ts(2026, 5, 4, 10, 59, 59)) == []
    assert due_ticks(s, baseline, ts(2026, 5, 4, 11, 0, 3)) == [ts(2026, 5, 4, 11)]


@pytest.mark.parametrize("misfire", ["run-once", "skip"])
def test_normal_operation_fires_each_tick_once(misfire: str) -> None:
    s = spec("*/5 * * * * *", misfire=misfire)
    last = ts(2026, 5, 4, 10)
    fired = []
    now = last
    while now < last + 30:
        now += 0.25
        for tick in due_ticks(s, fired[-1] if fired else last, now):
            fired.append(tick)
    assert fired == [last + 5 * i for i in range(1, 7)]


def test_due_tick_exactly_at_now_and_not_before() -> None:
    s = spec("0 * * * *")
    last = ts(2026, 5, 4, 10)
    assert due_ticks(s, last, ts(2026, 5, 4, 11) - 0.001) == []
    assert due_ticks(s, last, ts(2026, 5, 4, 11)) == [ts(2026, 5, 4, 11)]
    assert due_ticks(s, ts(2026, 5, 4, 11), ts(2026, 5, 4, 11, 0, 0) + 0.5) == []


def test_run_once_catches_up_once_with_the_latest_missed_tick() -> None:
    s = spec("0 * * * *", misfire="run-once")
    last = ts(2026, 5, 4, 2)
    now = ts(2026, 5, 4, 9, 17)  # down for 7 ticks
    assert due_ticks(s, last, now) == [ts(2026, 5, 4, 9)]
    assert due_ticks(s, ts(2026, 5, 4, 9), now) == []  # once


def test_run_once_catches_up_a_single_late_tick() -> None:
    s = spec("0 * * * *")
    assert due_ticks(s, ts(2026, 5, 4, 8), ts(2026, 5, 4, 9, 10)) == [ts(2026, 5, 4, 9)]


def test_skip_drops_missed_ticks() -> None:
    s = spec("0 * * * *", misfire="skip")
    last = ts(2026, 5, 4, 2)
    assert due_ticks(s, last, ts(2026, 5, 4, 9, 17)) == []
    assert due_ticks(s, ts(2026, 5, 4, 8), ts(2026, 5, 4, 9, 0, 30)) == []  # one tick, late


def test_skip_still_fires_the_on_time_tick_after_downtime() -> None:
    s = spec("0 * * * *", misfire="skip")
    now = ts(2026, 5, 4, 9) + 0.5
    assert due_ticks(s, ts(2026, 5, 4, 2), now) == [ts(2026, 5, 4, 9)]
    assert due_ticks(s, ts(2026, 5, 4, 2), ts(2026, 5, 4, 9, 0, 5), on_time_s=10) == [
        ts(2026, 5, 4, 9)
    ]


def test_last_fired_in_the_future_fires_nothing() -> None:
    s = spec("* * * * * *")
    now = ts(2026, 5, 4, 9)
    assert due_ticks(s, now + 3, now) == []


def test_long_downtime_of_a_per_second_schedule_is_cheap() -> None:
    s = spec("* * * * * *")
    now = ts(2026, 5, 11, 9) + 0.2
    started = time.perf_counter()
    assert due_ticks(s, ts(2026, 5, 4, 9), now) == [ts(2026, 5, 11, 9)]
    assert time.perf_counter() - started < 0.5


def test_catch_up_after_downtime_across_dst() -> None:
    s = spec("0 2 * * *", "Europe/Berlin")
    # Last fired 2026-10-24 02:00 CEST, back up on the 26th at noon: one catch-up (the 26th).
    assert due_ticks(s, ts(2026, 10, 24, 0), ts(2026, 10, 26, 12)) == [ts(2026, 10, 26, 1)]
    # Fired at 02:00 CEST on the 25th; during the repeated 02:xx CET nothing is due.
    assert due_ticks(s, ts(2026, 10, 25, 0), ts(2026, 10, 25, 1, 30)) == []


def test_tick_key_and_seconds_until_next() -> None:
    s = spec("0 * * * *")
    assert tick_key(s, ts(2026, 5, 4, 10)) == f"schedule:cleanup@0 * * * *@UTC:{int(ts(2026, 5, 4, 10))}"
    assert tick_key(s, ts(2026, 5, 4, 10)) == tick_key(spec("0  *  * * *"), ts(2026, 5, 4, 10))
    assert seconds_until_next(s, ts(2026, 5, 4, 10, 59, 30)) == 30.0
    assert seconds_until_next(s, ts(2026, 5, 4, 11)) == 3600.0
    assert seconds_until_next(spec("* * * * * *"), ts(2026, 5, 4, 11) + 0.75) == pytest.approx(0.25)


def test_repeated_calls_are_cheap() -> None:
    s = spec("*/5 * * * * *")
    last = ts(2026, 5, 4, 10)
    started = time.perf_counter()
    for i in range(2000):
        due_ticks(s, last, last + 1 + (i % 4))
        seconds_until_next(s, last + i)
    assert time.perf_counter() - started < 1.0


# --- the spec ------------------------------------------------------------------------


def test_spec_defaults_id_and_payload() -> None:
    s = spec("0 * * * *")
    assert s.timezone == "UTC"
    assert s.misfire == "run-once"
    assert s.id == "cleanup@0 * * * *@UTC"
    assert s.effective_payload == {}
    named = ScheduleSpec.parse(
        {"job": "reports.build", "cron": "@daily", "payload": {"kind": "full"}},
        source="config/job-supervisor.toml [schedules.nightly]", name="nightly",
    )
    assert named.id == "nightly"
    assert named.effective_payload == {"kind": "full"}
    assert tick_key(named, 60.0) == "schedule:nightly:60"
    assert hash(named) == hash(named.model_copy())
    with pytest.raises((TypeError, ValueError)):
        named.cron = "* * * * *"  # type: ignore[misc]


BAD_CRONS = [
    ("* * * *", "has 4 fields"),
    ("* * * * * * *", "has 7 fields"),
    ("", "is empty"),
    ("every hour", "has 2 fields"),
    ("a b c d e", "minute field 'a'"),
    ("61 * * * *", "minute 61 out of range 0-59"),
    ("* 24 * * *", "hour 24 out of range 0-23"),
    ("* * 0 * *", "day-of-month 0 out of range 1-31"),
    ("* * * 13 *", "month 13 out of range 1-12"),
    ("* * * * 8", "day-of-week 8 out of range 0-7"),
    ("60 * * * * *", "second 60 out of range 0-59"),
    ("1-70 * * * *", "minute 70 out of range 0-59"),
    ("*/0 * * * *", "step '0'"),
    ("1,,2 * * * *", "empty list item"),
    ("R * * * *", "random (R) and hashed (H)"),
    ("H * * * *", "random (R) and hashed (H)"),
    ("@reboot", "unknown alias '@reboot'"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 * * 1#6", "day-of-week field '1#6'"),
    ("1.5 * * * *", "minute field '1.5'"),
]


@pytest.mark.parametrize(("cron", "reason"), BAD_CRONS)
def test_bad_cron_raises_schedule_error(cron: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        spec(cron)
    err = caught.value
    assert isinstance(err, SupervisorError)
    assert err.code == "schedule_invalid"
    assert (err.source, err.field, err.value) == (SOURCE, "cron", cron)
    msg = str(err)
    assert msg.startswith(f"{SOURCE}: schedule field 'cron' = {cron!r}: ")
    assert reason in msg
    assert "5-field cron like '0 * * * *'" in msg and "seconds first" in msg


def test_bad_cron_message_matches_the_documented_shape() -> None:
    with pytest.raises(ScheduleError) as caught:
        spec("61 * * * *")
    assert str(caught.value).startswith(
        "jobs/cleanup.py: schedule field 'cron' = '61 * * * *': minute 61 out of range 0-59; "
        "use a 5-field cron like '0 * * * *'"
    )


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", "../../etc/passwd", "Europe/Berlin "])
def test_bad_timezone_raises_schedule_error(tz: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        spec("0 * * * *", tz)
    msg = str(caught.value)
    assert caught.value.field == "timezone"
    assert msg.startswith(f"{SOURCE}: schedule field 'timezone' = {tz!r}: ")
    assert "IANA" in msg


@pytest.mark.parametrize("misfire", ["once", "run_once", "", None, 1])
def test_bad_misfire_raises_schedule_error(misfire: Any) -> None:
    with pytest.raises(ScheduleError) as caught:
        spec("0 * * * *", misfire=misfire)
    msg = str(caught.value)
    assert caught.value.field == "misfire"
    assert msg.startswith(f"{SOURCE}: schedule field 'misfire' = {misfire!r}: ")
    assert "'run-once'" in msg and "'skip'" in msg


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"cron": "0 * * * *"}, "job"),
        ({"job": "x", "cron": "0 * * * *", "misfires": "skip"}, "misfires"),
        ({"job": "x", "cron": 5}, "cron"),
        ({"job": "x", "cron": "0 * * * *", "timezone": 5}, "timezone"),
        ({"job": "x", "cron": "0 * * * *", "payload": [1]}, "payload"),
        ({"job": "", "cron": "0 * * * *"}, "job"),
    ],
)
def test_any_other_bad_field_raises_schedule_error_too(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        ScheduleSpec.parse(data, source="config/job-supervisor.toml [schedules.x]")
    assert caught.value.field == field
    assert str(caught.value).startswith(
        f"config/job-supervisor.toml [schedules.x]: schedule field {field!r} = "
    )


def _all_ticks(s: ScheduleSpec, start: float, n: int) -> Iterator[float]:
    t = start
    for _ in range(n):
        t = next_tick(s, t)
        yield t


def test_next_tick_chain_equals_next_fire_times() -> None:
    s = spec("*/7 1-3 * * *", "America/New_York")
    start = utc(2026, 10, 31, 20)
    assert list(_all_ticks(s, start.timestamp(), 60)) == [
        d.timestamp() for d in next_fire_times(s, start, 60)
    ]

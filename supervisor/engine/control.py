"""Queue control: pausing a job type, and operator actions on every job that matches a filter.

Pause is one flag per type in the type's slot (`js:{tag}:<type>:paused`, set by `lua/pause.lua`):
`lua/claim.lua` claims nothing while it exists; enqueues are still accepted. Bulk actions
(`bulk`) run `lua/bulk.lua` over one index set of one type at a time, scanning at most `BATCH`
entries and acting on at most `ACT_BATCH` jobs per call, so a filter over a million records
never holds Redis for long; each job is acted on
by the single-job action (`lua/actions.lua`), which records it in the job's history.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from supervisor.engine import keys
from supervisor.engine.broker import Broker
from supervisor.engine.states import FINISHED, TRANSITIONS, State

#: Index entries one bulk script call scans at most (what bounds the time Redis is held), and jobs
#: it acts on at most: an action costs ~30-75 µs a job in Redis (more with the append-only file),
#: so a call holds Redis for a few ms (bench `control` measures it).
BATCH = 500
ACT_BATCH = 100

#: The states each bulk action takes.
ACTION_STATES: dict[str, frozenset[State]] = {
    "retry": frozenset({State.FAILED}),
    "replay": frozenset({State.DEAD}),
    "dismiss": frozenset({State.DEAD}),
    # at once for a queued job; an active one is told (cancellation requested)
    "cancel": frozenset(s for s, to in TRANSITIONS.items() if State.CANCELLED in to),
    "delete": frozenset(s for s in State if s is not State.ACTIVE),
    "purge": FINISHED,
}
BULK_ACTIONS = tuple(ACTION_STATES)


@dataclass(frozen=True, slots=True)
class PauseState:
    """A type's paused flag: `at` (when), `source` (cli, api, client) and `by` (who) while paused."""

    name: str
    paused: bool
    changed: bool = False
    at: datetime | None = None
    source: str = ""
    by: str = ""

    def to_dict(self) -> dict[str, Any]:
        info = {"at": self.at.isoformat(), "source": self.source, "by": self.by or None} if self.at else None
        return {"name": self.name, "paused": self.paused, "changed": self.changed, "paused_info": info}


def _pause_state(name: str, changed: int, at: str, source: str, by: str) -> PauseState:
    when = datetime.fromtimestamp(int(at) / 1000, UTC) if at.isdigit() else None
    return PauseState(name, bool(at), bool(changed), when, source, by)


async def set_paused(broker: Broker, name: str, paused: bool, *, source: str = "client", by: str = "") -> PauseState:
    """Pause (or resume) `name` on every instance; idempotent (`changed` says whether it did anything)."""
    changed, at, src, who = await broker.run_type_script("pause", name, ["pause" if paused else "resume", source, by])
    return _pause_state(name, changed, str(at), str(src), str(who))


async def paused_states(broker: Broker, names: Iterable[str]) -> dict[str, PauseState]:
    """The paused flag of each of `names`, read in one pipeline."""
    names = list(names)
    async with broker.redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.index_key(name, "paused"), ["at", "source", "by"])
        rows = await pipe.execute(raise_on_error=False)
    out = {}
    for name, row in zip(names, rows, strict=True):
        at, source, by = ("", "", "") if isinstance(row, Exception) else (v or "" for v in row)
        out[name] = _pause_state(name, 0, at, source, by)
    return out


@dataclass
class BulkFilter:
    """Which jobs a bulk action takes: every given field must match (None: any)."""

    type: str | None = None
    state: State | None = None
    key: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    error: str | None = None  # a substring of the job's error, case-insensitive (ASCII letters)
    limit: int | None = None  # act on at most this many


@dataclass
class BulkReport:
    """What a bulk action did: see `BulkOut` in the API schemas."""

    action: str
    dry_run: bool
    matched: int = 0
    done: int = 0
    skipped: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    longest_call_ms: float = 0.0
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class BulkRequestError(ValueError):
    """A bulk action that cannot run as asked; `field` names what to change (action, state, type)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def bulk_states(action: str, state: State | None) -> frozenset[State]:
    """The states `action` acts on under a filter on `state`; BulkRequestError naming the fix when none."""
    if action not in ACTION_STATES:
        raise BulkRequestError("action", f"unknown bulk action {action!r}: use one of {', '.join(BULK_ACTIONS)}")
    allowed = ACTION_STATES[action]
    if state is None:
        return allowed
    if state not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise BulkRequestError("state", f"{action} does not take {state.value} jobs: filter on one of {names}, or none")
    return frozenset({state})


def _parts(states: frozenset[State]) -> list[str]:
    parts = []
    if states & {State.PENDING, State.RETRY}:
        parts += ["ready", "sched"]  # pending and retry share them; the record tells them apart
    if State.ACTIVE in states:
        parts.append("active")
    parts += [s.value for s in sorted(states - FINISHED - {State.PENDING, State.RETRY, State.ACTIVE})]  # waiting
    parts += [f"st:{s.value}" for s in sorted(states & FINISHED)]
    return parts


def ascii_lower(text: str) -> str:
    """`text` with its ASCII letters in lower case, as Lua's string.lower does to the job's error."""
    return "".join(c.lower() if c.isascii() else c for c in text)


def epoch_ms(value: datetime | None) -> int | None:
    """`value` in ms since the epoch (a naive one taken as UTC), None for None: the filters' times."""
    if value is None:
        return None
    at = value if value.tzinfo else value.replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


async def bulk(broker: Broker, action: str, flt: BulkFilter, *, dry_run: bool = False, source: str = "client",
               by: str = "", reason: str = "cancelled by operator (bulk)") -> BulkReport:
    """Run `action` on every job that matches `flt` (every published type when `flt.type` is None),
    one script call per `BATCH` index entries; `dry_run` counts without acting.

    Raises:
        ValueError: an unknown action, a state the action does not take, or purge without a type.
    """
    states = bulk_states(action, flt.state)
    if action == "purge" and not flt.type:
        raise BulkRequestError("type", "purge needs a type: purge removes the finished records of one type")
    report = BulkReport(action, dry_run)
    started = time.perf_counter()
    names = [flt.type] if flt.type else await broker.type_names()
    since, until = (epoch_ms(t) for t in (flt.since, flt.until))
    common = [",".join(["", *(s.value for s in states), ""]), "" if since is None else str(since),
              "" if until is None else str(until), flt.key or "", ascii_lower(flt.error or ""),
              "1" if dry_run else "0"]
    for name in names:
        for part in _parts(states):
            await _bulk_index(broker, report, name, part, action, common, flt.limit, source, by, reason)
    report.elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    return report


async def _bulk_index(broker: Broker, report: BulkReport, name: str, part: str, action: str, common: list[str],
                      limit: int | None, source: str, by: str, reason: str) -> None:
    """Scan one index set of one type to its end (or until `limit` jobs were acted on)."""
    score, skip = "-inf", 0
    while True:
        most = ACT_BATCH if limit is None else min(ACT_BATCH, limit - report.done)
        if most <= 0 and not report.dry_run:
            return
        size = BATCH if report.dry_run else ACT_BATCH
        args = [action, part, score, skip, size, *common, most, source, by, reason]
        t0 = time.perf_counter()
        matched, done, skipped, score, skip, counts = await broker.run_type_script("bulk", name, args)
        report.longest_call_ms = max(report.longest_call_ms, round((time.perf_counter() - t0) * 1000, 3))
        report.batches += 1
        report.matched += int(matched)
        report.done += int(done)
        report.skipped += int(skipped)
        for i in range(0, len(counts), 2):
            report.by_state[counts[i]] = report.by_state.get(counts[i], 0) + int(counts[i + 1])
        if score == "":
            return
        score, skip = str(score), int(skip)

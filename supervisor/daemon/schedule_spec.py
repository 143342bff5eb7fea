"""The schedule model: one `ScheduleSpec` (pydantic) per cron schedule, validated once.

Owns what a schedule *is*: the cron expression (5 or 6 fields, seconds first, aliases, no
random or hashed values), the timezone, the misfire policy, and `ScheduleError` naming the
field at fault and the fix. The ticks a spec names are computed in `schedule.py` (whose
docstring describes the syntax and the DST rules); its public names are importable from there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)

from supervisor.errors import SupervisorError

Misfire = Literal["run-once", "skip"]

#: On first ever start, the current tick fires only if it is at most this old.
DEFAULT_FIRST_RUN_GRACE_S = 1.0
#: With ``misfire="skip"``, a tick fires only if it is at most this late.
DEFAULT_ON_TIME_S = 1.0

ALIASES: dict[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS_5 = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELDS_6 = ("second", *_FIELDS_5)
_RANGES: dict[str, tuple[int, int]] = {
    "second": (0, 59),
    "minute": (0, 59),
    "hour": (0, 23),
    "day-of-month": (1, 31),
    "month": (1, 12),
    "day-of-week": (0, 7),  # 0 and 7 are both Sunday
}
_RANDOM_OR_HASHED = re.compile(r"^[hr](\(|/|$)", re.IGNORECASE)
CRON_FIX = (
    "use a 5-field cron like '0 * * * *' (minute hour day-of-month month day-of-week), "
    "6 fields with seconds first like '30 0 * * * *', or an alias like '@daily'"
)
_TZ_FIX = "use an IANA timezone name like 'UTC', 'Europe/Berlin' or 'America/New_York'"
_MISFIRE_FIX = "use 'run-once' (fire the latest missed tick once) or 'skip' (drop missed ticks)"
UNKNOWN_SOURCE = "<schedule>"
#: Wall-clock times are naive seconds since this (wall = instant + UTC offset).
NAIVE_EPOCH = datetime(1970, 1, 1)


class ScheduleError(SupervisorError):
    """Raised when a schedule declaration is invalid (bad cron, timezone or misfire).

    The message names where the schedule was declared, the field, the bad
    value, why it is wrong and how to fix it.
    """

    code = "schedule_invalid"

    def __init__(self, source: str, field: str, value: Any, reason: str, fix: str) -> None:
        super().__init__(f"{source}: schedule field {field!r} = {value!r}: {reason}; {fix}")
        self.source = source
        self.field = field
        self.value = value
        self.reason = reason
        self.fix = fix


class _Invalid(Exception):
    """Internal: one field is invalid; carries the reason, gets its source later."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ScheduleSpec(BaseModel):
    """One cron schedule of one job type.

    Building one validates it: a bad ``cron``, ``timezone`` or ``misfire`` (or
    any other bad field) raises `ScheduleError`, never a raw pydantic
    ``ValidationError``. The cron expression is stored normalized (single
    spaces, aliases lower-case).

    Attributes:
        job: job type name that every tick enqueues.
        cron: cron expression (see the module docstring for the syntax).
        timezone: IANA timezone the cron expression is read in.
        payload: fixed payload of every enqueued job; None means ``{}``.
        misfire: after downtime, fire the latest missed tick once
            (``"run-once"``) or drop missed ticks (``"skip"``).
        source: where the schedule was declared, for messages
            (``jobs/cleanup.py``, ``config/job-supervisor.toml [schedules.nightly]``).
        name: explicit identifier (TOML schedules); it becomes `id`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str
    cron: str
    timezone: str = "UTC"
    payload: dict[str, Any] | None = None
    misfire: Misfire = "run-once"
    source: str
    name: str | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _validate(cls, data: Any, handler: ModelWrapValidatorHandler[ScheduleSpec]) -> ScheduleSpec:
        """Check cron, timezone and misfire first, and turn every error into ScheduleError."""
        if isinstance(data, Mapping):
            data = dict(data)
            source = data.get("source")
            src = source if isinstance(source, str) and source.strip() else UNKNOWN_SOURCE
            for key in ("job", "source"):
                if key in data and not (isinstance(data[key], str) and data[key].strip()):
                    raise ScheduleError(src, key, data[key], "must be a non-empty string",
                                        f"give the schedule a {key}")
            if data.get("name") is not None and not (
                isinstance(data["name"], str) and data["name"].strip()
            ):
                raise ScheduleError(src, "name", data["name"], "must be a non-empty string",
                                    "name the schedule, or leave name out")
            if "cron" in data:
                try:
                    data["cron"] = _check_cron(data["cron"])
                except _Invalid as exc:
                    raise ScheduleError(src, "cron", data["cron"], exc.reason, CRON_FIX) from None
            if "timezone" in data:
                try:
                    _zone(_check_timezone(data["timezone"]))
                except _Invalid as exc:
                    raise ScheduleError(src, "timezone", data["timezone"], exc.reason,
                                        _TZ_FIX) from None
            if "misfire" in data and data["misfire"] not in ("run-once", "skip"):
                raise ScheduleError(src, "misfire", data["misfire"],
                                    "must be 'run-once' or 'skip'", _MISFIRE_FIX)
        else:
            src = UNKNOWN_SOURCE
        try:
            return handler(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(part) for part in err["loc"]) or "schedule"
            value = err.get("input")
            if err["type"] == "missing":
                raise ScheduleError(src, loc, None, "is required",
                                    f"add {loc} to the schedule") from None
            if err["type"] == "extra_forbidden":
                raise ScheduleError(
                    src, loc, value, "is not a schedule field",
                    "use only job, cron, timezone, payload, misfire, name",
                ) from None
            raise ScheduleError(src, loc, value, err["msg"], "fix the value's type") from None

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, source: str, name: str | None = None) -> ScheduleSpec:
        """Build a spec from a mapping (a TOML table, a handler's options).

        Args:
            data: the schedule's fields (``job``, ``cron``, optional ``timezone``,
                ``payload``, ``misfire``, ``name``).
            source: where it was declared, for error messages.
            name: identifier to use when ``data`` has none (e.g. the TOML table key).

        Returns:
            The validated spec.

        Raises:
            ScheduleError: if any field is invalid.
        """
        merged = {**data, "source": source}
        if name is not None:
            merged.setdefault("name", name)
        return cls.model_validate(merged)

    @property
    def id(self) -> str:
        """Stable identifier: ``name`` when set, else ``"{job}@{cron}@{timezone}"``."""
        if self.name is not None:
            return self.name
        return f"{self.job}@{self.cron}@{self.timezone}"

    @property
    def tz(self) -> ZoneInfo:
        """The schedule's timezone."""
        return _zone(self.timezone)

    @property
    def effective_payload(self) -> dict[str, Any]:
        """Payload of each enqueued job (a fresh copy; ``{}`` when none was given)."""
        return dict(self.payload or {})

    def __hash__(self) -> int:
        # pydantic's frozen hash would hash `payload`, a dict.
        return hash((self.id, self.source))


# --- validation ----------------------------------------------------------------------


def _check_cron(value: Any) -> str:
    """Return the normalized expression, or raise _Invalid with the reason."""
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {type(value).__name__}")
    expr = " ".join(value.split())
    if not expr:
        raise _Invalid("is empty")
    if expr.startswith("@"):
        alias = expr.lower()
        if alias not in ALIASES:
            raise _Invalid(f"unknown alias {expr!r} (known: {', '.join(ALIASES)})")
        return alias
    parts = expr.split(" ")
    names: tuple[str, ...]
    if len(parts) == 5:
        names = _FIELDS_5
    elif len(parts) == 6:
        names = _FIELDS_6
    else:
        raise _Invalid(
            f"has {len(parts)} field{'s' if len(parts) != 1 else ''}, expected 5 or 6 "
            "(6 = seconds first)"
        )
    for index, (fname, text) in enumerate(zip(names, parts, strict=True)):
        _check_field(fname, text)
        probe = ["*"] * len(parts)
        probe[index] = text
        try:
            croniter.expand(" ".join(probe), second_at_beginning=True)
        except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise _Invalid(f"{fname} field {text!r} is not valid cron syntax ({exc})") from None
    try:
        it = croniter(expr, 0.0, second_at_beginning=True)
    except (CroniterError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise _Invalid(f"is not valid cron syntax ({exc})") from None
    try:
        it.get_next(float, start_time=(datetime(2000, 1, 1) - NAIVE_EPOCH).total_seconds())
    except CroniterBadDateError:
        raise _Invalid("never fires (no matching date, e.g. February 30)") from None
    return expr


def _check_field(fname: str, text: str) -> None:
    """Friendly checks on one field; croniter has the last word on syntax."""
    low, high = _RANGES[fname]
    for item in text.split(","):
        if not item:
            raise _Invalid(f"{fname} field {text!r} has an empty list item")
        if _RANDOM_OR_HASHED.match(item):
            raise _Invalid(
                f"{fname} field {text!r}: random (R) and hashed (H) values are not supported, "
                "every instance must compute the same ticks"
            )
        base, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise _Invalid(f"{fname} step {step!r} in {text!r} must be a positive integer")
        for bound in base.split("-"):
            if bound.isdigit() and not low <= int(bound) <= high:
                raise _Invalid(f"{fname} {int(bound)} out of range {low}-{high}")


def _check_timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise _Invalid("is empty")
    return value


@functools.lru_cache(maxsize=256)
def zone_cached(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _zone(name: str) -> ZoneInfo:
    try:
        return zone_cached(name)
    except ZoneInfoNotFoundError:
        raise _Invalid("unknown timezone (not in the IANA database)") from None
    except (ValueError, TypeError, OSError) as exc:
        raise _Invalid(f"not a timezone name ({exc})") from None

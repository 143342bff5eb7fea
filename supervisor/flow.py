"""Flow-control policy: keyed concurrency, per-key queue policy, rate limits (SPEC §9).

Holds the policy models a job type declares (`key_concurrency=`, `queue=`,
`rate_limit=`; `supervisor.policy.TypePolicy` holds them), the derivation of a concurrency key from literals and JSON
pointers into the payload, and the outcome `submit` returns. Enforcement is in
the Lua scripts (enqueue admits or refuses, claim holds a slot per key and the
rate window), so it holds across every instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from supervisor.errors import InvalidPayload

StalePolicy = Literal["fail-stale", "requeue-stale"]
WhenFull = Literal["reject", "coalesce", "replace-oldest"]
Outcome = Literal["accepted", "rejected", "coalesced", "replaced"]
_PERIODS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|h)\s*$")


class KeyConcurrency(BaseModel):
    """At most `max_active` jobs with the same key run at once, across all instances."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: list[str] = Field(min_length=1, description="Literals and JSON pointers ('/origin') into the payload.")
    max_active: int = Field(1, ge=1)
    stale_policy: StalePolicy = "fail-stale"


class QueuePolicy(BaseModel):
    """How many jobs of one key may wait behind the active ones, and what happens beyond."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_queued_per_key: int = Field(0, ge=0)
    when_full: WhenFull = "reject"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` jobs of a type start per `period_ms`, in any sliding window."""

    count: int
    period_ms: int

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        m = _RATE.match(text) if isinstance(text, str) else None
        if not m or int(m.group(1)) < 1:
            raise ValueError(
                f"rate_limit={text!r} is not understood: use 'N/s', 'N/m' or 'N/h' (e.g. '100/s'), "
                "optionally with a period count like '10/5s'"
            )
        return cls(int(m.group(1)), int(m.group(2) or 1) * _PERIODS_MS[m.group(3)])

    def describe(self) -> str:
        return f"{self.count}/{self.period_ms / 1000:g}s"


def resolve_pointer(payload: Any, pointer: str) -> Any:
    """RFC 6901 JSON pointer lookup (KeyError naming the pointer when absent)."""
    value = payload
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(pointer)
    return value


def derive_key(name: str, policy: KeyConcurrency, payload: Any) -> str:
    """The concurrency key of a payload: its parts joined by ':' (pointers start with '/')."""
    parts = []
    for part in policy.key:
        if part.startswith("/"):
            try:
                value = resolve_pointer(payload, part)
            except KeyError:
                raise InvalidPayload(name, f"the concurrency key needs {part!r}, which the payload lacks") from None
            if isinstance(value, (dict, list)) or value is None:
                raise InvalidPayload(name, f"the concurrency key part {part!r} must be a string or number")
            parts.append(str(value))
        else:
            parts.append(part)
    return ":".join(parts)


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What `submit` did: the job it created or folded into, the key, and why."""

    outcome: Outcome
    job_id: str | None
    name: str
    key: str | None = None
    existing: str | None = None  # the live job of the key (rejected/coalesced) or the cancelled one (replaced)
    reason: str | None = None  # active-limit | queue-depth

    @property
    def accepted(self) -> bool:
        return self.outcome in ("accepted", "replaced")

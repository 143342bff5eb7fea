"""The job-type policy (`TypePolicy`) and its published form (`PublishedType`).

Owns every option a job type declares, with `@job(...)` or in a task's sidecar TOML (the
same names, validated here once): how it runs (runtime, concurrency, ack_wait, timeout),
retries (max_deliver, backoff), expiry (deadline, retention), flow control
(`supervisor.flow`'s models: key_concurrency, queue, rate_limit), priority and schedule.
A declared policy leaves unset options None; `resolve` fills them from the settings once,
when the daemon loads the type. `PublishedType` writes the resolved policy into the type's
meta hash and reads it back for producers. The dispatcher (`ServedType`) and the client
(`_TypeInfo`) keep views of a TypePolicy, never copies of its options.

A new option is a field of `TypePolicy` (published with the others unless listed in
`_UNPUBLISHED`), and the code that enforces it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, PlainSerializer, PlainValidator, ValidationError

from supervisor.flow import KeyConcurrency, QueuePolicy, RateLimit

if TYPE_CHECKING:
    from supervisor.config import Settings

Runtime = Literal["inprocess", "process", "subprocess"]
RUNTIMES: tuple[Runtime, ...] = ("inprocess", "process", "subprocess")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before attempt n+1 after attempt n failed.

    `delays` is an explicit list whose last value repeats; without it the delay is
    exponential: `base * 2**(n-1)` capped at `max`, with full jitter in [50 %, 100 %].
    """

    delays: tuple[float, ...] = ()
    base: float = 1.0
    max: float = 300.0
    jitter: bool = True

    @classmethod
    def parse(cls, value: Any) -> Backoff:
        if value is None or value == "exponential":
            return cls()
        if isinstance(value, Backoff):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(delays=(float(value),))
        if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            return cls(delays=tuple(float(v) for v in value))
        if isinstance(value, dict):
            unknown = set(value) - {"base", "max", "jitter"}
            if not unknown:
                return cls(**value)
        raise ValueError(
            f"backoff={value!r} is not understood: use a list of seconds like [5, 30, 120] "
            "(the last repeats), a number, 'exponential', or {'base': 1, 'max': 300, 'jitter': True}"
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if self.delays:
            return self.delays[min(attempt, len(self.delays)) - 1]
        raw: float = min(self.max, self.base * 2 ** max(attempt - 1, 0))
        return raw * random.uniform(0.5, 1.0) if self.jitter else raw  # noqa: S311 (not crypto)

    def describe(self) -> Any:
        if self.delays:
            return list(self.delays)
        return {"base": self.base, "max": self.max, "jitter": self.jitter}


# --- option types: each says what it must be, so @job and sidecar errors name the fix -----------


def _positive(value: int) -> int:
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _seconds(value: float) -> float:
    if not value > 0:
        raise ValueError("must be a number of seconds greater than 0")
    return value


def _priority(value: int) -> int:
    if not -4000 <= value <= 4000:
        raise ValueError("must be an integer in -4000..4000")
    return value


def _runtime(value: Any) -> Runtime:
    for runtime in RUNTIMES:
        if value == runtime:
            return runtime
    raise ValueError(f"must be one of {', '.join(RUNTIMES)}")


def _name(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a non-empty string without spaces")
    return value


def _rate_limit(value: Any) -> RateLimit:
    return value if isinstance(value, RateLimit) else RateLimit.parse(value)


PositiveInt = Annotated[int, AfterValidator(_positive)]
Seconds = Annotated[float, AfterValidator(_seconds)]
BackoffOption = Annotated[Backoff, PlainValidator(Backoff.parse), PlainSerializer(Backoff.describe)]
RateOption = Annotated[RateLimit, PlainValidator(_rate_limit), PlainSerializer(RateLimit.describe)]


class TypePolicy(BaseModel):
    """Everything a job type declares but its handler: the one shape of a type's policy.

    None means "the daemon's default" until `resolve` (see the module doc); `timeout`,
    `deadline`, `schedule` and the flow-control options stay None when not set (no limit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, AfterValidator(_name)]
    # Declared in the order the published form lists them.
    runtime: Annotated[Runtime, PlainValidator(_runtime)] | None = None  # default: settings.default_runtime
    concurrency: PositiveInt | None = None  # most runs at once in one instance (settings.default_concurrency)
    ack_wait: Seconds | None = None  # lease length; a running job is heartbeated (settings.ack_wait)
    max_deliver: PositiveInt | None = None  # deliveries before the job is dead (settings.max_deliver)
    timeout: Seconds | None = None  # hard limit per attempt
    retention: Seconds | None = None  # keep finished records this long (settings.retention)
    backoff: BackoffOption | None = None  # default: exponential with jitter
    deadline: Seconds | None = None  # seconds from creation after which the job expires
    priority: Annotated[int, AfterValidator(_priority)] | None = None  # default priority of its jobs (0)
    schedule: str | None = None  # cron expression that enqueues the type on every tick
    key_concurrency: KeyConcurrency | None = None  # supervisor.flow: at most max_active jobs per key
    queue: QueuePolicy | None = None  # supervisor.flow: how many jobs of a key may wait
    rate_limit: RateOption | None = None  # "100/s": most jobs started per period, all instances
    schedule_payload: dict[str, Any] | None = None
    timezone: str | None = None  # of the schedule (UTC)
    misfire: str | None = None  # "run-once" (default) or "skip"
    payload_schema: dict[str, Any] | None = None  # JSON Schema when the handler has no annotation
    # "replicated": enqueues and settles wait for a replica (WAIT) before they are acknowledged
    durability: Literal["async", "replicated"] | None = None  # default: settings.durability

    @classmethod
    def declare(cls, where: str, **options: Any) -> TypePolicy:
        """Validate options given in Python (`@job`); ValueError listing every bad option."""
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            raise ValueError(f"{where}: " + "; ".join(_problems(exc, list(options)))) from None

    def resolve(self, settings: Settings) -> TypePolicy:
        """This policy with the settings' default in place of every unset option (once, at load).

        A `process` type that names no concurrency gets `default_concurrency` per pool worker
        (x `workers_concurrency`), so the default keeps every worker, one per core, busy; a
        concurrency it names is the type's total in the instance, as in every runtime."""
        runtime = self.runtime or settings.default_runtime
        per_worker = settings.workers_concurrency if runtime == "process" else 1
        return self.model_copy(update={
            "runtime": runtime,
            "concurrency": self.concurrency or settings.default_concurrency * per_worker,
            "ack_wait": self.ack_wait or settings.ack_wait,
            "max_deliver": self.max_deliver or settings.max_deliver,
            "retention": self.retention or settings.retention,
            "backoff": self.backoff or Backoff(),
            "priority": self.priority or 0,
            "timezone": self.timezone or "UTC",
            "misfire": self.misfire or "run-once",
            "durability": self.durability or settings.durability,
        })

    def schedule_entry(self) -> dict[str, Any]:
        """The schedule this type declares, as `ScheduleSpec.parse` takes it (a resolved policy)."""
        return {"job": self.name, "cron": self.schedule, "timezone": self.timezone,
                "payload": self.schedule_payload, "misfire": self.misfire}


def _problems(exc: ValidationError, given: list[str]) -> list[str]:
    """`option=value what it must be` per problem, in the order the options were given;
    unknown options last, in one item."""
    problems, unknown = [], []
    errors = sorted(exc.errors(), key=lambda e: given.index(e["loc"][0]) if e["loc"] and e["loc"][0] in given else 0)
    for err in errors:
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            unknown.append(where)
            continue
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(msg if msg.startswith(f"{where}=") else f"{where}={err['input']!r} {msg}")
    if unknown:
        problems.append(f"unknown option(s) {', '.join(sorted(unknown))}")
    return problems


# Declared, not published: the schedule's details go out with the schedule, the schema on its own.
_UNPUBLISHED: set[str] = {"name", "schedule_payload", "timezone", "misfire", "payload_schema"}  # pydantic takes a set
_POLICY_FIELDS = frozenset(TypePolicy.model_fields) - {"name"}


@dataclass(frozen=True, slots=True)
class PublishedType:
    """A job type as instances publish it in its meta hash (`keys.meta_key`), for producers,
    listings, the janitor and the Lua scripts (`retention_ms`, `dead_retention_ms`).

    `policy` is the resolved policy; `schema` the JSON Schema producers validate payloads
    against, with `format`s unless `check_formats` is false (a pydantic model judges them).
    """

    policy: TypePolicy
    schema: dict[str, Any]
    source: str = ""
    check_formats: bool = True

    def meta(self, instance_id: str, dead_retention_s: float) -> dict[str, str]:
        """The hash fields to write (the only writer of a type's meta hash)."""
        p = self.policy
        policy = {**p.model_dump(mode="json", exclude=_UNPUBLISHED), "check_formats": self.check_formats}
        return {
            "name": p.name, "schema": _dumps(self.schema), "policy": _dumps(policy), "source": self.source,
            "retention_ms": str(int((p.retention or 0) * 1000)),
            "dead_retention_ms": str(int(dead_retention_s * 1000)),
            "instance": instance_id, "updated_ms": str(int(time.time() * 1000)),
        }

    @classmethod
    def read(cls, name: str, meta: Mapping[str, str]) -> PublishedType:
        """The type `name` as its meta hash says (read at most every 5 s per type by a producer).

        Absent or null options take their defaults and keys this version does not know are
        ignored (another version's instance may have written them); raises on any value that
        is not what job-supervisor writes (the caller reports the record as corrupt).
        """
        schema = json.loads(meta.get("schema") or "{}")
        doc = json.loads(meta.get("policy") or "{}")
        options = {k: v for k, v in doc.items() if k in _POLICY_FIELDS and v is not None}
        return cls(TypePolicy.model_validate({**options, "name": name}), schema,
                   meta.get("source") or "", bool(doc.get("check_formats", True)))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


__all__ = ["RUNTIMES", "Backoff", "PublishedType", "Runtime", "TypePolicy"]

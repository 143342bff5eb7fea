"""The `@job` decorator and `JobType`, a job type's handler, schema and policy.

`@job` only attaches metadata to the function; nothing is registered
globally. The loader (`supervisor.registry`) finds decorated functions in
the files of `jobs/` and builds a `JobType` for each.
"""

from __future__ import annotations

import inspect
import json
import random
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter, ValidationError

from supervisor.errors import InvalidPayload
from supervisor.flow import KeyConcurrency, QueuePolicy, RateLimit, parse_policy
from supervisor.validation import Validator, check_payload, compile_schema, model_error

Runtime = Literal["inprocess", "process", "subprocess"]
RUNTIMES = ("inprocess", "process", "subprocess")
JOB_ATTR = "__supervisor_jobs__"


class Failure:
    """Return `Failure("reason")` from a handler to end the job `failed` without raising."""

    __slots__ = ("error", "result")

    def __init__(self, error: str, result: Any = None) -> None:
        self.error = error
        self.result = result


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
        raw = min(self.max, self.base * 2 ** max(attempt - 1, 0))
        return raw * random.uniform(0.5, 1.0) if self.jitter else raw  # noqa: S311 (not crypto)

    def describe(self) -> Any:
        if self.delays:
            return list(self.delays)
        return {"base": self.base, "max": self.max, "jitter": self.jitter}


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What `@job(...)` declared (None = take the daemon's default)."""

    name: str
    max_deliver: int | None = None
    backoff: Backoff = field(default_factory=Backoff)
    ack_wait: float | None = None
    timeout: float | None = None
    deadline: float | None = None
    runtime: Runtime | None = None
    concurrency: int | None = None
    priority: int = 0
    schedule: str | None = None
    schedule_payload: dict[str, Any] | None = None
    timezone: str = "UTC"
    misfire: str = "run-once"
    retention: float | None = None
    payload_schema: dict[str, Any] | None = None
    key_concurrency: KeyConcurrency | None = None
    queue: QueuePolicy | None = None
    rate_limit: RateLimit | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def job(
    name: str,
    *,
    max_deliver: int | None = None,
    backoff: Any = None,
    ack_wait: float | None = None,
    timeout: float | None = None,
    deadline: float | None = None,
    runtime: Runtime | None = None,
    concurrency: int | None = None,
    priority: int = 0,
    schedule: str | None = None,
    schedule_payload: dict[str, Any] | None = None,
    timezone: str = "UTC",
    misfire: str = "run-once",
    retention: float | None = None,
    payload_schema: dict[str, Any] | None = None,
    key_concurrency: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
    rate_limit: str | None = None,
    **extra: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a function as the handler of job type `name`.

    Args:
        name: the job type, e.g. "orders.reserve-inventory".
        max_deliver: deliveries before the job is dead (default from settings, 5).
        backoff: list of seconds (last repeats), a number, or "exponential" (default).
        ack_wait: lease length in seconds; a running job is heartbeated automatically.
        timeout: hard limit per attempt, seconds.
        deadline: seconds from creation after which the job expires.
        runtime: "inprocess", "process" or "subprocess" (default from settings).
        concurrency: most runs of this type at once in one instance.
        priority: default priority of enqueued jobs (higher runs first).
        schedule: cron expression that enqueues this job on every tick.
        schedule_payload: payload of scheduled jobs.
        retention: seconds to keep finished records (default from settings).
        payload_schema: JSON Schema for the payload when the handler has no pydantic annotation.
        key_concurrency: {"key": [literals and JSON pointers], "max_active": 1,
            "stale_policy": "fail-stale" | "requeue-stale"}: at most max_active jobs per key run
            at once across all instances.
        queue: {"max_queued_per_key": 0, "when_full": "reject" | "coalesce" | "replace-oldest"}:
            how many jobs of a key may wait, and what an enqueue beyond that does.
        rate_limit: "100/s" (also /m, /h): most jobs of this type started per period, across
            all instances.

    The function takes the payload (annotated with a pydantic model, or any type
    pydantic can validate) and optionally a `Context`; it may be sync or async.
    """
    opts = JobOptions(
        key_concurrency=parse_policy(KeyConcurrency, key_concurrency, "key_concurrency"),
        queue=parse_policy(QueuePolicy, queue, "queue"),
        rate_limit=RateLimit.parse(rate_limit) if rate_limit is not None else None,
        name=name, max_deliver=max_deliver, backoff=Backoff.parse(backoff), ack_wait=ack_wait,
        timeout=timeout, deadline=deadline, runtime=runtime, concurrency=concurrency,
        priority=priority, schedule=schedule, schedule_payload=schedule_payload,
        timezone=timezone, misfire=misfire, retention=retention, payload_schema=payload_schema,
        extra=extra,
    )
    _check_options(opts)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        declared = list(getattr(fn, JOB_ATTR, ()))
        declared.append(opts)
        setattr(fn, JOB_ATTR, declared)
        return fn

    return decorate


def _check_options(o: JobOptions) -> None:
    problems = []
    if not o.name or not isinstance(o.name, str) or any(c.isspace() for c in o.name):
        problems.append(f"name={o.name!r} must be a non-empty string without spaces")
    for attr in ("max_deliver", "concurrency"):
        v = getattr(o, attr)
        if v is not None and (not isinstance(v, int) or v < 1):
            problems.append(f"{attr}={v!r} must be a positive integer")
    for attr in ("ack_wait", "timeout", "deadline", "retention"):
        v = getattr(o, attr)
        if v is not None and (not isinstance(v, (int, float)) or v <= 0):
            problems.append(f"{attr}={v!r} must be a positive number of seconds")
    if o.runtime is not None and o.runtime not in RUNTIMES:
        problems.append(f"runtime={o.runtime!r} must be one of {', '.join(RUNTIMES)}")
    if not isinstance(o.priority, int) or not -4000 <= o.priority <= 4000:
        problems.append(f"priority={o.priority!r} must be an integer in -4000..4000")
    if o.extra:
        problems.append(f"unknown option(s) {', '.join(sorted(o.extra))}")
    if problems:
        raise ValueError(f"@job({o.name!r}): " + "; ".join(problems))


class PayloadModel:
    """Validates payloads of one type: a pydantic annotation, a JSON Schema, or any JSON."""

    def __init__(self, annotation: Any, schema: dict[str, Any] | None, name: str) -> None:
        self.name = name
        self.annotation = annotation
        self._adapter: TypeAdapter[Any] | None = None
        self._validator: Validator | None = None
        if schema is not None:
            self._validator = compile_schema(schema)
            self._validator.check_schema(schema)  # a bad schema is a load error of the file
            self.schema = schema
        elif annotation is not inspect.Parameter.empty and annotation is not Any:
            self._adapter = TypeAdapter(annotation)
            self.schema = self._adapter.json_schema()
        else:
            self.schema = {}
        # pydantic accepts more than the `format`s it writes into its schema (naive date-times,
        # UUIDs without dashes): producers leave formats to the model of a pydantic type
        self.check_formats = self._adapter is None

    def from_json(self, payload_json: str) -> Any:
        """Parse and validate a payload read from Redis; InvalidPayload on mismatch."""
        if self._adapter is not None:
            try:
                return self._adapter.validate_json(payload_json)
            except ValidationError as exc:
                raise model_error(self.name, exc) from None
        try:
            value = json.loads(payload_json)
        except ValueError as exc:
            raise InvalidPayload(self.name, f"payload is not JSON: {exc}") from None
        self._check_schema(value)
        return value

    def check(self, payload: Any) -> Any:
        """Validate a producer's payload; returns its JSON-ready form."""
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        if self._adapter is not None:
            try:
                value = self._adapter.validate_python(payload)
            except ValidationError as exc:
                raise model_error(self.name, exc) from None
            del value
            return payload
        self._check_schema(payload)
        return payload

    def _check_schema(self, value: Any) -> None:
        if self._validator is not None:
            check_payload(self.name, self._validator, value)


@dataclass(slots=True)
class JobType:
    """A loaded job type: the handler and everything known about it."""

    options: JobOptions
    handler: Callable[..., Any]
    source: str
    is_async: bool
    takes_context: bool
    payload: PayloadModel

    @property
    def name(self) -> str:
        return self.options.name

    @classmethod
    def from_function(cls, fn: Callable[..., Any], options: JobOptions, source: str) -> JobType:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params or len(params) > 2:
            raise TypeError(
                f"handler {fn.__qualname__} must take (payload) or (payload, ctx), "
                f"not {len(params)} parameters"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # noqa: BLE001 (report any annotation problem as a load error)
            raise TypeError(f"cannot resolve annotations of {fn.__qualname__}: {exc}") from exc
        annotation = hints.get(params[0].name, inspect.Parameter.empty)
        return cls(
            options=options, handler=fn, source=source,
            is_async=inspect.iscoroutinefunction(fn), takes_context=len(params) == 2,
            payload=PayloadModel(annotation, options.payload_schema, options.name),
        )

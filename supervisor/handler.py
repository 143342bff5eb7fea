"""The `@job` decorator and `JobType`, a job type's handler, payload model and policy.

`@job` only attaches metadata to the function; nothing is registered
globally. The loader (`supervisor.daemon.registry`) finds decorated functions in
the files of `jobs/` and builds a `JobType` for each.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from supervisor.errors import InvalidPayload
from supervisor.policy import TypePolicy
from supervisor.validation import Validator, check_payload, compile_schema, model_error, schema_problem

JOB_ATTR = "__supervisor_jobs__"


class Failure:
    """Return `Failure("reason")` from a handler to end the job `failed` without raising."""

    __slots__ = ("error", "result")

    def __init__(self, error: str, result: Any = None) -> None:
        self.error = error
        self.result = result


def job(name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a function as the handler of job type `name`.

    Args:
        name: the job type, e.g. "orders.reserve-inventory".
        options: the type's policy, every option of `supervisor.policy.TypePolicy` (a task's
            sidecar takes the same): max_deliver (deliveries before the job is dead, default
            from settings, 5); backoff (list of seconds whose last repeats, a number, or
            "exponential", the default); ack_wait (lease length in seconds; a running job is
            heartbeated automatically); timeout (hard limit per attempt, seconds); deadline
            (seconds from creation after which the job expires); runtime ("inprocess",
            "process" or "subprocess", default from settings); concurrency (most runs of this
            type at once in one instance); priority (default priority of enqueued jobs, higher
            runs first); schedule (cron expression that enqueues this job on every tick) with
            schedule_payload, timezone and misfire ("run-once" or "skip"); retention (seconds to
            keep finished records, default from settings); payload_schema (JSON Schema for the
            payload when the handler has no pydantic annotation); key_concurrency ({"key":
            [literals and JSON pointers], "max_active": 1, "stale_policy": "fail-stale" |
            "requeue-stale"}: at most max_active jobs per key run at once across all instances);
            queue ({"max_queued_per_key": 0, "when_full": "reject" | "coalesce" |
            "replace-oldest"}: how many jobs of a key may wait, and what an enqueue beyond that
            does); rate_limit ("100/s", also /m, /h: most jobs of this type started per period,
            across all instances); durability ("async" or "replicated": enqueues and settles of
            this type wait for a replica before they are acknowledged; default from settings).

    The function takes the payload (annotated with a pydantic model, or any type
    pydantic can validate) and optionally a `Context`; it may be sync or async.
    """
    policy = TypePolicy.declare(f"@job({name!r})", name=name, **options)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        declared = list(getattr(fn, JOB_ATTR, ()))
        declared.append(policy)
        setattr(fn, JOB_ATTR, declared)
        return fn

    return decorate


class PayloadModel:
    """Validates payloads of one type: a pydantic annotation, a JSON Schema, or any JSON."""

    def __init__(self, annotation: Any, schema: dict[str, Any] | None, name: str, *,
                 schema_memo: Path | None = None, schema_checked: bool = False) -> None:
        """`schema_memo`: see `supervisor.validation.schema_problem`; `schema_checked`: the schema
        comes from a source a daemon accepted, which checked it (a pool worker, `runners.pyjob`)."""
        self.name = name
        self.annotation = annotation
        self._adapter: TypeAdapter[Any] | None = None
        self._validator: Validator | None = None
        if schema is not None:
            if not schema_checked and (problem := schema_problem(schema, memo_dir=schema_memo)) is not None:
                raise ValueError(f"payload_schema of job type {name!r} is not a valid JSON Schema: {problem}")
            self._validator = compile_schema(schema)
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

    options: TypePolicy  # as declared (the daemon resolves defaults in its catalog)
    handler: Callable[..., Any]
    source: str
    is_async: bool
    takes_context: bool
    payload: PayloadModel

    @property
    def name(self) -> str:
        return self.options.name

    @classmethod
    def from_function(cls, fn: Callable[..., Any], options: TypePolicy, source: str, *,
                      schema_memo: Path | None = None, schema_checked: bool = False) -> JobType:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if not params or len(params) > 2:
            raise TypeError(
                f"handler {fn.__qualname__} must take (payload) or (payload, ctx), "
                f"not {len(params)} parameters"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # report any annotation problem as a load error
            raise TypeError(f"cannot resolve annotations of {fn.__qualname__}: {exc}") from exc
        annotation = hints.get(params[0].name, inspect.Parameter.empty)
        return cls(
            options=options, handler=fn, source=source,
            is_async=inspect.iscoroutinefunction(fn), takes_context=len(params) == 2,
            payload=PayloadModel(annotation, options.payload_schema, options.name,
                                 schema_memo=schema_memo, schema_checked=schema_checked),
        )

"""Payload validation, one shape for every job type: JSON Schema validators that check `format`,
and `InvalidPayload` errors that list every problem of a payload with its JSON path.

Used at enqueue (clients, CLI, API), by the runtimes before a handler runs, and by the daemon
before it starts a task's program. Paths are written `payload.items.0.sku` (a missing required
property is named itself, not its parent object), for JSON Schema and pydantic alike.

Formats are jsonschema's own `FORMAT_CHECKER` of the schema's draft: email (an "@", as
jsonschema checks it), idn-email, date, ipv4, ipv6, uuid and regex with the stdlib; date-time
with `rfc3339-validator`; uri and uri-reference with `rfc3986-validator`. jsonschema skips a
format silently when its package is missing, so both are dependencies of the project.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jsonschema
from pydantic import ValidationError

from supervisor.errors import InvalidPayload

#: Problems listed in one error; beyond them only their number is given (`(and 3 more)`).
MAX_PROBLEMS = 20
_MAX_INPUT_REPR = 80

Validator = jsonschema.protocols.Validator


def compile_schema(schema: dict[str, Any], *, formats: bool = True) -> Validator:
    """The validator of `schema` (its `$schema` draft, 2020-12 by default), checking `format`
    unless `formats` is false (a schema pydantic wrote: its model is the judge of formats).

    Compile once per loaded schema and keep it: building one costs far more than a check.
    """
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER if formats else None)


def check_payload(name: str, validator: Validator, value: Any) -> None:
    """Raises InvalidPayload listing every way `value` breaks the schema of job type `name`."""
    problems, more = _bounded((_schema_path(e), e.message) for e in validator.iter_errors(value))
    if problems:
        raise InvalidPayload(name, problems=problems, more=more)


def model_error(name: str, exc: ValidationError) -> InvalidPayload:
    """The InvalidPayload of a pydantic ValidationError: every error, each with its path."""
    problems, more = _bounded(
        (".".join(["payload", *(str(p) for p in err["loc"])]), _model_message(err))
        for err in exc.errors(include_url=False)
    )
    return InvalidPayload(name, problems=problems, more=more)


def _bounded(found: Iterable[tuple[str, str]]) -> tuple[tuple[tuple[str, str], ...], int]:
    problems: list[tuple[str, str]] = []
    more = 0
    for problem in found:
        if len(problems) < MAX_PROBLEMS:
            problems.append(problem)
        else:
            more += 1
    return tuple(problems), more


def _schema_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "required" and isinstance(error.validator_value, list):
        # jsonschema places a missing property's error on the object; name the property itself
        for prop in error.validator_value:
            if error.message == f"{prop!r} is a required property":
                parts.append(str(prop))
                break
    return ".".join(["payload", *parts])


def _model_message(err: Any) -> str:
    if err["type"] == "missing":
        return str(err["msg"])
    got = repr(err.get("input"))
    if len(got) > _MAX_INPUT_REPR:
        got = got[:_MAX_INPUT_REPR - 3] + "..."
    return f"{err['msg']} (got {got})"

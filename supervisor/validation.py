"""Payload validation, one shape for every job type: JSON Schema validators that check `format`,
and `InvalidPayload` errors that list every problem of a payload with its JSON path.

Used at enqueue (clients, CLI, API), by the runtimes before a handler runs, and by the daemon
before it starts a task's program. Paths are written `payload.items.0.sku` (a missing required
property is named itself, not its parent object), for JSON Schema and pydantic alike.

Formats are jsonschema's own `FORMAT_CHECKER` of the schema's draft: email (an "@", as
jsonschema checks it), idn-email, date, ipv4, ipv6, uuid and regex with the stdlib; date-time
with `rfc3339-validator`; uri and uri-reference with `rfc3986-validator`. jsonschema skips a
format silently when its package is missing, so both are dependencies of the project.

jsonschema is the judge, but importing it costs a short-lived CLI process ~90 ms (attrs,
referencing, its metaschemas). So a schema written only in the keywords that draft 2020-12 and
draft-07 read alike (`fast_check.py` lists them) is first checked by a fastjsonschema function
compiled from it, with the promised formats checked by `fast_check.py`'s copies of jsonschema's
own checks. A payload that passes is accepted without importing jsonschema; one that fails, and
any payload of a schema outside that subset, goes to jsonschema, which lists every problem (and
has the last word: a payload it accepts is accepted). `tests/unit/test_validation_agreement.py`
checks that the fast check never accepts what jsonschema rejects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from supervisor import fast_check
from supervisor.errors import InvalidPayload

if TYPE_CHECKING:  # imported when a payload fails the fast check, or its schema has no fast check
    import jsonschema

#: Problems listed in one error; beyond them only their number is given (`(and 3 more)`).
MAX_PROBLEMS = 20
_MAX_INPUT_REPR = 80

class Validator:
    """The compiled checks of one schema: the fast check when the schema allows one, and
    jsonschema's validator, built on first need."""

    __slots__ = ("_fast", "_full", "formats", "schema")

    def __init__(self, schema: dict[str, Any], formats: bool) -> None:
        self.schema = schema
        self.formats = formats
        self._fast = fast_check.compile_fast(schema, formats=formats)
        self._full: jsonschema.protocols.Validator | None = None

    def accepts_fast(self, value: Any) -> bool:
        """True when the fast check accepts `value` (then jsonschema would too)."""
        return self._fast is not None and self._fast(value)

    def full(self) -> jsonschema.protocols.Validator:
        if self._full is None:
            import jsonschema  # noqa: PLC0415 (see the module docstring)

            cls = jsonschema.validators.validator_for(self.schema, default=jsonschema.Draft202012Validator)
            self._full = cls(self.schema, format_checker=cls.FORMAT_CHECKER if self.formats else None)
        return self._full


def compile_schema(schema: dict[str, Any], *, formats: bool = True) -> Validator:
    """The validator of `schema` (its `$schema` draft, 2020-12 by default), checking `format`
    unless `formats` is false (a schema pydantic wrote: its model is the judge of formats).

    Compile once per loaded schema and keep it: building one costs far more than a check.
    """
    return Validator(schema, formats)


def schema_problem(schema: dict[str, Any], *, memo_dir: Path | None = None) -> str | None:
    """None when `schema` is a valid JSON Schema of its draft, else what is wrong and where.

    A schema found valid is remembered in `memo_dir` (when given) as an empty file named by the
    SHA-256 of its canonical JSON: a draft's metaschema never changes, so a daemon's restart
    imports jsonschema (~90 ms) only for a schema it has not checked before.
    """
    digest = ""
    if memo_dir is not None:
        canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        if (memo_dir / digest).is_file():
            return None
    import jsonschema  # noqa: PLC0415 (see the module docstring)

    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"{exc.message} (at {exc.json_path})"
    if memo_dir is not None:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next start the check
            memo_dir.mkdir(parents=True, exist_ok=True)
            (memo_dir / digest).touch()
    return None


def check_payload(name: str, validator: Validator, value: Any) -> None:
    """Raises InvalidPayload listing every way `value` breaks the schema of job type `name`."""
    if validator.accepts_fast(value):
        return
    errors = validator.full().iter_errors(value)
    problems, more = _bounded((_schema_path(e), e.message) for e in errors)
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

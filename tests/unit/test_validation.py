"""Payload validation (supervisor.validation): `format` checks, and every problem listed with its path.

No Redis: JSON Schema types (as a task or `payload_schema=`) and pydantic types alike.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from supervisor.daemon import accepted
from supervisor.daemon.registry import load_jobs
from supervisor.errors import InvalidPayload
from supervisor.handler import PayloadModel
from supervisor.validation import MAX_PROBLEMS, check_payload, compile_schema

FORMATS = ("email", "date", "date-time", "uri", "uuid", "ipv4", "ipv6")
GOOD = {"email": "ada@example.org", "date": "2024-02-29", "date-time": "2024-02-29T12:30:00Z",
        "uri": "https://example.org/a?b=1", "uuid": "2f1c8f2e-7d4b-4c8e-9a57-1d2e3f4a5b6c",
        "ipv4": "192.0.2.1", "ipv6": "2001:db8::1"}
BAD = {"email": "nope", "date": "2024-02-30", "date-time": "2024-02-29 noon", "uri": "not a uri",
       "uuid": "1234", "ipv4": "192.0.2.256", "ipv6": "2001:db8:::1"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {f: {"type": "string", "format": f} for f in FORMATS},
}
SIGNUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["email", "age"],
    "properties": {"email": {"type": "string", "format": "email"},
                   "age": {"type": "integer", "minimum": 0},
                   "tags": {"type": "array", "items": {"type": "string"}}},
}


class Signup(BaseModel):
    email: str
    age: int = Field(ge=0)
    tags: list[str] = []


def _refusal(fn: Any, *args: Any) -> InvalidPayload:
    with pytest.raises(InvalidPayload) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_checked_and_the_field_named(fmt: str) -> None:
    # Given a JSON Schema type with one field of each format
    payloads = PayloadModel(inspect.Parameter.empty, SCHEMA, "t.formats")
    payloads.check(GOOD)  # every good value passes
    # When one value breaks its format
    err = _refusal(payloads.check, {**GOOD, fmt: BAD[fmt]})
    # Then the refusal names that field alone, and the format
    assert err.problems == ((f"payload.{fmt}", f"{BAD[fmt]!r} is not a {fmt!r}"),)
    assert f"payload.{fmt}: " in str(err)


def test_the_format_checker_knows_every_promised_format() -> None:
    # jsonschema skips a format whose package is missing: a missing dependency must fail here
    checker = compile_schema(SCHEMA).full().format_checker
    assert checker is not None and set(FORMATS) <= set(checker.checkers)


def test_a_schema_lists_every_problem_with_its_path() -> None:
    # Given a payload with three problems, one of them a missing property
    validator = compile_schema(SIGNUP_SCHEMA)
    err = _refusal(check_payload, "t.signup", validator, {"email": "nope", "tags": ["a", 7]})
    # Then all three are listed, the missing property named itself (not its parent object)
    assert sorted(err.problems) == [
        ("payload.age", "'age' is a required property"),
        ("payload.email", "'nope' is not a 'email'"),
        ("payload.tags.1", "7 is not of type 'string'"),
    ]
    assert err.detail == "; ".join(f"{p}: {m}" for p, m in err.problems)
    assert err.more == 0


def test_a_pydantic_model_lists_every_problem_with_its_path() -> None:
    # Given a handler annotated with a pydantic model, and a payload with three problems
    payloads = PayloadModel(Signup, None, "t.signup")
    bad = {"age": -1, "tags": ["a", {"b": 1}]}
    # Then enqueue (check) and run (from_json) both list all three, each with its path
    for err in (_refusal(payloads.check, bad), _refusal(payloads.from_json, '{"age": -1, "tags": ["a", {"b": 1}]}')):
        assert [p for p, _ in err.problems] == ["payload.email", "payload.age", "payload.tags.1"]
        assert err.problems[0][1] == "Field required"
        assert "greater than or equal to 0 (got -1)" in err.problems[1][1]
        assert "valid string (got {'b': 1})" in err.problems[2][1]


def test_a_payload_that_is_not_json_is_an_invalid_payload() -> None:
    for payloads in (PayloadModel(inspect.Parameter.empty, SIGNUP_SCHEMA, "t.s"), PayloadModel(Signup, None, "t.s")):
        err = _refusal(payloads.from_json, '{"email": ')
        assert err.name == "t.s" and ("not JSON" in err.detail or "Invalid JSON" in err.detail)


def test_thousands_of_problems_are_bounded() -> None:
    validator = compile_schema({"type": "array", "items": {"type": "integer"}})
    err = _refusal(check_payload, "t.ints", validator, ["x"] * 1000)
    assert len(err.problems) == MAX_PROBLEMS and err.more == 1000 - MAX_PROBLEMS
    assert err.detail.endswith(f"(and {1000 - MAX_PROBLEMS} more)")
    assert err.problems[-1][0] == f"payload.{MAX_PROBLEMS - 1}"


def test_a_schema_that_is_not_json_schema_is_refused_naming_the_type_and_the_problem() -> None:
    with pytest.raises(ValueError, match=r"payload_schema of job type 't.bad' is not a valid JSON Schema: .*objekt"):
        PayloadModel(inspect.Parameter.empty, {"type": "objekt"}, "t.bad")


def test_a_job_schema_checked_once_is_not_checked_again_by_a_restart_or_a_worker(tmp_path: Path) -> None:
    # Given a jobs/ file whose @job declares a JSON Schema, loaded once as a daemon does (a memo dir)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "signup.py").write_text(
        "from supervisor import job\n\n"
        f"@job('t.signup', payload_schema={SIGNUP_SCHEMA!r})\n"
        "def signup(payload):\n    return payload\n")
    memo = tmp_path / "memo"
    first = load_jobs(jobs, schema_memo=memo)
    assert "t.signup" in first.types and any(memo.iterdir())
    manifest = accepted.save(tmp_path / "state", jobs, first.sources)
    # When a fresh process loads it again with the same memo (a restart), or from the accepted
    # copy (a pool worker, runners.pyjob)
    for how in (f"load_jobs(Path({str(jobs)!r}), schema_memo=Path({str(memo)!r}))",
                f"load_jobs(Path({str(jobs)!r}), accepted.load(Path({str(manifest)!r})))"):
        probe = ("import sys; from pathlib import Path\n"
                 "from supervisor.daemon import accepted; from supervisor.daemon.registry import load_jobs\n"
                 f"r = {how}\nprint(sorted(r.types), len(r.errors), 'jsonschema' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        # Then the type loads without importing jsonschema (~90 ms of a start)
        assert out.split() == ["['t.signup']", "0", "False"], (how, out)
    # And a bad schema is refused at every load, never remembered
    (jobs / "signup.py").write_text("from supervisor import job\n\n@job('t.bad', payload_schema={'type': 'objekt'})\n"
                                    "def bad(payload):\n    return payload\n")
    for _ in range(2):
        errors = load_jobs(jobs, schema_memo=memo).errors
        assert "not a valid JSON Schema" in str(next(iter(errors.values())))

"""Payload validation end to end: `format` and every problem refused at enqueue (Client, SyncClient,
CLI, API), and a payload that got in without validation failed before its program starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor import Client, InvalidPayload, State, SyncClient
from supervisor.operators.api.app import create_app
from tests.conftest import shipped_tasks

TOKEN = "test-token-payloads"

FORMAT_SCHEMA = """
[payload_schema]
type = "object"
additionalProperties = false
[payload_schema.properties]
email = { type = "string", format = "email" }
day = { type = "string", format = "date" }
at = { type = "string", format = "date-time" }
link = { type = "string", format = "uri" }
id = { type = "string", format = "uuid" }
v4 = { type = "string", format = "ipv4" }
v6 = { type = "string", format = "ipv6" }
n = { type = "integer", maximum = 10 }
"""
GOOD = {"email": "ada@example.org", "day": "2024-02-29", "at": "2024-02-29T12:00:00+01:00",
        "link": "https://example.org/x", "id": "2f1c8f2e-7d4b-4c8e-9a57-1d2e3f4a5b6c",
        "v4": "192.0.2.1", "v6": "2001:db8::1", "n": 1}
BAD = {"email": "nope", "day": "2024-13-01", "at": "yesterday", "link": "no scheme", "id": "42",
       "v4": "1.2.3", "v6": "::g"}


def _marker_task(tmp_path: Path, schema: str = FORMAT_SCHEMA) -> Path:
    """A task `marked` that appends each payload it runs with to a marker file."""
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    marker = tmp_path / "ran.txt"
    (tasks / "marked.sh").write_text('#!/usr/bin/env bash\nset -euo pipefail\ncat >> "$MARKER"\necho >> "$MARKER"\n'
                                     "echo '::result {\"ran\": true}'\n")
    (tasks / "marked.toml").write_text(f'timeout = 20\nmax_deliver = 3\nenv = {{ MARKER = "{marker}" }}\n{schema}')
    return marker


def _fields(exc: InvalidPayload) -> list[str]:
    return [path for path, _ in exc.problems]


async def test_bad_formats_and_every_problem_are_refused_at_enqueue(
        redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    # Given a daemon serving a task whose schema has one field per format, and a pydantic type
    marker = _marker_task(tmp_path)
    use_handlers("payloads")
    daemon()
    async with Client(redis_url) as client:
        # When each format is broken alone, Then the refusal names that field
        for field, value in BAD.items():
            with pytest.raises(InvalidPayload) as info:
                await client.enqueue("marked", {**GOOD, field: value})
            assert _fields(info.value) == [f"payload.{field}"], info.value
            assert f"payload.{field}: {value!r} is not a " in str(info.value)
        # and a payload with three problems lists all three, each with its path
        with pytest.raises(InvalidPayload) as info:
            await client.enqueue("marked", {**GOOD, "email": "nope", "n": 11, "extra": 1})
        assert sorted(_fields(info.value)) == ["payload", "payload.email", "payload.n"]
        # so does a pydantic type (checked against the JSON Schema its instance published)
        with pytest.raises(InvalidPayload) as info:
            await client.enqueue("t.signup", {"age": 200, "tags": ["a", 3]})
        assert sorted(_fields(info.value)) == ["payload.age", "payload.email", "payload.tags.1"]
        good = await client.wait((await client.enqueue("marked", GOOD)).id, timeout=30)
        # while a pydantic type's formats are left to its model, which takes more than JSON Schema does
        lenient = await client.enqueue("t.signup", {"email": "a@b", "age": 3, "at": "2024-01-01T12:00:00",
                                                     "ref": "2f1c8f2e7d4b4c8e9a571d2e3f4a5b6c"})
        signup = await client.wait(lenient.id, timeout=30)
    assert good.state is State.COMPLETED, good.error
    assert signup.state is State.COMPLETED, signup.error
    # The blocking client refuses the same, on its general path and on its fast path alike
    with SyncClient(redis_url) as sync:
        for _ in range(3):
            with pytest.raises(InvalidPayload) as info:
                sync.enqueue("marked", {"email": "nope", "day": "2024-02-30", "id": "x"})
            assert sorted(_fields(info.value)) == ["payload.day", "payload.email", "payload.id"]
    # And nothing refused was queued: the program ran once, with the good payload
    assert marker.read_text().count("\n") == 1 and "ada@example.org" in marker.read_text()


async def test_the_cli_and_the_api_refuse_with_every_field(
        redis_url: str, daemon: Any, tmp_path: Path) -> None:
    # Given the example task of the README (email format, age 0..150)
    shipped_tasks(tmp_path, "validate_payload.sh", "validate_payload.toml")
    daemon()
    # When the CLI enqueues a bad email
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env["REDIS_URL"] = redis_url
    cli = subprocess.run([sys.executable, "-m", "supervisor", "enqueue", "validate-payload",
                          '{"email": "nope", "age": 200}'], capture_output=True, text=True, env=env,
                         timeout=30, check=False)
    # Then it is refused, naming both fields
    said = " ".join(cli.stderr.split())
    assert cli.returncode != 0, cli.stdout
    assert "payload.email: 'nope' is not a 'email'" in said and "payload.age: 200 is greater than" in said
    # And the API answers 422 with every error in `errors`, `field` the first one's
    app = create_app(redis_url, TOKEN)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            r = await api.post("/types/validate-payload/trigger",
                               json={"payload": {"email": "nope", "age": -1, "tags": [1]}})
    finally:
        await app.state.api.aclose()
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_payload"
    assert sorted(e["field"] for e in err["errors"]) == ["payload.age", "payload.email", "payload.tags.0"]
    assert err["field"] == err["errors"][0]["field"]
    assert all(e["message"] and e["field"] in err["message"] for e in err["errors"])


async def test_a_payload_that_got_in_unchecked_fails_before_its_program_runs(
        redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    # Given jobs queued before any instance published their types (so nothing validated them)
    marker = _marker_task(tmp_path)
    async with Client(redis_url, allow_unknown=True) as client:
        bad = await client.enqueue("marked", {**GOOD, "email": "nope", "at": "noon", "n": 99})
        good = await client.enqueue("marked", GOOD)
        models = [await client.enqueue(name, {"age": "old", "tags": [1]}) for name in ("t.signup", "t.signup-sub")]
        # When a daemon serving them starts
        use_handlers("payloads")
        daemon()
        bad_job = await client.wait(bad.id, timeout=30)
        good_job = await client.wait(good.id, timeout=30)
        model_jobs = [await client.wait(ref.id, timeout=30) for ref in models]
    # Then the bad task job failed at once, without retry, with every problem, and its program never ran
    assert bad_job.state is State.FAILED and bad_job.deliveries == 1, bad_job.error
    for part in ("payload.email: 'nope' is not a 'email'", "payload.at: 'noon' is not a 'date-time'",
                 "payload.n: 99 is greater than the maximum of 10"):
        assert part in (bad_job.error or "")
    assert good_job.state is State.COMPLETED, good_job.error
    assert marker.read_text().count("\n") == 1 and "nope" not in marker.read_text()
    # And pydantic types fail the same way, in the daemon's process and before a subprocess starts
    for job in model_jobs:
        assert job.state is State.FAILED and job.deliveries == 1, job.error
        for path in ("payload.email: Field required", "payload.age: ", "payload.tags.0: "):
            assert path in (job.error or ""), job.error


async def test_a_schema_tightened_after_enqueue_is_enforced_before_the_run(
        redis_url: str, daemon: Any, tmp_path: Path) -> None:
    # Given a daemon that published a loose schema, and a job it accepted, queued while it is stopped
    marker = _marker_task(tmp_path, schema='[payload_schema]\ntype = "object"\n')
    first = daemon()
    assert first.stop() == 0
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue("marked", {"email": "nope"})  # valid under the loose schema
        # When the schema is tightened and a daemon starts again
        _marker_task(tmp_path)
        daemon()
        job = await client.wait(ref.id, timeout=30)
    # Then the job failed with the current schema's error, once, and the program never ran
    assert job.state is State.FAILED and job.deliveries == 1, job.error
    assert "payload.email: 'nope' is not a 'email'" in (job.error or "")
    assert not marker.exists()

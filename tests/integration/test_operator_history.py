"""Operator actions in a job's history, attempt numbers across a replay, and what lifecycle events carry.

A dead job replayed through the API (with a named token), then dismissed from the CLI, and a
delayed job cancelled by a client: each action is in the job's history with its source and
who asked; the replayed job's attempts go on from 4, and max_deliver counts afresh. Every
lifecycle event of a job carries its request and trace ids; `completed` carries the result.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from supervisor import Client, State
from supervisor.engine import keys
from supervisor.operators.admin import job_fields
from supervisor.operators.api.app import create_app
from supervisor.producers.client import new_trace_context
from tests.conftest import cli_env, run_cli

TOKENS = {"alice": "alice-secret", "ci": "ci-secret"}


async def _settled(client: Client, job_id: str, state: State, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await client.get(job_id)
        if job.state is state:
            return job
        assert asyncio.get_running_loop().time() < deadline, f"{job_id} stayed {job.state}, not {state}"
        await asyncio.sleep(0.05)


def _cli(redis_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=cli_env(REDIS_URL=redis_url), cwd=cwd)


async def test_actions_are_recorded_with_who_asked_and_attempts_keep_counting(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path,
) -> None:
    use_handlers("basic")
    await asyncio.to_thread(daemon)
    app = create_app(redis_url, TOKENS)
    async with Client(redis_url) as client, httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://api", timeout=20) as api:
        ref = await client.enqueue("t.always-fails", {})  # max_deliver=3
        dead = await _settled(client, ref.id, State.DEAD)
        assert [a.attempt for a in dead.attempts] == [1, 2, 3]

        r = await api.post(f"/jobs/{ref.id}/replay", headers={"Authorization": "Bearer alice-secret"})
        assert r.status_code == 200, r.text
        again = await _settled(client, ref.id, State.DEAD)  # three fresh deliveries, numbered on
        assert [a.attempt for a in again.attempts] == [1, 2, 3, 4, 5, 6]
        assert again.deliveries == 6

        done = await asyncio.to_thread(_cli, redis_url, "jobs", "dismiss", ref.id, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        job = await client.get(ref.id)
        assert job.state is State.DISMISSED
        assert [(a.action, a.source) for a in job.actions] == [("replay", "api"), ("dismiss", "cli")]
        assert job.actions[0].by == "alice"
        assert all(a.at is not None for a in job.actions)
        assert job.actions[0].at <= again.attempts[3].ended  # type: ignore[operator]
        shown = (await api.get(f"/jobs/{ref.id}", headers={"Authorization": "Bearer ci-secret"})).json()
        assert [a["action"] for a in shown["actions"]] == ["replay", "dismiss"]
        assert shown["actions"][0]["by"] == "alice" and shown["actions"][1]["source"] == "cli"
        # A wrong token is still refused with several configured.
        assert (await api.get(f"/jobs/{ref.id}", headers={"Authorization": "Bearer nope"})).status_code == 401

        later = await client.enqueue("t.echo", {"value": "x"}, delay=600)
        assert await client.cancel(later.id, "not needed") == "cancelled"
        cancelled = await client.get(later.id)
        assert [(a.action, a.source, a.by) for a in cancelled.actions] == [("cancel", "client", None)]
        assert cancelled.attempts == []  # an action is not an attempt
    await app.state.api.aclose()


async def test_lifecycle_events_carry_request_and_trace_ids_and_the_result(
    redis_url: str, use_handlers: Any, daemon: Any,
) -> None:
    use_handlers("basic")
    await asyncio.to_thread(daemon)
    async with Client(redis_url) as client:
        ok = await client.wait((await client.enqueue("t.echo", {"value": "hello"})).id, timeout=20)
        # a request id of the caller's own (X-Request-ID), not one we minted
        theirs = await client.wait((await client.enqueue("t.echo", {"value": "theirs"},
                                                         context=new_trace_context("req-42"))).id, timeout=20)
        big = await client.wait((await client.enqueue("t.echo", {"value": "x" * 10_000})).id, timeout=20)
        failing = await client.enqueue("t.always-fails", {})
        await _settled(client, failing.id, State.DEAD)
        failed = await client.get(failing.id)
    r = aioredis.from_url(redis_url, decode_responses=True)
    try:
        echo_events = await r.xrange(keys.events_key("t.echo"))
        fail_events = await r.xrange(keys.events_key("t.always-fails"))
    finally:
        await r.aclose()

    def of(events: list[Any], job_id: str) -> list[dict[str, str]]:  # a batch's entry: one event per job
        return [one for _, fields in events for one in job_fields(fields) if one["id"] == job_id]

    assert theirs.context["request_id"] == "req-42"
    for job, events in ((ok, of(echo_events, ok.id)), (theirs, of(echo_events, theirs.id)),
                        (failed, of(fail_events, failed.id))):
        assert events, job.id
        for fields in events:
            assert fields["request_id"] == job.context["request_id"], fields
            assert fields["trace_id"] == job.context["trace_id"], fields
    completed = [f for f in of(echo_events, ok.id) if f["event"] == "completed"]
    assert len(completed) == 1 and json.loads(completed[0]["result"]) == ok.result
    # A large result is not copied into every event: its size is, and the job holds it.
    (big_done,) = [f for f in of(echo_events, big.id) if f["event"] == "completed"]
    assert "result" not in big_done and int(big_done["result_bytes"]) > 10_000
    assert {f["event"] for f in of(fail_events, failed.id)} >= {"started", "retry", "dead"}

"""Exactly once through crashes: a chord (a workflow's fan-in) and a batch whose callbacks must run
once while daemons are SIGKILLed every 2 s and restarted; every step completes once in the record,
every job and the callback appear in an independent witness (a file each handler run appends to)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import Callback, Client, EnqueueRequest, State, Step, chord

_CALLBACK = "wf.callback"


def _witnessed(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


async def _kill_until(daemon: Any, done: Any, timeout: float) -> int:
    """Two daemons; every 2 s one of them (in turn) is SIGKILLed and a new one started, until
    `done()` or `timeout`. Returns how many were killed."""
    running = [daemon(), daemon(wait=False)]
    kills, deadline = 0, time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, f"not done after {timeout}s and {kills} kills"
        await asyncio.sleep(2.0)  # the cadence of the kills, not a wait for a condition
        victim = running[kills % 2]
        victim.kill()
        running[kills % 2] = daemon(wait=False)
        kills += 1
    running[0].wait_ready()
    return kills


async def _settled(client: Client, ids: list[str], timeout: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [await client.get(i) for i in ids]
        if all(j.finished_running for j in jobs):
            return jobs
        assert time.monotonic() < deadline, f"{sum(not j.finished_running for j in jobs)} jobs still unfinished"
        await asyncio.sleep(0.1)


async def _check_chord(n: int, redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    use_handlers("workflow")
    w = tmp_path / "witness"
    async with Client(redis_url, allow_unknown=True) as client:
        # Given a chord of n steps and one callback that reads all their results
        ref = await client.workflow(chord([Step("wf.crash-step", {"witness": str(w), "sleep": 0.2})
                                           for _ in range(n)], Step(_CALLBACK, {"witness": str(w)}, key="cb")))

        async def callback_ran() -> bool:
            return any(r["name"] == _CALLBACK for r in _witnessed(w))

        # When daemons are SIGKILLed every 2 s while it runs
        kills = await _kill_until(daemon, callback_ran, timeout=240)
        jobs = await _settled(client, list(ref.jobs.values()))
        doc = await client.get_workflow(ref.id)
    # Then every step completed once in the record and was witnessed; the callback ran once, saw all n
    assert kills >= 1
    assert all(j.state is State.COMPLETED for j in jobs), {j.state for j in jobs}
    assert all(sum(a.outcome == "completed" for a in j.attempts) == 1 for j in jobs)
    runs = _witnessed(w)
    steps = {r["job"] for r in runs if r["name"] == "wf.crash-step"}
    assert steps == {j.id for j in jobs if j.name == "wf.crash-step"}
    callbacks = [r for r in runs if r["name"] == _CALLBACK]
    assert [r["job"] for r in callbacks] == [ref.jobs["cb"]] and callbacks[0]["deps"] == n
    assert doc["state"] == "completed"


async def test_chord_callback_once_while_daemons_are_killed(redis_url: str, use_handlers: Any, daemon: Any,
                                                            tmp_path: Path) -> None:
    await _check_chord(300, redis_url, use_handlers, daemon, tmp_path)


@pytest.mark.slow
async def test_chord_of_1000_callback_once_while_daemons_are_killed(redis_url: str, use_handlers: Any,
                                                                    daemon: Any, tmp_path: Path) -> None:
    await _check_chord(1000, redis_url, use_handlers, daemon, tmp_path)


async def test_batch_callback_once_while_daemons_are_killed(redis_url: str, use_handlers: Any, daemon: Any,
                                                            tmp_path: Path) -> None:
    use_handlers("workflow")
    w = tmp_path / "witness"
    async with Client(redis_url, allow_unknown=True) as client:
        # Given a batch of 300 jobs with an on_complete callback
        bid = await client.batch(on_complete=Callback(_CALLBACK, {"witness": str(w)}))
        refs = await client.enqueue_many(
            [EnqueueRequest("wf.crash-step", {"witness": str(w), "sleep": 0.2}, batch=bid) for _ in range(300)])
        await client.close_batch(bid)

        async def callback_ran() -> bool:
            return any(r["name"] == _CALLBACK for r in _witnessed(w))

        # When daemons are SIGKILLed every 2 s while it runs
        await _kill_until(daemon, callback_ran, timeout=240)
        jobs = await _settled(client, [r.id for r in refs])
        status = await client.batch_status(bid)
        made = [j for j in await client.list(_CALLBACK, limit=1000) if j.idempotency_key == f"batch:{bid}:on_complete"]
    # Then the batch counted each job once, and its callback was created and ran once
    assert status["state"] == "done" and status["total"] == 300 and status["completed"] == 300
    assert all(j.state is State.COMPLETED for j in jobs)
    callbacks = [r for r in _witnessed(w) if r["name"] == _CALLBACK]
    assert len(made) == 1 and [r["job"] for r in callbacks] == [made[0].id]
    assert callbacks[0]["batch"]["total"] == 300

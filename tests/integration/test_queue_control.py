"""Pause/resume, bulk actions and the per-minute history with a real daemon, through the API and the CLI.

Pause: a paused type's jobs stay pending while an unpaused type's jobs run (checked after those
have completed, not by sleeping), also across a daemon restart; resume from the CLI runs them.
Bulk: a dry run counts dead jobs by error text, the replay acts and records it in each job's
history, the CLI refuses to act unconfirmed without --yes. History: the counters the scripts
wrote add up to what ran.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor import Client, State
from supervisor.errors import TypeNotFound
from supervisor.operators.api.app import create_app
from tests.conftest import await_until, cli_env, run_cli

TOKEN = "queue-control-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _cli(redis_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=cli_env(REDIS_URL=redis_url), cwd=cwd)


async def _states(client: Client, ids: list[str]) -> set[State]:
    return {(await client.get(i)).state for i in ids}


async def test_pause_holds_jobs_across_a_restart_and_resume_runs_them(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path,
) -> None:
    use_handlers("basic")
    first = await asyncio.to_thread(daemon)
    app = create_app(redis_url, TOKEN)
    async with Client(redis_url) as client, httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://api", headers=AUTH, timeout=20) as api:
        # Given t.sync-echo paused through the API
        r = await api.post("/types/t.sync-echo/pause")
        assert r.status_code == 200, r.text
        assert r.json()["paused"] and r.json()["changed"] and r.json()["paused_info"]["source"] == "api"
        assert not (await api.post("/types/t.sync-echo/pause")).json()["changed"]
        # When jobs of it and of an unpaused type are enqueued (the paused ones first)
        held = [(await client.enqueue("t.sync-echo", {"value": str(i)})).id for i in range(5)]
        ran = [(await client.enqueue("t.echo", {"value": str(i)})).id for i in range(5)]
        # Then the unpaused ones complete and the paused ones are still pending
        for job_id in ran:
            assert (await client.wait(job_id, 15)).state is State.COMPLETED
        assert await _states(client, held) == {State.PENDING}
        types = {t["name"]: t for t in (await api.get("/types")).json()}
        assert types["t.sync-echo"]["paused"] and not types["t.echo"]["paused"]

        # And across a restart: a new daemon runs new t.echo jobs, not the paused ones
        assert await asyncio.to_thread(first.stop) == 0
        await asyncio.to_thread(daemon)
        after = await client.enqueue("t.echo", {"value": "after restart"})
        assert (await client.wait(after.id, 20)).state is State.COMPLETED
        assert await _states(client, held) == {State.PENDING}

        # When resumed from the CLI, they run
        done = await asyncio.to_thread(_cli, redis_url, "types", "resume", "t.sync-echo", "--json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["paused"] is False
        for job_id in held:
            assert (await client.wait(job_id, 15)).state is State.COMPLETED
        listed = await asyncio.to_thread(_cli, redis_url, "types", "--json", cwd=tmp_path)
        assert not {t["name"]: t for t in json.loads(listed.stdout)["types"]}["t.sync-echo"]["paused"]
    await app.state.api.aclose()


async def test_bulk_replay_by_filter_and_the_history_of_what_ran(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path,
) -> None:
    use_handlers("basic")
    await asyncio.to_thread(daemon)
    app = create_app(redis_url, TOKEN)
    async with Client(redis_url) as client, httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://api", headers=AUTH, timeout=20) as api:
        dead = [(await client.enqueue("t.always-fails", {})).id for _ in range(6)]  # max_deliver 3
        echoed = [(await client.enqueue("t.echo", {"value": str(i)})).id for i in range(20)]
        for job_id in dead + echoed:
            await client.wait(job_id, 20)
        assert await _states(client, dead) == {State.DEAD}

        # A dry run counts (the route is not /jobs/{job_id}/replay with the id "bulk")
        body = {"type": "t.always-fails", "error": "BOOM ON ATTEMPT", "dry_run": True}
        r = await api.post("/jobs/bulk/replay", json=body)
        assert r.status_code == 200, r.text
        assert (r.json()["matched"], r.json()["done"], r.json()["by_state"]) == (6, 0, {"dead": 6})
        bad = await api.post("/jobs/bulk/replay", json={"state": "completed"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "state"

        # Unconfirmed, the CLI acts on nothing; with --yes it replays, recorded in each job's history
        refused = await asyncio.to_thread(_cli, redis_url, "jobs", "bulk", "replay", "--type", "t.always-fails",
                                          cwd=tmp_path)
        assert refused.returncode != 0 and "pass --yes" in refused.stderr
        assert await _states(client, dead) == {State.DEAD}
        r = await api.post("/jobs/bulk/replay", json={**body, "dry_run": False})
        assert (r.json()["matched"], r.json()["done"]) == (6, 6)
        for job_id in dead:
            await await_until(lambda j=job_id: _dead_again(client, j), 20, what=f"{job_id} dead again")
        job = await client.get(dead[0])
        assert [(a.action, a.source) for a in job.actions] == [("replay", "api")]
        dismissed = await asyncio.to_thread(_cli, redis_url, "jobs", "bulk", "dismiss", "--type", "t.always-fails",
                                            "--yes", "--json", cwd=tmp_path)
        assert dismissed.returncode == 0, dismissed.stderr
        assert json.loads(dismissed.stdout)["done"] == 6
        assert [a.action for a in (await client.get(dead[0])).actions] == ["replay", "dismiss"]

        # The history: what ran, counted by the scripts
        points = (await api.get("/types/t.echo/history", params={"minutes": 5})).json()["points"]
        assert len(points) == 5
        assert sum(p["enqueued"] for p in points) == 20 and sum(p["completed"] for p in points) == 20
        assert any(p["run_ms"]["p50"] is not None and p["wait_ms"]["p99"] is not None for p in points)
        every = (await api.get("/history", params={"minutes": 5})).json()
        fails = every["types"]["t.always-fails"]
        assert sum(p["dead"] for p in fails) == 12 and sum(p["retried"] for p in fails) == 24
        assert sum(p["completed"] for p in every["totals"]) == 20
        shown = await asyncio.to_thread(_cli, redis_url, "types", "history", "t.echo", "--minutes", "3", "--json",
                                        cwd=tmp_path)
        assert sum(p["completed"] for p in json.loads(shown.stdout)["points"]) == 20
    await app.state.api.aclose()


async def _dead_again(client: Client, job_id: str) -> bool:
    job = await client.get(job_id)
    return job.state is State.DEAD and job.deliveries == 6


async def test_pausing_a_type_no_instance_ever_served_is_refused_unless_asked_for(
        redis_url: str, tmp_path: Path) -> None:
    app = create_app(redis_url, TOKEN)
    async with Client(redis_url) as client, httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://api", headers=AUTH, timeout=20) as api:
        # A typo of a type name is refused everywhere, naming the problem and the fix
        with pytest.raises(TypeNotFound, match=r"no job type 't\.ecoh'.*allow_unknown"):
            await client.pause("t.ecoh")
        r = await api.post("/types/t.ecoh/pause")
        assert r.status_code == 404 and r.json()["error"]["code"] == "type_not_found", r.text
        done = await asyncio.to_thread(_cli, redis_url, "types", "pause", "t.ecoh", cwd=tmp_path)
        assert done.returncode == 3 and "--allow-unknown" in done.stderr, done.stderr
        # Asked for (pausing ahead of the first deploy), it is paused: `changed`, so none of the
        # refused calls had paused it
        ahead = await api.post("/types/t.ecoh/pause", params={"allow_unknown": "true"})
        assert ahead.status_code == 200 and ahead.json()["paused"] and ahead.json()["changed"], ahead.text
    await app.state.api.aclose()

"""Cron schedules across instances: every tick exactly once, misfires, bad input."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest

from supervisor import Client, State
from supervisor.daemon.scheduler import last_fired_key
from tests.conftest import await_until


def _tick(job: Any) -> int:
    assert job.idempotency_key and job.idempotency_key.startswith("schedule:")
    return int(job.idempotency_key.rsplit(":", 1)[1])


async def _scheduled_jobs(client: Client, name: str) -> list[Any]:
    return [j for j in await client.list(name, limit=10_000) if j.idempotency_key]


@pytest.mark.slow
async def test_three_instances_fire_each_tick_exactly_once(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given three instances serving a per-second schedule
    use_handlers("cron")
    daemons = [daemon(wait=False) for _ in range(3)]
    for d in daemons:
        d.wait_ready()
    async with Client(redis_url) as client:
        # When they run side by side for 10 seconds
        await asyncio.sleep(10)
        for d in daemons:
            assert d.stop() == 0
        jobs = await _scheduled_jobs(client, "t.every-second")
    # Then every tick appears exactly once, none missing between the first and the last
    ticks = collections.Counter(_tick(j) for j in jobs)
    assert ticks and max(ticks.values()) == 1, [t for t, n in ticks.items() if n > 1]
    first, last = min(ticks), max(ticks)
    assert sorted(ticks) == list(range(first, last + 1)), "a tick is missing"
    assert last - first >= 8
    assert all(j.payload == {"source": "cron"} for j in jobs)
    assert all(j.state is State.COMPLETED for j in jobs if _tick(j) < last)
    fired_by = {line["job_id"] for d in daemons for line in d.events("schedule.fired")}
    assert fired_by == {j.id for j in jobs}


@pytest.mark.slow
async def test_downtime_fires_one_catch_up_with_run_once_and_none_with_skip(
        redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given schedules every 5 s, one per misfire policy, whose instance ran once and stopped
    use_handlers("cron_skip")
    names = ("t.every-5s", "t.every-5s-skip")
    first = daemon()
    async with Client(redis_url) as client:
        async def baselines() -> bool:
            return all([await client.broker.redis.hlen(last_fired_key(n)) for n in names])

        deadline = time.monotonic() + 10
        while not await baselines():
            assert time.monotonic() < deadline, "the scheduler stores a baseline tick at first start"
            await asyncio.sleep(0.05)
        assert first.stop() == 0
        before = {n: {_tick(j) for j in await _scheduled_jobs(client, n)} for n in names}
        # When every instance stays down across a tick, and one comes back 2 s after a later tick
        # (so that tick is missed, and the next one is 3 s away)
        down_since = time.time()
        while not (time.time() % 5 >= 2.0 and time.time() % 5 < 2.3 and time.time() - down_since > 5):
            await asyncio.sleep(0.02)
        missed_tick = int(time.time()) // 5 * 5
        second = daemon()
        await asyncio.sleep(0.3)
        assert second.stop() == 0
        after = {n: {_tick(j) for j in await _scheduled_jobs(client, n)} for n in names}
    # Then run-once fired exactly one catch-up job, for the latest missed tick, and skip fired none
    assert sorted(after["t.every-5s"] - before["t.every-5s"]) == [missed_tick]
    assert after["t.every-5s-skip"] == before["t.every-5s-skip"]


async def test_invalid_schedule_is_reported_and_the_rest_runs(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("cron_bad", "basic")
    d = daemon()
    errors = {e["value"]: e for e in d.events("schedule.invalid")}
    assert "61 * * * *" in errors and "cron" in errors["61 * * * *"]["error"]
    assert "cron_bad.py" in errors["61 * * * *"]["path"]
    assert "Mars/Olympus" in errors and errors["Mars/Olympus"]["field"] == "timezone"
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.bad-cron", {})).id, timeout=10)
        echo = await client.wait((await client.enqueue("t.echo", {"value": "x"})).id, timeout=10)
    assert job.result == "served anyway" and echo.state is State.COMPLETED


async def test_settings_schedule_and_schedules_command(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Any
) -> None:
    use_handlers("basic", "cron")
    config = tmp_path / "settings.toml"
    config.write_text('[schedules.nightly-echo]\njob = "t.echo"\ncron = "0 3 * * *"\n'
                      'timezone = "Europe/Berlin"\npayload = {value = "nightly"}\n')
    daemon(args=["--config", str(config)])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env["REDIS_URL"] = redis_url
    async with Client(redis_url) as client:  # the per-second schedule has fired once
        await await_until(lambda: _scheduled_jobs(client, "t.every-second"), 15, what="a fired tick")
    shown = subprocess.run([sys.executable, "-m", "supervisor", "schedules", "--json"], capture_output=True,
                           text=True, env=env, timeout=30, check=False)
    assert shown.returncode == 0, shown.stderr
    rows = {r["id"]: r for r in json.loads(shown.stdout)}
    nightly = rows["nightly-echo"]
    # Every time is shown in UTC: 03:00 in Berlin is 01:00 or 02:00 UTC
    assert nightly["timezone"] == "Europe/Berlin" and len(nightly["next"]) == 3 and nightly["status"] == "firing"
    assert all(t.endswith("+00:00") and ("T01:00:00" in t or "T02:00:00" in t) for t in nightly["next"])
    # The nightly tick never fired: its first start's baseline tick is not shown as fired
    async with Client(redis_url) as client:
        assert await client.broker.redis.hget(last_fired_key("t.echo"), "nightly-echo") is not None
        every = rows["t.every-second@* * * * * *@UTC"]
        assert nightly["last_fired"] is None and every["source"].endswith("cron.py")
        # The per-second one shows a tick that really fired: a job of that tick exists
        fired = await _scheduled_jobs(client, "t.every-second")
    assert every["last_fired"] is not None and every["last_fired"].endswith("+00:00")
    assert int(datetime.fromisoformat(every["last_fired"]).timestamp()) in {_tick(j) for j in fired}
    # A bad schedule in the settings is a bad setting: the daemon refuses to start
    config.write_text('[schedules.broken]\njob = "t.echo"\ncron = "every day"\n')
    bad = subprocess.run([sys.executable, "-m", "supervisor", "--config", str(config), "run"], capture_output=True,
                         text=True, env=env, timeout=30, check=False)
    assert bad.returncode == 78 and "schedules.broken" in bad.stderr and "'cron'" in bad.stderr


async def test_schedule_in_a_task_sidecar_fires(redis_url: str, daemon: Any, tmp_path: Any) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tick.sh").write_text('#!/bin/bash\ncat >/dev/null\necho \'{"ticked": true}\'\n')
    (tasks / "tick.sh").chmod(0o755)
    (tasks / "tick.toml").write_text('name = "t.task-tick"\nschedule = "* * * * * *"\n'
                                     'schedule_payload = { from = "sidecar" }\n')
    daemon()
    async with Client(redis_url) as client:
        deadline = time.monotonic() + 15
        while not (jobs := await _scheduled_jobs(client, "t.task-tick")):
            assert time.monotonic() < deadline, "the sidecar's schedule never fired"
            await asyncio.sleep(0.1)
        job = await client.wait(jobs[-1].id, timeout=15)
        rows = json.loads((await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "supervisor", "schedules", "--json"], capture_output=True, text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))},
                 "REDIS_URL": redis_url}, timeout=30, check=False)).stdout)
    assert job.payload == {"from": "sidecar"} and job.result == {"ticked": True}
    assert any(r["job"] == "t.task-tick" and r["source"].endswith("tick.toml") for r in rows)

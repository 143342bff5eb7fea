"""SIGTERM: the daemon exits within drain_timeout + 1 s of the signal, whatever its jobs do, and
an idle daemon ends its own wait for jobs at once, whoever else waits on the same types.

The jobs here ignore cancellation in each runtime (a sync in-process handler sleeping in its
thread, a process handler sleeping in its worker, a task that ignores SIGTERM), and one job
finishes during the drain. Each job gets one `shutdown.job` line saying what became of it,
and the jobs handed back are pending at once (ack_wait is 300 s: not waited out).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import redis as syncredis

from supervisor import Client, State
from tests.conftest import await_until, wait_until

DRAIN_TIMEOUT = 2.0
#: The issue's bound is drain_timeout + 1 s; a little slack for a loaded CI machine's
#: process start-up and reaping (the log lines below say where the time went if it fails).
BOUND_S = DRAIN_TIMEOUT + 1.0 + 0.5


def _task_ignoring_sigterm(tasks: Path) -> None:
    tasks.mkdir(exist_ok=True)
    script = tasks / "ignores-term.sh"
    script.write_text("#!/bin/bash\ntrap '' TERM\necho started\nsleep 60\n")
    script.chmod(0o755)
    (tasks / "ignores-term.toml").write_text("ack_wait = 300\ngrace = 30\n")


async def _active(client: Client, job_id: str) -> bool:
    return (await client.get(job_id)).state is State.ACTIVE


async def test_sigterm_with_stubborn_jobs_exits_within_the_drain_budget(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path,
) -> None:
    # Given a daemon (drain_timeout 2 s, long cancel and kill graces) running a stubborn job in
    # each runtime, and a job that finishes 0.5 s into the drain
    use_handlers("stubborn")
    _task_ignoring_sigterm(tmp_path / "tasks")
    d = daemon(env={"JOB_SUPERVISOR_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT), "JOB_SUPERVISOR_CANCEL_GRACE": "30",
                    "JOB_SUPERVISOR_KILL_GRACE": "30"})
    async with Client(redis_url) as client:
        stubborn = {name: await client.enqueue(name, {})
                    for name in ("t.stubborn-sync", "t.stubborn-process", "ignores-term")}
        for name, ref in stubborn.items():
            await await_until(lambda ref=ref: _active(client, ref.id), timeout=20, what=f"{name} active")
        await await_until(lambda: _logged(client, stubborn["ignores-term"].id), timeout=10, what="task started")
        soon = await client.enqueue("t.finishes-soon", {"seconds": 0.5})
        await await_until(lambda: _active(client, soon.id), timeout=10, what="t.finishes-soon active")

        # When it gets SIGTERM
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        wait_until(lambda: d.proc.poll() is not None, timeout=BOUND_S + 10, interval=0.01, what="daemon exit")
        took = time.monotonic() - sent

        # Then it exited 0 within drain_timeout + 1 s
        assert d.proc.returncode == 0
        assert took < BOUND_S, f"SIGTERM to exit took {took:.2f}s: {_timeline(d)}"
        # and the stubborn jobs are pending again at once, not waiting out their 300 s lease
        for name, ref in stubborn.items():
            job = await client.get(ref.id)
            assert job.state is State.PENDING and job.deliveries == 0, (name, job.state)
            assert job.attempts[-1].outcome == "released"
        assert (await client.get(soon.id)).state is State.COMPLETED

    # and each job in flight got exactly one shutdown.job line saying what became of it
    lines = {e["job_id"]: e for e in d.events("shutdown.job")}
    assert len(d.events("shutdown.job")) == 4 == len(lines)
    assert lines[soon.id]["fate"] == "finished" and lines[soon.id]["outcome"] == "completed"
    for ref in stubborn.values():
        assert lines[ref.id]["fate"] == "released" and lines[ref.id]["outcome"] == "released"
    assert {lines[r.id]["runtime"] for r in stubborn.values()} == {"inprocess", "process", "subprocess"}
    # and the final report counts them
    report = d.events("daemon.stopped")[0]["report"]
    assert report["jobs"] == {"finished": 1, "released": 3}


IDLE_TYPE = """
from supervisor import job


@job("t.idle")
async def idle(payload, ctx):
    return None
"""


def _blocked_waits(redis: syncredis.Redis) -> int:
    return sum(1 for c in redis.client_list() if c.get("cmd") == "bzpopmin")


def test_daemons_idle_on_one_type_each_end_their_own_wait_on_sigterm(
    redis_url: str, jobs_dir: Path, daemon: Any,
) -> None:
    # Given three daemons idle on the same type, each blocked in its wait for jobs (waits of up
    # to a minute: none ends by itself during the test). Redis hands the type's wake-up to the
    # daemon that waited longest, so a stop that woke its wait through it would end another's.
    (jobs_dir / "idle.py").write_text(IDLE_TYPE)
    daemons = [daemon(env={"JOB_SUPERVISOR_MAX_IDLE_WAIT": "60"}) for _ in range(3)]
    redis = syncredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        wait_until(lambda: _blocked_waits(redis) == 3, timeout=20, what="three blocked waits")
        # When each gets SIGTERM in turn, the last one first (the others still wait meanwhile)
        for left, d in zip((2, 1, 0), reversed(daemons), strict=True):
            d.signal(signal.SIGTERM)
            wait_until(lambda d=d: d.proc.poll() is not None, timeout=20, what="daemon exit")
            assert d.proc.returncode == 0
            # Then its halt ended its own wait, not another daemon's, which still waits
            assert d.events("fetch.waits_cancelled") == [], _timeline(d)
            assert _blocked_waits(redis) == left
    finally:
        redis.close()


async def _logged(client: Client, job_id: str) -> bool:
    return "started" in await client.broker.logs(job_id)


def _timeline(d: Any) -> list[str]:
    return [f"{e.get('timestamp')} {e.get('event')}" for e in d.lines()
            if str(e.get("event", "")).startswith(("signal.", "shutdown.", "daemon.", "pool."))]

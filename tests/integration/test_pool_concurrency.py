"""Many jobs at once in one pool worker (runners.pool): async jobs on its loop, shared sync lanes.

Same setup as test_pool_runner (real worker processes, real signals, no Redis), plus one
test through a real daemon and Redis for the type's `concurrency`. Handlers wait for a gate
file the test creates, so "all started before any finished" is a condition, not a timing.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runners.base import RunResult, RunStatus
from runners.pool import ProcessPoolRunner
from supervisor import Client, State
from tests.conftest import await_until
from tests.integration.test_pool_runner import MakePool, Recorder, pools, request, run

CONCURRENT = '''
"""Handlers that wait for a gate file: async on the worker's loop, sync in its lanes."""
from __future__ import annotations

import asyncio
import os
import time

from supervisor import Context, job


@job("t.await")
async def await_gate(payload: dict, ctx: Context) -> dict:
    await ctx.progress(1, ctx.job_id)
    await ctx.heartbeat()
    start = time.time()
    while not os.path.exists(payload["gate"]) and not ctx.cancelled:
        await asyncio.sleep(0.005)
    if payload.get("die"):
        os._exit(3)
    return {"pid": os.getpid(), "start": start, "end": time.time(), "cancelled": ctx.cancelled}


@job("t.wait")
def wait_gate(payload: dict, ctx: Context) -> dict:
    ctx.progress(1, ctx.job_id)
    start = time.time()
    while not os.path.exists(payload["gate"]) and not ctx.cancelled:
        time.sleep(0.005)
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@job("t.spin")
def spin(payload: dict, ctx: Context) -> dict:
    start = time.time()
    t = time.thread_time()
    while time.thread_time() - t < payload["cpu"]:
        pass
    return {"pid": os.getpid(), "start": start, "end": time.time()}
'''


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[MakePool]:
    async with pools(tmp_path, {"concurrent": CONCURRENT}) as make:
        yield make


def gate(tmp_path: Path, name: str = "gate", **extra: Any) -> str:
    return json.dumps({"gate": str(tmp_path / name), **extra})


def open_gate(tmp_path: Path, name: str = "gate") -> None:
    (tmp_path / name).touch()


async def start_all(runner: ProcessPoolRunner, name: str, payload: str, n: int,
                    **kw: Any) -> tuple[list[asyncio.Future[RunResult]], list[Recorder], list[str]]:
    """n runs of `name`, each waited on until its handler reported progress (it runs)."""
    events = [Recorder() for _ in range(n)]
    reqs = [request(name, payload, **kw) for _ in range(n)]
    futs = [asyncio.ensure_future(run(runner, r, e)) for r, e in zip(reqs, events, strict=True)]
    await await_until(lambda: all(e.started.is_set() for e in events), timeout=15, what=f"{n} x {name} running")
    return futs, events, [r.job_id for r in reqs]


def max_overlap(results: list[RunResult]) -> int:
    """The most runs that were inside their handler at one instant (from their start and end times)."""
    edges = sorted([(r.result["start"], 1) for r in results] + [(r.result["end"], -1) for r in results])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


# --- async jobs --------------------------------------------------------------------------------


async def test_one_worker_runs_many_async_jobs_at_once(pool: MakePool, tmp_path: Path) -> None:
    # Given a pool of one worker
    runner = await pool(1)
    # When five async jobs that wait for a gate are sent
    futs, events, ids = await start_all(runner, "t.await", gate(tmp_path), 5)
    # Then all five run at once in that worker before any finished
    assert not any(f.done() for f in futs)
    assert sorted(runner.workers_info()[0]["running_jobs"]) == sorted(ids)
    open_gate(tmp_path)
    results = await asyncio.gather(*futs)
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    assert len({r.result["pid"] for r in results}) == 1 and max_overlap(results) == 5
    # and each run got its own progress and heartbeat (batched messages reach the run they name)
    for job_id, ev in zip(ids, events, strict=True):
        assert ev.progress_calls == [(1.0, job_id, None)] and ev.heartbeats == 1


async def test_cancel_of_one_async_job_leaves_the_others_running(pool: MakePool, tmp_path: Path) -> None:
    # Given three async jobs running in one worker
    runner = await pool(1)
    futs, _, _ = await start_all(runner, "t.await", gate(tmp_path), 2)
    cancel = asyncio.Event()
    events = Recorder()
    target = asyncio.ensure_future(run(runner, request("t.await", gate(tmp_path)), events, cancel))
    await asyncio.wait_for(events.started.wait(), 10)
    # When one of them is cancelled
    asked = time.monotonic()
    cancel.set()
    result = await asyncio.wait_for(target, 10)
    # Then it ends cancelled at once, its worker kept, and the others go on to complete
    assert result.status is RunStatus.CANCELLED and result.error == "cancelled", result
    assert time.monotonic() - asked < 2.0
    assert not any(f.done() for f in futs)
    open_gate(tmp_path)
    results = await asyncio.gather(*futs)
    assert all(r.status is RunStatus.COMPLETED and r.pid == result.pid for r in results), results


async def test_a_worker_that_dies_fails_every_job_it_runs_and_is_replaced(pool: MakePool, tmp_path: Path) -> None:
    # Given three async jobs running in one worker
    runner = await pool(1)
    futs, _, _ = await start_all(runner, "t.await", gate(tmp_path), 3)
    pid = runner.workers_info()[0]["pid"]
    # When a fourth one makes the worker exit
    open_gate(tmp_path, "now")
    fatal = await run(runner, request("t.await", gate(tmp_path, "now", die=True)), limit=10)
    # Then every job it ran failed with it (the dispatcher delivers them again), and a new worker serves
    assert fatal.status is RunStatus.FAILED and "died" in (fatal.error or ""), fatal
    results = await asyncio.gather(*futs)
    assert all(r.status is RunStatus.FAILED and f"worker {pid} died" in (r.error or "") for r in results), results
    open_gate(tmp_path)
    again = await run(runner, request("t.await", gate(tmp_path)))
    assert again.status is RunStatus.COMPLETED and again.result["pid"] != pid


async def test_a_timeout_kills_the_worker_and_fails_the_jobs_beside_it(pool: MakePool, tmp_path: Path) -> None:
    # Given two async jobs running in one worker
    runner = await pool(1)
    futs, _, _ = await start_all(runner, "t.await", gate(tmp_path), 2)
    # When a third one there runs past its timeout
    late = await run(runner, request("t.await", gate(tmp_path), timeout_s=0.3))
    # Then it timed out, and the jobs beside it failed with their worker (and are delivered again)
    assert late.status is RunStatus.TIMEOUT, late
    results = await asyncio.gather(*futs)
    assert all(r.status is RunStatus.FAILED and "died" in (r.error or "") for r in results), results


# --- sync lanes --------------------------------------------------------------------------------


async def test_sync_jobs_that_mostly_wait_share_the_worker_lanes(pool: MakePool, tmp_path: Path) -> None:
    # Given one worker with three sync lanes, and a sync type measured as mostly waiting
    runner = await pool(1, threads=3)
    warm, _, _ = await start_all(runner, "t.wait", gate(tmp_path, "warm"), 1)
    await asyncio.sleep(0.05)  # it waits: what its measure must show
    open_gate(tmp_path, "warm")
    assert (await warm[0]).status is RunStatus.COMPLETED
    # When four of its jobs are sent
    futs, _, _ = await start_all(runner, "t.wait", gate(tmp_path), 3)
    fourth = asyncio.ensure_future(run(runner, request("t.wait", gate(tmp_path))))
    # Then three run side by side, and the fourth waits for a lane (in the pool: they run long)
    assert len(runner.workers_info()[0]["running_jobs"]) == 3 and not any(f.done() for f in futs)
    open_gate(tmp_path)
    results = await asyncio.gather(*futs, fourth)
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    assert len({r.result["pid"] for r in results}) == 1 and max_overlap(results) == 3


async def test_an_async_job_starts_while_sync_jobs_wait_for_a_lane(pool: MakePool, tmp_path: Path) -> None:
    # Given one worker with one sync lane and no queue, busy with a sync job, and two more waiting in the pool
    runner = await pool(1, queue_depth=0)
    futs, _, _ = await start_all(runner, "t.wait", gate(tmp_path, "sync"), 1)
    waiting = [asyncio.ensure_future(run(runner, request("t.wait", gate(tmp_path, "sync")))) for _ in range(2)]
    await await_until(lambda: len(runner._pending) == 2, timeout=15, what="two sync runs waiting for the lane")
    # When an async job arrives behind them
    (async_run,), _, _ = await start_all(runner, "t.await", gate(tmp_path, "async"), 1)
    # Then it runs at once on the worker's event loop (it needs no lane), ahead of the sync runs
    assert not any(f.done() for f in [*futs, *waiting])
    open_gate(tmp_path, "async")
    assert (await async_run).status is RunStatus.COMPLETED
    assert not any(f.done() for f in waiting)  # still in order behind the running sync job
    open_gate(tmp_path, "sync")
    results = await asyncio.gather(*futs, *waiting)
    assert all(r.status is RunStatus.COMPLETED for r in results), results


async def test_cpu_bound_sync_jobs_run_one_at_a_time_in_a_worker(pool: MakePool) -> None:
    # Given one worker with three sync lanes, and a sync type measured as CPU-bound
    runner = await pool(1, threads=3)
    spin = json.dumps({"cpu": 0.05})
    assert (await run(runner, request("t.spin", spin))).status is RunStatus.COMPLETED
    # When three of its jobs are sent at once
    results = await asyncio.gather(*(run(runner, request("t.spin", spin)) for _ in range(3)))
    # Then they ran one after the other (threads would only share the GIL)
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    assert max_overlap(results) == 1


# --- through a daemon: the type's concurrency ---------------------------------------------------

DAEMON_JOBS = '''
"""An async process-runtime type with concurrency 3 that waits for a gate."""
import asyncio
import os
import time

from supervisor import job


@job("t.gated", runtime="process", concurrency=3, ack_wait=300)
async def gated(payload, ctx):
    start = time.time()
    with open(payload["marks"], "a") as f:
        f.write(ctx.job_id + "\\n")
    while not os.path.exists(payload["gate"]):
        await asyncio.sleep(0.005)
    return {"pid": os.getpid(), "start": start, "end": time.time()}
'''


async def test_a_process_type_runs_up_to_its_concurrency_at_once_in_one_worker(
    redis_url: str, jobs_dir: Path, daemon: Any, tmp_path: Path,
) -> None:
    # Given a daemon with one pool worker serving an async process type of concurrency 3
    (jobs_dir / "gated.py").write_text(DAEMON_JOBS)
    daemon(env={"WORKERS_CONCURRENCY": "1"})
    marks = tmp_path / "marks.txt"
    payload = {"gate": str(tmp_path / "gate"), "marks": str(marks)}
    async with Client(redis_url) as client:
        # When six jobs are enqueued
        refs = [await client.enqueue("t.gated", payload) for _ in range(6)]

        def started() -> int:
            return len(marks.read_text().splitlines()) if marks.exists() else 0

        # Then three run at once (in one worker) while three wait in the queue
        await await_until(lambda: started() == 3, timeout=30, what="three jobs started")
        states = [(await client.get(r.id)).state for r in refs]
        assert states.count(State.ACTIVE) == 3 and states.count(State.PENDING) == 3, states
        open_gate(tmp_path)
        jobs = [await client.wait(r.id, timeout=30) for r in refs]
    assert all(j.state is State.COMPLETED for j in jobs), [j.state for j in jobs]
    results = [RunResult(RunStatus.COMPLETED, j.result) for j in jobs]
    assert len({r.result["pid"] for r in results}) == 1 and max_overlap(results) == 3


CRASHY_JOBS = '''
"""Async process-runtime jobs that share one worker; one of them kills it on its first attempt."""
import asyncio
import os

from supervisor import job


@job("t.crashy", runtime="process", concurrency=3, max_deliver=3, backoff=[0.05], ack_wait=300)
async def crashy(payload, ctx):
    with open(payload["marks"], "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt}\\n")
    if ctx.attempt > 1:
        return {"attempt": ctx.attempt, "pid": os.getpid()}
    while True:  # first attempts: wait until all three run in this worker
        with open(payload["marks"]) as f:
            if len(f.read().splitlines()) >= 3:
                break
        await asyncio.sleep(0.005)
    if payload.get("die"):
        os._exit(3)
    await asyncio.sleep(60)  # ended by the crash
'''


async def test_jobs_beside_a_crash_are_delivered_again_and_complete(
    redis_url: str, jobs_dir: Path, daemon: Any, tmp_path: Path,
) -> None:
    # Given three async process jobs running in one worker
    (jobs_dir / "crashy.py").write_text(CRASHY_JOBS)
    daemon(env={"WORKERS_CONCURRENCY": "1"})
    marks = tmp_path / "marks.txt"
    async with Client(redis_url) as client:
        refs = [await client.enqueue("t.crashy", {"marks": str(marks), "die": i == 0}) for i in range(3)]
        # When one of them kills the worker
        jobs = [await client.wait(r.id, timeout=60) for r in refs]
    # Then all three failed that attempt with the worker and completed on the next one (a new worker)
    assert all(j.state is State.COMPLETED and j.result["attempt"] == 2 for j in jobs), [j.state for j in jobs]
    assert all("died" in (j.attempts[0].error or "") for j in jobs), [j.attempts[0].error for j in jobs]

"""Queue-ahead in the `process` runner (runners.pool): jobs held in a worker before they start.

Same setup as test_pool_runner: real worker processes, real signals, no Redis. Two
handlers make the tests deterministic: `t.gate` runs until the test creates its gate
file (so a worker stays busy exactly as long as a test needs), and `t.mark` appends
"job_id pid" to a file when it starts, which tells whether, where and how often a
queued job ran. A job is queued only behind types the pool has measured as short,
so each test first runs every type it uses once (`warm`). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runners.base import RunResult, RunStatus
from runners.pool import ProcessPoolRunner
from tests.conftest import await_until
from tests.integration.test_pool_runner import (
    HANDLERS,
    ChildEnqueues,
    MakePool,
    Recorder,
    gone,
    pids_settle,
    pools,
    request,
    run,
)

GATED = '''
"""Handlers that let a test decide when a job ends, and record when jobs start."""
from __future__ import annotations

import os
import time

from supervisor import Context, job


@job("t.gate")
def gate(payload: dict, ctx: Context) -> dict:
    ctx.progress(1, "started")
    deadline = time.monotonic() + payload.get("limit", 60)
    while not os.path.exists(payload["path"]) and not ctx.cancelled and time.monotonic() < deadline:
        time.sleep(0.005)
    return {"pid": os.getpid(), "released": os.path.exists(payload["path"])}


@job("t.die")
def die(payload: dict, ctx: Context) -> dict:
    if payload.get("exit"):
        os._exit(3)
    return {"pid": os.getpid()}


@job("t.mark")
def mark(payload: dict, ctx: Context) -> dict:
    with open(payload["path"], "a") as f:
        f.write(f"{ctx.job_id} {os.getpid()}\\n")
    time.sleep(payload.get("seconds", 0))
    return {"pid": os.getpid()}
'''

FILES = {"handlers": HANDLERS, "gated": GATED}
HOLD = 60.0  # reclaim_after_s for tests that keep jobs queued behind a busy worker


class Gates:
    """Gate files in tmp_path: `t.gate` runs end when the test opens their gate."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "gates"
        self.dir.mkdir()
        self.marks = tmp_path / "marks.txt"
        self.n = 0

    def gate(self, name: str | None = None) -> str:
        self.n += 1
        return json.dumps({"path": str(self.dir / (name or f"g{self.n}"))})

    def open(self, payload: str) -> None:
        Path(json.loads(payload)["path"]).touch()

    def mark(self, seconds: float = 0.0) -> str:
        return json.dumps({"path": str(self.marks), "seconds": seconds})

    def starts(self) -> list[tuple[str, int]]:
        """(job_id, pid) of every `t.mark` start, in order."""
        if not self.marks.exists():
            return []
        return [(j, int(p)) for j, p in (line.split() for line in self.marks.read_text().splitlines())]


@pytest.fixture
def gates(tmp_path: Path) -> Gates:
    return Gates(tmp_path)


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[MakePool]:
    """Start pools on FILES written into tmp_path/jobs (closed after the test)."""
    async with pools(tmp_path, FILES) as make:
        yield make


async def warm(runner: ProcessPoolRunner, gates: Gates, *extra: tuple[str, str]) -> None:
    """Run each type once, quickly, so the pool knows them as short (jobs may queue behind them)."""
    opened = gates.gate("open")
    gates.open(opened)
    for name, payload in (("t.gate", opened), ("t.mark", json.dumps({"path": os.devnull})), *extra):
        assert (await run(runner, request(name, payload))).status is RunStatus.COMPLETED


async def start_gate(runner: ProcessPoolRunner, gates: Gates, **kw: Any) -> tuple[asyncio.Future[Any], str, str]:
    """A `t.gate` run that has started in a worker; returns (its future, its payload, its job id)."""
    payload, events = gates.gate(), Recorder()
    req = request("t.gate", payload, timeout_s=None, **kw)
    fut = asyncio.ensure_future(run(runner, req, events))
    await asyncio.wait_for(events.started.wait(), 10)
    return fut, payload, req.job_id


async def submit_mark(runner: ProcessPoolRunner, gates: Gates) -> asyncio.Future[RunResult]:
    """Submit a "t.mark" job; returns once the pool has placed it (in a worker or in the pool)."""
    req = request("t.mark", gates.mark())
    waiting = asyncio.ensure_future(runner.run(req, Recorder(), asyncio.Event()))
    await asyncio.sleep(0)  # its first step: the pool places a run (worker or pool) before it awaits
    return waiting


def queued(runner: ProcessPoolRunner) -> dict[int, list[str]]:
    return {w["pid"]: w["queued_jobs"] for w in runner.workers_info()}


async def until_queued(runner: ProcessPoolRunner, job_ids: list[str]) -> int:
    """Wait until the jobs are all queued in one worker; returns its pid."""
    def where() -> int | None:
        for pid, ids in queued(runner).items():
            if set(job_ids) <= set(ids):
                return pid
        return None

    pid: int = await await_until(where, timeout=10, what=f"{job_ids} queued in a worker")
    return pid


# --- queue-ahead -----------------------------------------------------------------------------


async def test_a_busy_worker_holds_jobs_queued_ahead_and_runs_them_in_order(pool: MakePool, gates: Gates) -> None:
    # Given one worker with room for two jobs queued ahead, running a job that waits for its gate
    runner = await pool(1, queue_depth=2, reclaim_after_s=HOLD)
    await warm(runner, gates)
    g, gate, _ = await start_gate(runner, gates)
    # When three more jobs are submitted
    reqs = [request("t.mark", gates.mark()) for _ in range(3)]
    runs = [asyncio.ensure_future(run(runner, r)) for r in reqs]
    # Then the first two wait in the worker itself, the third in the pool, and none has started
    pid = await until_queued(runner, [r.job_id for r in reqs[:2]])
    assert queued(runner)[pid] == [r.job_id for r in reqs[:2]]
    assert gates.starts() == []
    # And once the running job ends they all run there, in the order they were sent
    gates.open(gate)
    results = await asyncio.gather(g, *runs)
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    assert {r.pid for r in results} == {pid}
    assert gates.starts() == [(r.job_id, pid) for r in reqs]
    (info,) = runner.workers_info()
    assert info["queued_jobs"] == [] and info["busy_job"] is None and info["state"] == "idle"


async def test_nothing_is_queued_behind_a_type_not_measured_yet(pool: MakePool, gates: Gates) -> None:
    # Given one worker running the first job of a type (its run time is unknown, so it may be long)
    runner = await pool(1, queue_depth=3, reclaim_after_s=HOLD)
    g, gate, _ = await start_gate(runner, gates)
    # When another job is submitted
    waiting = await submit_mark(runner, gates)
    # Then it waits in the pool, not in the worker, and runs once the gate job ended
    assert list(queued(runner).values()) == [[]]
    gates.open(gate)
    assert (await g).status is RunStatus.COMPLETED
    assert (await waiting).status is RunStatus.COMPLETED


async def test_a_job_queued_behind_a_long_run_moves_to_a_free_worker(pool: MakePool, gates: Gates) -> None:
    # Given two workers, each running a gate job, and one more job queued behind one of them
    runner = await pool(2, queue_depth=3, reclaim_after_s=1.0)
    await warm(runner, gates)
    g1, gate1, id1 = await start_gate(runner, gates)
    g2, gate2, _ = await start_gate(runner, gates)
    req = request("t.mark", gates.mark())
    waiting = asyncio.ensure_future(run(runner, req))
    behind = await until_queued(runner, [req.job_id])
    busy = {w["busy_job"]: w["pid"] for w in runner.workers_info()}
    # When the *other* worker's job ends, while the one it is queued behind keeps running
    other_gate, other_fut, stuck_fut = (gate2, g2, g1) if busy[id1] == behind else (gate1, g1, g2)
    gates.open(other_gate)
    assert (await other_fut).status is RunStatus.COMPLETED
    # Then the queued job is taken back once the long run passed reclaim_after_s, and runs on the free worker
    res = await asyncio.wait_for(waiting, 10)
    assert res.status is RunStatus.COMPLETED and res.pid != behind
    assert not stuck_fut.done()
    assert gates.starts() == [(req.job_id, res.pid)]
    # And nothing new is queued behind the long run
    late = request("t.mark", gates.mark(seconds=0.5))
    late_run = asyncio.ensure_future(run(runner, late))
    await await_until(lambda: late.job_id in {w["busy_job"] for w in runner.workers_info()}, timeout=10,
                      what="the late job running on the free worker")
    assert queued(runner)[behind] == []
    gates.open(gate1 if other_gate == gate2 else gate2)
    assert all(r.status is RunStatus.COMPLETED for r in await asyncio.gather(stuck_fut, late_run))


# --- crashes ---------------------------------------------------------------------------------


async def test_sigkill_fails_the_running_job_and_runs_the_queued_ones_elsewhere(
    pool: MakePool, gates: Gates,
) -> None:
    # Given two workers, each running a gate job with two jobs queued behind it
    runner = await pool(2, queue_depth=2, reclaim_after_s=HOLD)
    await warm(runner, gates)
    g1, _, id1 = await start_gate(runner, gates)
    g2, gate2, id2 = await start_gate(runner, gates)
    reqs = [request("t.mark", gates.mark()) for _ in range(4)]
    runs = [asyncio.ensure_future(run(runner, r)) for r in reqs]
    await await_until(lambda: sum(len(ids) for ids in queued(runner).values()) == 4, timeout=10,
                      what="4 jobs queued in the workers")
    by_pid = queued(runner)
    busy = {w["busy_job"]: w["pid"] for w in runner.workers_info()}
    victim, survivor = busy[id1], busy[id2]
    moved = set(by_pid[victim])
    assert len(moved) == 2
    # When the first worker is killed with SIGKILL
    os.kill(victim, signal.SIGKILL)
    # Then the job it was running fails, as a crash, exactly as without queue-ahead
    crashed = await asyncio.wait_for(g1, 10)
    assert crashed.status is RunStatus.FAILED
    assert crashed.error == f"worker {victim} died: signal SIGKILL" and crashed.pid == victim
    # And the jobs queued in it were not failed: they run, once each, on another worker
    gates.open(gate2)
    results = await asyncio.gather(g2, *runs)
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    assert all(r.pid != victim for r in results)
    starts = gates.starts()
    assert sorted(j for j, _ in starts) == sorted(r.job_id for r in reqs), "each job started exactly once"
    assert all(pid != victim for _, pid in starts)
    assert {pid for j, pid in starts if j not in moved} == {survivor}
    await await_until(lambda: gone(victim), timeout=10, what="the killed worker to be gone")
    assert len(await pids_settle(runner, 2)) == 2


async def test_a_job_that_kills_its_worker_fails_alone(pool: MakePool, gates: Gates) -> None:
    # Given one worker running a job that crashes it once released, with a job queued behind it
    runner = await pool(1, queue_depth=2, reclaim_after_s=HOLD)
    await warm(runner, gates, ("t.die", "{}"))
    (old,) = await pids_settle(runner, 1)
    g, gate, _ = await start_gate(runner, gates)
    crash = asyncio.ensure_future(run(runner, request("t.die", '{"exit": true}')))
    after = request("t.mark", gates.mark())
    later = asyncio.ensure_future(run(runner, after))
    await await_until(lambda: len(queued(runner)[old]) == 2, timeout=10, what="2 jobs queued")
    # When the crashing job runs (os._exit(3))
    gates.open(gate)
    # Then it fails with the worker, and the job behind it runs on the replacement
    assert (await g).status is RunStatus.COMPLETED
    res = await crash
    assert res.status is RunStatus.FAILED and res.error == f"worker {old} died: exit code 3"
    nxt = await later
    assert nxt.status is RunStatus.COMPLETED and nxt.pid != old
    assert gates.starts() == [(after.job_id, nxt.pid)]


# --- timeout ---------------------------------------------------------------------------------


async def test_timeout_counts_from_the_start_in_the_worker(pool: MakePool, gates: Gates) -> None:
    # Given a job with a 1 s timeout that takes 0.3 s, queued behind a job that keeps the worker busy
    runner = await pool(1, queue_depth=2, reclaim_after_s=HOLD)
    await warm(runner, gates)
    g, gate, _ = await start_gate(runner, gates)
    req = request("t.mark", gates.mark(seconds=0.3), timeout_s=1.0)
    queued_run = asyncio.ensure_future(run(runner, req))
    pid = await until_queued(runner, [req.job_id])
    # When it waits in the worker for longer than its timeout before it starts
    await asyncio.sleep(1.5)  # the scenario: 1.5 s queued, longer than the 1 s timeout
    assert not queued_run.done()
    gates.open(gate)
    # Then it completes: its timeout started with the job, and its worker was not killed
    res = await queued_run
    assert res.status is RunStatus.COMPLETED and res.pid == pid
    assert (await g).pid == pid


async def test_a_queued_job_that_times_out_once_started_kills_only_its_worker(
    pool: MakePool, gates: Gates,
) -> None:
    # Given a job with a 0.5 s timeout that runs 30 s, queued with another job behind it
    runner = await pool(1, queue_depth=3, reclaim_after_s=HOLD)
    await warm(runner, gates, ("t.sleep", '{"seconds": 0}'))
    g, gate, _ = await start_gate(runner, gates)
    slow = asyncio.ensure_future(run(runner, request("t.sleep", '{"seconds": 30}', timeout_s=0.5)))
    after = request("t.mark", gates.mark())
    later = asyncio.ensure_future(run(runner, after))
    old = await until_queued(runner, [after.job_id])
    # When the gate job ends and the slow one starts
    started = time.monotonic()
    gates.open(gate)
    # Then the slow job times out 0.5 s after its start, its worker is killed,
    assert (await g).pid == old
    res = await slow
    assert res.status is RunStatus.TIMEOUT and res.error == f"timed out after 0.5s; worker {old} killed"
    assert time.monotonic() - started < 5
    # and the job that was queued behind it runs on the replacement
    nxt = await later
    assert nxt.status is RunStatus.COMPLETED and nxt.pid != old
    assert gates.starts() == [(after.job_id, nxt.pid)]
    await await_until(lambda: gone(old), timeout=10, what="the timed-out worker to be killed")


# --- cancel ----------------------------------------------------------------------------------


async def test_cancelling_a_queued_job_drops_it_at_once_and_it_never_starts(pool: MakePool, gates: Gates) -> None:
    # Given a busy worker with two jobs queued behind its running job
    runner = await pool(1, queue_depth=2, reclaim_after_s=HOLD)
    await warm(runner, gates)
    g, gate, _ = await start_gate(runner, gates)
    doomed, kept = request("t.mark", gates.mark()), request("t.mark", gates.mark())
    cancel = asyncio.Event()
    doomed_run = asyncio.ensure_future(run(runner, doomed, cancel=cancel))
    kept_run = asyncio.ensure_future(run(runner, kept))
    pid = await until_queued(runner, [doomed.job_id, kept.job_id])
    # When the first queued job is cancelled
    sent = time.monotonic()
    cancel.set()
    # Then it ends CANCELLED at once, while the running job still runs, and leaves the worker's queue
    res = await asyncio.wait_for(doomed_run, 10)
    assert res.status is RunStatus.CANCELLED and res.error == "cancelled before it started" and res.pid is None
    assert time.monotonic() - sent < 2
    assert not g.done()
    assert queued(runner)[pid] == [kept.job_id]
    # And it never starts; the worker is kept and runs the rest
    gates.open(gate)
    assert (await g).pid == pid
    assert (await kept_run).pid == pid
    assert gates.starts() == [(kept.job_id, pid)]


async def test_an_abandoned_queued_run_is_dropped_without_killing_the_worker(pool: MakePool, gates: Gates) -> None:
    # Given a busy worker with a job queued behind its running job
    runner = await pool(1, queue_depth=2, reclaim_after_s=HOLD)
    await warm(runner, gates)
    g, gate, _ = await start_gate(runner, gates)
    req = request("t.mark", gates.mark())
    task = asyncio.ensure_future(runner.run(req, Recorder(), asyncio.Event()))
    pid = await until_queued(runner, [req.job_id])
    # When the caller stops waiting for it (what the dispatcher does to runs left at shutdown)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Then the worker drops it, keeps running its job, and is not replaced
    await await_until(lambda: queued(runner)[pid] == [], timeout=10, what="the abandoned job to be dropped")
    gates.open(gate)
    assert (await g).status is RunStatus.COMPLETED and (await g).pid == pid
    assert (await run(runner, request("t.mark", json.dumps({"path": os.devnull})))).pid == pid
    assert gates.starts() == []


# --- recycling -------------------------------------------------------------------------------


async def test_recycle_hands_queued_jobs_to_the_new_workers(pool: MakePool, gates: Gates) -> None:
    # Given a busy worker with two jobs queued behind its running job
    runner = await pool(1, queue_depth=3, reclaim_after_s=HOLD)
    await warm(runner, gates)
    g, gate, _ = await start_gate(runner, gates)
    reqs = [request("t.mark", gates.mark()) for _ in range(2)]
    runs = [asyncio.ensure_future(run(runner, r)) for r in reqs]
    old = await until_queued(runner, [r.job_id for r in reqs])
    # When the pool is recycled (hot reload)
    runner.recycle()
    # Then the old worker hands its queued jobs back at once and finishes the job it runs
    await await_until(lambda: queued(runner).get(old) == [], timeout=10, what="queued jobs handed back")
    assert not any(r.done() for r in runs)
    gates.open(gate)
    assert (await g).pid == old
    # And the handed-back jobs run, once each, on the new worker; nothing failed
    results = await asyncio.gather(*runs)
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    (new,) = {r.pid for r in results}
    assert new != old
    assert gates.starts() == [(r.job_id, new) for r in reqs]
    assert await pids_settle(runner, 1) == {new}


async def test_max_jobs_per_worker_holds_no_more_than_a_worker_may_run(pool: MakePool, gates: Gates) -> None:
    # Given workers replaced after 3 jobs, and room for 3 jobs queued ahead
    runner = await pool(1, queue_depth=3, max_jobs_per_worker=3)
    await warm(runner, gates)  # 2 jobs on the first worker
    first = {w["pid"] for w in runner.workers_info()}
    # When 7 jobs are submitted at once
    reqs = [request("t.mark", gates.mark()) for _ in range(7)]
    results = await asyncio.gather(*(run(runner, r) for r in reqs))
    # Then all complete, each once, and no worker ran more than 3
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    starts = gates.starts()
    assert sorted(j for j, _ in starts) == sorted(r.job_id for r in reqs)
    per_pid: dict[int, int] = {}
    for _, pid in starts:
        per_pid[pid] = per_pid.get(pid, 0) + 1 + (2 if pid in first else 0)
    assert all(n <= 3 for n in per_pid.values()), per_pid
    assert len(per_pid) >= 3


async def test_a_worker_over_max_rss_starts_none_of_its_queued_jobs(pool: MakePool, gates: Gates) -> None:
    # Given workers limited to 150 MB, the types measured, and jobs queued behind one that keeps 200 MB
    runner = await pool(1, queue_depth=3, max_worker_rss_mb=150, reclaim_after_s=HOLD)
    await warm(runner, gates, ("t.hoard", '{"mb": 0}'))
    (old,) = await pids_settle(runner, 1)
    g, gate, _ = await start_gate(runner, gates)
    big = asyncio.ensure_future(run(runner, request("t.hoard", '{"mb": 200}')))
    reqs = [request("t.mark", gates.mark()) for _ in range(2)]
    runs = [asyncio.ensure_future(run(runner, r)) for r in reqs]
    await until_queued(runner, [r.job_id for r in reqs])
    # When the hoarding job runs
    gates.open(gate)
    # Then it completes, and the jobs behind it run on a new worker, not on the bloated one
    assert (await g).pid == old
    assert (await big).pid == old
    results = await asyncio.gather(*runs)
    assert all(r.status is RunStatus.COMPLETED and r.pid != old for r in results), results
    assert all(pid != old for _, pid in gates.starts()) and len(gates.starts()) == 2
    await await_until(lambda: gone(old), timeout=10, what="the bloated worker to exit")


# --- messages --------------------------------------------------------------------------------


async def test_progress_and_child_enqueue_reach_the_run_they_belong_to(pool: MakePool, gates: Gates) -> None:
    child_enqueue = ChildEnqueues()
    calls = child_enqueue.calls
    # Given one worker, the types measured, and four runs sent at once (the sync ones queue
    # behind the gate, the async ones run at once on the worker's loop)
    runner = await pool(1, queue_depth=3, reclaim_after_s=HOLD, child_enqueue=child_enqueue)
    await warm(runner, gates, ("t.family", "{}"), ("t.afamily", "{}"))
    g, gate, _ = await start_gate(runner, gates)
    names = ["t.family", "t.afamily", "t.family", "t.afamily"]
    events = [Recorder() for _ in names]
    reqs = [request(n, job_id=f"parent-{i}") for i, n in enumerate(names)]
    runs = [asyncio.ensure_future(run(runner, r, e)) for r, e in zip(reqs, events, strict=True)]
    await until_queued(runner, [reqs[0].job_id, reqs[2].job_id])
    # When they run
    gates.open(gate)
    results = await asyncio.gather(g, *runs)
    # Then each got its own progress and heartbeats, and its child jobs name it as parent
    assert all(r.status is RunStatus.COMPLETED for r in results), results
    for name, ev in zip(names, events, strict=True):
        if name == "t.family":
            assert ev.progress_calls == [(40.0, "half", "s1")] and ev.heartbeats == 1
        else:
            assert ev.progress_calls == [(10.0, "a", None)] and ev.heartbeats == 0
    parents = [o["parent"] for n, _, o, _ in calls if n == "t.child" and o["parent"].startswith("parent-")]
    assert sorted(parents) == ["parent-0", "parent-1", "parent-2", "parent-3"]
    assert parents.index("parent-0") < parents.index("parent-2")  # sync runs in the order sent


# --- closing ---------------------------------------------------------------------------------


async def test_close_fails_queued_jobs_at_once_and_lets_the_running_one_finish(pool: MakePool, gates: Gates) -> None:
    # Given a busy worker with two jobs queued behind its running job
    runner = await pool(1, queue_depth=3, reclaim_after_s=HOLD, kill_grace_s=10)
    await warm(runner, gates)
    g, gate, _ = await start_gate(runner, gates)
    reqs = [request("t.mark", gates.mark()) for _ in range(2)]
    runs = [asyncio.ensure_future(run(runner, r)) for r in reqs]
    (pid,) = {w["pid"] for w in runner.workers_info()}
    await until_queued(runner, [r.job_id for r in reqs])
    # When the pool is closed
    closing = asyncio.ensure_future(runner.close())
    # Then the queued jobs end at once, never started, retryable (FAILED), while the running one goes on
    results = await asyncio.wait_for(asyncio.gather(*runs), 5)
    assert all(r.status is RunStatus.FAILED and r.error == "the process pool is closed" for r in results)
    assert not g.done() and not closing.done()
    # And the running job finishes before its worker exits
    gates.open(gate)
    res = await g
    assert res.status is RunStatus.COMPLETED and res.pid == pid
    await asyncio.wait_for(closing, 30)
    assert gone(pid) and gates.starts() == []


# --- configuration ---------------------------------------------------------------------------


async def test_queue_depth_zero_sends_a_worker_one_job_at_a_time(pool: MakePool, gates: Gates) -> None:
    # Given a worker with no room for queued jobs, the types measured, running a job
    runner = await pool(1, queue_depth=0, reclaim_after_s=HOLD)
    await warm(runner, gates)
    g, gate, _ = await start_gate(runner, gates)
    # When another job is submitted
    waiting = await submit_mark(runner, gates)
    # Then it waits in the pool until the running job ended
    assert list(queued(runner).values()) == [[]]
    gates.open(gate)
    assert (await g).status is RunStatus.COMPLETED
    assert (await asyncio.wait_for(waiting, 10)).status is RunStatus.COMPLETED


def test_a_negative_queue_depth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="queue_depth"):
        ProcessPoolRunner(tmp_path, 1, queue_depth=-1)

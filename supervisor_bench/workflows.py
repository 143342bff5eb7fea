"""The `workflows` section of `job-supervisor bench` (issue 20): what dependencies and fan-in cost.

- `dependency`: the overhead of one dependency per job. One daemon serves an in-process no-op
  type. `pairs` pairs of jobs are enqueued one at a time and drained, twice: first as plain jobs
  (2 x pairs), then with the second job of each pair depending on the first (`depends_on`). The
  difference per pair, in Redis commands (INFO commandstats: script calls, the releaser's reads,
  pub/sub included), in Redis script time, and in wall time from the first enqueue to the last
  completion, is what one dependency costs.
- `fan_out`: a batch of `fan_out` no-op jobs (enqueue_many, chunks of 1,000, `batch=`) with one
  `on_complete` callback: the time from the first enqueue to the callback's completion, the rate
  (jobs per second over that time), and the fan-in latency (last member completed to callback
  completed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from supervisor.engine import deps, keys
from supervisor_bench.harness import Bench

STEP, CALLBACK = "bench.wf-step", "bench.wf-callback"
_SOURCE = '''"""Workflow handlers of `job-supervisor bench` (written by the bench; safe to delete)."""
from supervisor import job


@job("bench.wf-step", runtime="inprocess", concurrency=200, max_deliver=1000)
async def step(payload, ctx):
    return 1


@job("bench.wf-callback", runtime="inprocess", max_deliver=1000)
async def callback(payload, ctx):
    return payload.get("batch")
'''


def _jobs_dir(b: Bench) -> tuple[Path, Path]:
    jobs, tasks = b.root / "jobs-workflows", b.root / "tasks-none"
    jobs.mkdir(exist_ok=True)
    tasks.mkdir(exist_ok=True)
    (jobs / "bench_workflows.py").write_text(_SOURCE)
    return jobs, tasks


def _clean(b: Bench) -> None:
    """Delete every key of the two types (their slots) and of the batches the section made."""
    assert b.r is not None
    for name in (STEP, CALLBACK):
        for key in b.r.scan_iter(match=f"{keys.PREFIX}:{{{keys.tag_for(name)}}}:*", count=5000):
            if not key.endswith(":meta"):
                b.r.unlink(key)
    for bid in cast(list[str], b.r.zrange(deps.BATCH_INDEX, 0, -1)):
        if bid.startswith("b-bench"):
            b.r.unlink(*(deps.batch_prefix(bid) + k for k in ("rec", "members", "settled")))
            b.r.zrem(deps.BATCH_INDEX, bid)


def _completed(b: Bench, name: str) -> int:
    assert b.r is not None
    return int(b.r.zcard(keys.index_key(name, "st:completed")))


def _wait_completed(b: Bench, name: str, target: int, timeout: float) -> tuple[float, int]:
    """Poll until `target` jobs of `name` completed: the time.perf_counter() it was seen, and the
    number of polls (Redis commands of the bench's own, left out of the counts)."""
    deadline, polls = time.monotonic() + timeout, 1
    while _completed(b, name) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{_completed(b, name)} of {target} {name} jobs completed after {timeout:g}s")
        time.sleep(0.01)
        polls += 1
    return time.perf_counter(), polls


def _pairs(b: Bench, n: int, linked: bool) -> dict[str, float]:
    """`n` pairs enqueued one at a time (the second depending on the first when `linked`), drained."""
    _clean(b)
    s0 = b.stats()

    async def go() -> float:
        started = time.perf_counter()
        for _ in range(n):
            first = await b.client.enqueue(STEP, {})
            await b.client.enqueue(STEP, {}, depends_on=[first.id] if linked else None)
        return started

    started = b.on_loop(go())
    enqueued = time.perf_counter()
    done, polls = _wait_completed(b, STEP, 2 * n, timeout=300)
    time.sleep(0.3)  # the releaser's last deliveries (notices already settled their dependents)
    delta = b.command_delta(s0, b.stats(), own=polls)
    return {"seconds": done - started, "enqueue_seconds": enqueued - started, "commands": delta["total"],
            "scripts": delta["scripts"], "script_usec": delta["script_usec"]}


def measure_dependency(b: Bench, n: int) -> dict[str, Any]:
    plain, linked = _pairs(b, n, False), _pairs(b, n, True)
    return {
        "pairs": n,
        "plain": plain, "linked": linked,
        "commands_per_dependency": round((linked["commands"] - plain["commands"]) / n, 1),
        "scripts_per_dependency": round((linked["scripts"] - plain["scripts"]) / n, 1),
        "script_us_per_dependency": round((linked["script_usec"] - plain["script_usec"]) / n, 1),
        "enqueue_us_per_dependency": round((linked["enqueue_seconds"] - plain["enqueue_seconds"]) / n * 1e6, 1),
        "wall_us_per_dependency": round((linked["seconds"] - plain["seconds"]) / n * 1e6, 1),
    }


def measure_fan_out(b: Bench, n: int) -> dict[str, Any]:
    """A batch of `n` no-op jobs and one on_complete callback: time to the callback, rate, fan-in latency."""
    from supervisor.producers.client import EnqueueRequest  # noqa: PLC0415

    _clean(b)

    async def go() -> tuple[float, float, str]:
        started = time.perf_counter()
        bid = await b.client.batch(on_complete=CALLBACK, batch_id=f"b-bench{int(time.time() * 1000):x}")
        for start in range(0, n, 1000):
            await b.client.enqueue_many([EnqueueRequest(STEP, {}, batch=bid) for _ in range(min(1000, n - start))])
        await b.client.close_batch(bid)
        return started, time.perf_counter(), bid

    started, enqueued, bid = b.on_loop(go())
    last_member, _ = _wait_completed(b, STEP, n, timeout=1800)
    callback, _ = _wait_completed(b, CALLBACK, 1, timeout=120)
    status = b.on_loop(b.client.batch_status(bid))
    return {"jobs": n, "enqueue_seconds": round(enqueued - started, 2), "seconds": round(callback - started, 2),
            "jobs_per_second": round(n / (callback - started)),
            "fan_in_latency_ms": round((callback - last_member) * 1000, 1),
            "batch": {k: status[k] for k in ("state", "total", "completed", "failed")}}


def measure_workflows(b: Bench) -> dict[str, Any]:
    """Both figures, against one daemon serving the workflow bench types."""
    quick = b.o.quick
    pairs, fan_out = (500, 10_000) if quick else (2000, 100_000)
    jobs, tasks = _jobs_dir(b)
    d = b.start_daemon("workflows", jobs, tasks)
    try:
        d.wait_ready()
        b.say(f"workflows: the cost of a dependency ({pairs} pairs, plain then linked)")
        dependency = measure_dependency(b, pairs)
        b.say(f"workflows: a batch of {fan_out} jobs with one callback")
        fan = measure_fan_out(b, fan_out)
    finally:
        d.stop()
        _clean(b)
    return {"dependency": dependency, "fan_out": fan}


__all__ = ["measure_workflows"]

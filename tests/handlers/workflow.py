"""Handlers for the workflow tests: each run appends one line to a witness file (the payload's
`witness`), an independent record of every run beside Redis's."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from supervisor import Context, PermanentError, job


def _witness(payload: dict[str, Any], ctx: Context, **extra: Any) -> None:
    if payload.get("witness"):
        line = json.dumps({"job": ctx.job_id, "name": ctx.job_name, "step": payload.get("step"), **extra})
        with open(payload["witness"], "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


@job("wf.step", concurrency=20)
async def step(payload: dict, ctx: Context) -> dict[str, Any]:
    """Returns its step and the sum of its dependencies' `total`s plus its own `add`."""
    await asyncio.sleep(float(payload.get("sleep", 0)))
    total = int(payload.get("add", 0)) + sum(int((r or {}).get("total", 0)) for r in ctx.dependency_results.values())
    _witness(payload, ctx)
    return {"step": payload.get("step"), "total": total, "seen": sorted(ctx.dependency_results.states.values())}


@job("wf.other", concurrency=20)
async def other(payload: dict, ctx: Context) -> dict[str, Any]:
    _witness(payload, ctx)
    return {"step": payload.get("step"), "total": int(payload.get("add", 0)),
            "by_type": {k: len(v) for k, v in ctx.dependency_results.by_type.items()}}


@job("wf.fail", max_deliver=1)
async def fail(payload: dict, ctx: Context) -> None:
    _witness(payload, ctx)
    raise PermanentError("failed on purpose")


@job("wf.sleep", concurrency=10)
async def sleep(payload: dict, ctx: Context) -> str:
    _witness(payload, ctx)
    try:
        await asyncio.wait_for(ctx.cancel_event.wait(), float(payload.get("seconds", 30)))
    except TimeoutError:
        return "slept"
    return "cancelled"


@job("wf.spawn", concurrency=10)
async def spawn(payload: dict, ctx: Context) -> int:
    """Adds `n` jobs of wf.step to the batch it runs in (idempotency keys: a re-run adds none twice)."""
    for i in range(int(payload["n"])):
        await ctx.enqueue("wf.step", {"step": f"{ctx.job_id}/{i}", "witness": payload.get("witness")},
                          batch=payload["batch"], idempotency_key=f"{ctx.job_id}:{i}")
    _witness(payload, ctx)
    return int(payload["n"])


@job("wf.callback", concurrency=5)
async def callback(payload: dict, ctx: Context) -> dict[str, Any]:
    _witness(payload, ctx, batch=payload.get("batch"), deps=len(ctx.dependency_results))
    return {"batch": payload.get("batch"), "deps": len(ctx.dependency_results), "pid": os.getpid()}


@job("wf.sub-spawn", runtime="subprocess")
def sub_spawn(payload: dict, ctx: Context) -> dict[str, Any]:
    """A Python job in a fresh process: its ctx.enqueue goes through the task protocol's `::submit`."""
    ref = ctx.enqueue("wf.step", {"add": 1})
    again = ctx.submit("wf.step", {"add": 1}, idempotency_key=f"{ctx.job_id}:again")
    later = ctx.enqueue("wf.step", {"add": 1}, run_at=datetime.now(UTC) + timedelta(seconds=600))
    return {"child": ref.id, "second": again.job_id, "outcome": again.outcome, "later": later.id}


@job("wf.crash-step", concurrency=50, ack_wait=3, max_deliver=50, backoff=[0.05])
async def crash_step(payload: dict, ctx: Context) -> dict[str, Any]:
    """A step of the crash tests: a short run (so SIGKILLs land mid-run), a short lease (so a killed
    daemon's runs come back soon), and every run witnessed."""
    await asyncio.sleep(float(payload.get("sleep", 0.2)))
    _witness(payload, ctx)
    return {"total": 1}

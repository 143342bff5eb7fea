"""Handlers for the telemetry tests: one order followed through three runtimes.

`t.traced-parent` (inprocess) enqueues `t.traced-middle` (process pool), which
enqueues the task named in its payload (a shell task or `t.traced-pyjob`, both
subprocesses). Each logs through `ctx.log` and through a plain structlog logger,
and returns the traceparent its run saw.
"""

from __future__ import annotations

import os
import time

import structlog

from supervisor import Context, PermanentError, job


@job("t.traced-parent", runtime="inprocess")
async def traced_parent(payload: dict, ctx: Context) -> dict[str, object]:
    ctx.log.info("traced.parent", step="start")
    structlog.get_logger("traced").info("traced.parent.plain")
    await ctx.progress(50, "half way", step="enqueue")
    ref = await ctx.enqueue("t.traced-middle", {"task": payload.get("task", "traced_task")})
    return {"child": ref.id, "traceparent": ctx.context.get("traceparent")}


@job("t.traced-middle", runtime="process")
def traced_middle(payload: dict, ctx: Context) -> dict[str, object]:
    ctx.log.info("traced.middle")
    structlog.get_logger("traced").info("traced.middle.plain")
    ref = ctx.enqueue(payload["task"], {"from": ctx.job_id})
    return {"child": ref.id, "traceparent": ctx.context.get("traceparent")}


@job("t.traced-pyjob", runtime="subprocess")
def traced_pyjob(payload: dict, ctx: Context) -> dict[str, object]:
    print(f"pyjob line for {ctx.job_id}", flush=True)
    return {"traceparent": os.environ.get("TRACEPARENT"), "request_id": os.environ.get("JOB_REQUEST_ID")}


@job("t.traced-echo", concurrency=50)
async def traced_echo(payload: dict, ctx: Context) -> dict[str, object]:
    return {"ok": True}


@job("t.traced-tick")
async def traced_tick(payload: dict, ctx: Context) -> dict[str, object]:
    return {"tick": ctx.job_id}


@job("t.traced-sleep", concurrency=10, runtime="inprocess")
def traced_sleep(payload: dict, ctx: Context) -> dict[str, object]:
    time.sleep(float(payload.get("seconds", 1.0)))
    return {"slept": True}


@job("t.traced-fails", max_deliver=1)
async def traced_fails(payload: dict, ctx: Context) -> None:
    raise PermanentError("card declined")


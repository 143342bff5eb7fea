"""Keyed-concurrency, queue-policy, rate-limit and cancellation test handlers."""

from __future__ import annotations

import asyncio
import os
import time

from supervisor import Context, job


@job("t.keyed", key_concurrency={"key": ["tenant", "/tenant"], "max_active": 1},
     queue={"max_queued_per_key": 100}, concurrency=20)
async def keyed(payload: dict, ctx: Context) -> dict[str, float]:
    started = time.time()
    await asyncio.sleep(0.02)
    return {"started": started, "ended": time.time()}


@job("t.reject", key_concurrency={"key": ["/k"]})
def reject(payload: dict) -> str:
    return "ran"


@job("t.coalesce", key_concurrency={"key": ["/k"]}, queue={"when_full": "coalesce"})
def coalesce(payload: dict) -> str:
    return "ran"


@job("t.replace", key_concurrency={"key": ["/k"]}, queue={"max_queued_per_key": 1, "when_full": "replace-oldest"})
def replace(payload: dict) -> dict:
    return payload


@job("t.stale-fail", key_concurrency={"key": ["/k"]}, queue={"max_queued_per_key": 5}, ack_wait=1)
async def stale_fail(payload: dict, ctx: Context) -> int:
    await asyncio.sleep(float(payload.get("sleep", 0)))
    return os.getpid()


@job("t.stale-requeue", key_concurrency={"key": ["/k"], "stale_policy": "requeue-stale"},
     queue={"max_queued_per_key": 5}, ack_wait=1)
async def stale_requeue(payload: dict, ctx: Context) -> int:
    if ctx.attempt == 1:
        await asyncio.sleep(float(payload.get("sleep", 0)))
    return os.getpid()


@job("t.rated", rate_limit="50/s", concurrency=50)
async def rated(payload: dict) -> float:
    return time.time()


@job("t.ignores-cancel-async", ack_wait=30)
async def ignores_cancel_async(payload: dict) -> str:
    await asyncio.sleep(60)
    return "never"


@job("t.ignores-cancel-sync", ack_wait=30)
def ignores_cancel_sync(payload: dict) -> str:
    time.sleep(3)
    return "late"


@job("t.ignores-cancel-process", runtime="process", ack_wait=30)
def ignores_cancel_process(payload: dict) -> str:
    time.sleep(60)
    return "never"


@job("t.always-retries", max_deliver=5, backoff=[60])
def always_retries(payload: dict) -> None:
    raise RuntimeError("try again later")

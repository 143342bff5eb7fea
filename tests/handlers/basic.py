"""Tiny handlers for the daemon tests (copied into a test's own jobs/ folder)."""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from supervisor import Context, PermanentError, Retry, job


class Echo(BaseModel):
    value: str = ""


@job("t.echo", concurrency=20)
async def echo(payload: Echo, ctx: Context) -> dict[str, object]:
    return {"value": payload.value, "pid": os.getpid(), "attempt": ctx.attempt}


@job("t.sync-echo")
def sync_echo(payload: Echo, ctx: Context) -> dict[str, object]:
    return {"value": payload.value, "pid": os.getpid()}


class Flaky(BaseModel):
    succeed_on: int


@job("t.flaky", max_deliver=5, backoff=[0.05])
async def flaky(payload: Flaky, ctx: Context) -> dict[str, int]:
    if ctx.attempt < payload.succeed_on:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"succeeded_on": ctx.attempt}


@job("t.always-fails", max_deliver=3, backoff=[0.05])
def always_fails(payload: dict, ctx: Context) -> None:
    raise ValueError(f"boom on attempt {ctx.attempt}")


@job("t.permanent", max_deliver=5)
async def permanent(payload: dict, ctx: Context) -> None:
    raise PermanentError("card declined")


@job("t.retry-later", max_deliver=3)
async def retry_later(payload: dict, ctx: Context) -> str:
    if ctx.attempt == 1:
        raise Retry(delay=0.1, reason="rate limited upstream")
    return "ok"


class Sleep(BaseModel):
    seconds: float


@job("t.sleep", ack_wait=2, concurrency=50, max_deliver=5)
async def sleep(payload: Sleep, ctx: Context) -> dict[str, object]:
    await asyncio.sleep(payload.seconds)
    return {"slept": payload.seconds, "pid": os.getpid()}


@job("t.serial", concurrency=1)
def serial(payload: dict, ctx: Context) -> dict[str, float]:
    return {"at": time.time()}


@job("t.progress")
async def progress(payload: dict, ctx: Context) -> str:
    await ctx.progress(40, "resizing", step="resize")
    ctx.heartbeat()
    return "done"


@job("t.parent")
async def parent(payload: Echo, ctx: Context) -> dict[str, str]:
    child = await ctx.enqueue("t.echo", {"value": payload.value + "-child"})
    return {"child": child.id}


@job("t.cooperative", ack_wait=2)
async def cooperative(payload: dict, ctx: Context) -> str:
    ctx.log.info("cooperative.waiting")
    await ctx.cancel_event.wait()
    return "stopped early"


@job("t.long", ack_wait=60, concurrency=10)
async def long(payload: Sleep, ctx: Context) -> dict[str, object]:
    await asyncio.sleep(payload.seconds)
    return {"slept": payload.seconds, "pid": os.getpid()}

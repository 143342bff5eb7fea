"""Handlers for the dead-predecessor tests: a long first attempt under a 300 s lease."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from supervisor import Context, job


class Long(BaseModel):
    seconds: float


@job("t.held", ack_wait=300, max_deliver=5, concurrency=10)
async def held(payload: Long, ctx: Context) -> dict[str, int]:
    """The first attempt runs for `seconds` (its daemon is killed meanwhile); a redelivery returns at once."""
    if ctx.attempt == 1:
        await asyncio.sleep(payload.seconds)
    return {"attempt": ctx.attempt, "pid": os.getpid()}


@job("t.held-once", ack_wait=300, max_deliver=1)
async def held_once(payload: Long, ctx: Context) -> int:
    """max_deliver 1: a dead holder's release uses its one delivery."""
    await asyncio.sleep(payload.seconds)
    return ctx.attempt

"""Handlers that ignore cancellation, and one that finishes soon, under a 300 s lease."""

from __future__ import annotations

import asyncio
import time

from supervisor import Context, job


@job("t.stubborn-sync", runtime="inprocess", ack_wait=300)
def stubborn_sync(payload: dict, ctx: Context) -> str:
    time.sleep(60)  # a thread cannot be stopped: the daemon must exit without it
    return "never"


@job("t.stubborn-process", runtime="process", ack_wait=300)
def stubborn_process(payload: dict, ctx: Context) -> str:
    time.sleep(60)
    return "never"


@job("t.finishes-soon", runtime="inprocess", ack_wait=300)
async def finishes_soon(payload: dict, ctx: Context) -> str:
    await asyncio.sleep(float(payload.get("seconds", 0.5)))
    return "done"

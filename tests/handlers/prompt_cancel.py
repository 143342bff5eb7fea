"""Handlers that stop when cancelled, under a 300 s lease (heartbeats every 100 s)."""

from __future__ import annotations

import asyncio
import time

from supervisor import Context, job


@job("t.polls-cancel-async", runtime="inprocess", ack_wait=300)
async def polls_cancel_async(payload: dict, ctx: Context) -> str:
    while not ctx.cancelled:
        await asyncio.sleep(0.02)
    return "stopped"


@job("t.polls-cancel-process", runtime="process", ack_wait=300)
def polls_cancel_process(payload: dict, ctx: Context) -> str:
    while not ctx.cancelled:
        time.sleep(0.02)
    return "stopped"

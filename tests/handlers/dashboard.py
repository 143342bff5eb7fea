"""Handlers the dashboard's browser tests run (tests/browser/test_dashboard.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from supervisor import Context, job


@job("ui.work", concurrency=20, max_deliver=1)
async def work(payload: dict, ctx: Context) -> dict[str, bool]:
    await asyncio.sleep(float(payload.get("seconds", 0)))
    return {"ok": True}


@job("ui.other", concurrency=20)
async def other(payload: dict, ctx: Context) -> dict[str, bool]:
    return {"ok": True}


@job("ui.fail", max_deliver=1)
def fail(payload: dict, ctx: Context) -> dict[str, bool]:
    """Fails its first `fail_attempts` attempts (default: every one) with the payload's message."""
    if ctx.attempt <= int(payload.get("fail_attempts", 99)):
        _charge(str(payload.get("message", "card declined")))
    return {"ok": True}


def _charge(message: str) -> None:
    raise ValueError(message)


@job("ui.gated", ack_wait=3)
async def gated(payload: dict, ctx: Context) -> str:
    """Reports 30%, waits for the file `gate` to exist, reports 90%, waits for `gate2`."""
    for percent, gate in ((30, payload["gate"]), (90, payload["gate2"])):
        await ctx.progress(percent, f"step at {percent}%", step=str(percent))
        ctx.heartbeat()
        while not Path(gate).exists():
            await asyncio.sleep(0.05)
    return "done"


@job("ui.keyed", key_concurrency={"key": ["/tenant"], "max_active": 1}, queue={"max_queued_per_key": 10}, ack_wait=3)
async def keyed(payload: dict, ctx: Context) -> str:
    """One job per tenant at a time; each waits for the file `gate` to exist."""
    while not Path(payload["gate"]).exists():
        await asyncio.sleep(0.05)
    return "done"


@job("ui.nightly", schedule="0 3 * * *")
def nightly(payload: dict, ctx: Context) -> str:
    return "ran"


@job("ui.hold", concurrency=5)
async def hold(payload: dict, ctx: Context) -> str:
    """Holds until the file `gate` exists, or until the job is cancelled (a workflow's blocked step)."""
    while not Path(payload["gate"]).exists():
        if ctx.cancel_event.is_set():
            return "cancelled"
        await asyncio.sleep(0.05)
    return "done"

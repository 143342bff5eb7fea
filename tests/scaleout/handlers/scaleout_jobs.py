"""Handlers of the scale-out tests: each run appends its job id to the witness file (an
independent record, beside Redis's, of which jobs ran to their end)."""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from supervisor import Context, job


class Work(BaseModel):
    n: int = 0


def _witness(ctx: Context) -> None:
    with open(os.environ["SCALEOUT_WITNESS"], "a", encoding="utf-8") as out:
        out.write(f"{ctx.job_id}\n")


@job("so.work", concurrency=20, ack_wait=3, max_deliver=20, backoff=[0.1])
async def work(payload: Work, ctx: Context) -> dict[str, int]:
    await asyncio.sleep(0.01)
    _witness(ctx)
    return {"n": payload.n}


def _spread(index: int) -> object:
    async def spread(payload: Work, ctx: Context) -> dict[str, int]:
        _witness(ctx)
        return {"n": payload.n}

    return job(f"so.t{index:02d}", concurrency=10, ack_wait=3, max_deliver=20, backoff=[0.1])(spread)


#: Twenty types whose hash tags spread over the slots (and so over a cluster's shards).
for _i in range(20):
    globals()[f"spread_{_i:02d}"] = _spread(_i)


class Slow(BaseModel):
    seconds: float


@job("so.slow", concurrency=10, ack_wait=2, max_deliver=5, backoff=[0.1])
async def slow(payload: Slow, ctx: Context) -> dict[str, float]:
    await asyncio.sleep(payload.seconds)
    _witness(ctx)
    return {"slept": payload.seconds}

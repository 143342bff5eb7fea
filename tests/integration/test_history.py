"""The per-minute history (supervisor.operators.history) as the real scripts write it, on a real Redis.

Jobs go through the broker's enqueue, claim, complete and fail scripts (what a daemon does); the
counts land in the current minute and the run-time percentiles come out of the log-scale buckets
within their 9% resolution of the time the jobs really held their lease.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from supervisor import Client
from supervisor.engine import keys
from supervisor.engine.broker import Broker
from supervisor.operators import history

T = "t.history"


async def test_counts_and_percentiles_from_the_scripts(redis_url: str, broker: Broker,
                                                       redis: aioredis.Redis) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        ids = [(await client.enqueue(T, {"i": i})).id for i in range(6)]
        await client.enqueue_many([(T, {"bulk": i}) for i in range(4)])
        batch = await broker.claim(T, "i", 6, 60_000, 1)
        assert sorted(j.id for j in batch.jobs) == sorted(ids)
        held = time.monotonic()
        await asyncio.sleep(0.2)  # the run time being measured, not a wait for a condition
        await broker.complete(T, [(j.id, j.lease, "null", "") for j in batch.jobs[:4]])
        await broker.fail(T, 1, [(batch.jobs[4].id, batch.jobs[4].lease, "permanent", "no", 0, "", ""),
                                 (batch.jobs[5].id, batch.jobs[5].lease, "retry", "again", 0, "", "")])
        ran_ms = (time.monotonic() - held) * 1000

    doc = await history.type_history(redis, T, 2)
    totals = {k: sum(p[k] for p in doc["points"]) for k in ("enqueued", "completed", "failed", "dead", "retried")}
    assert totals == {"enqueued": 10, "completed": 4, "failed": 1, "dead": 1, "retried": 0}  # max_deliver 1
    p50 = next(p["run_ms"]["p50"] for p in doc["points"] if p["completed"])
    assert 200 / 1.19 <= p50 <= ran_ms * 1.19, (p50, ran_ms)
    waits = [p["wait_ms"]["p99"] for p in doc["points"] if p["wait_ms"]["p99"] is not None]
    assert waits and max(waits) < 5_000
    # one hash per type and minute (two if the minute turned meanwhile), expiring within 25 h
    hashes = [k async for k in redis.scan_iter(match=keys.index_key(T, "hist:*"))]
    assert 1 <= len(hashes) <= 2
    for k in hashes:
        assert 0 < await redis.ttl(k) <= 90_000

    every = await history.all_history(redis, [T, "t.other"], 2)
    assert sum(p["completed"] for p in every["totals"]) == 4 and set(every["types"]) == {T, "t.other"}


def test_percentiles_merge_buckets() -> None:
    # bucket b holds [2^((b-1)/4), 2^(b/4)) ms: 40 (~1 ms), 80 (~1 s): read back within 9%
    assert history.percentiles({}) == {"p50": None, "p95": None, "p99": None}
    got = history.percentiles({1: 90, 40: 8, 41: 2})
    assert got["p50"] == history.percentiles({1: 1})["p50"]
    assert 2 ** (39 / 4) <= got["p95"] < 2 ** (40 / 4)  # type: ignore[operator]
    assert 2 ** (40 / 4) <= got["p99"] < 2 ** (41 / 4)  # type: ignore[operator]

"""The job listing's read model (supervisor.operators.listing) against a real Redis.

Pages walk the indexes from a cursor: every job is listed once across pages even when many share
one finish time (ties), live jobs come before finished ones, and a selective filter that walks
its whole bounded scan answers with a partial page and a cursor that goes on from there.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from supervisor.engine import keys
from supervisor.engine.broker import Broker
from supervisor.engine.states import State
from supervisor.operators import listing

T = "t.listed"


async def _seed(redis: aioredis.Redis, state: str, n: int, start: int, score: int, key: str | None = None) -> list[str]:
    """`n` records of T in a finished `state`, all indexed at one `score` (a tie)."""
    ids = [f"{keys.tag_for(T)}-{i:016x}" for i in range(start, start + n)]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.sadd(keys.TYPES_KEY, T)
        for i, job_id in enumerate(ids):
            fields = {"name": T, "state": state, "payload": "{}", "created": str(score - 10 + i % 3),
                      "finished": str(score)}
            if key:
                fields["ckey"] = key
                fields["error"] = f"ValueError: {key} is down"
            pipe.hset(keys.job_key(job_id), mapping=fields)
            pipe.zadd(keys.index_key(T, f"st:{state}"), {job_id: score})
        await pipe.execute()
    return ids


async def _all_pages(broker: Broker, limit: int, **filters: object) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor, pages = None, 0
    while True:
        jobs, cursor = await listing.list_jobs(broker, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        seen += [j.id for j in jobs]
        pages += 1
        if cursor is None:
            return seen, pages


async def test_pages_list_every_job_once_through_ties_live_first(broker: Broker, redis: aioredis.Redis) -> None:
    done = await _seed(redis, "completed", 230, 0, 1_700_000_000_000)  # one finish time for all
    dead = await _seed(redis, "dead", 40, 1000, 1_700_000_000_500)
    live = f"{keys.tag_for(T)}-{9999:016x}"
    await redis.hset(keys.job_key(live), mapping={"name": T, "state": "pending", "payload": "{}", "created": "1"})
    await redis.zadd(keys.index_key(T, "ready"), {live: 1})

    seen, pages = await _all_pages(broker, 50, name=T)
    assert sorted(seen) == sorted([live, *done, *dead]) and len(seen) == len(set(seen))
    assert pages == 6
    assert seen[0] == live  # live jobs first
    assert seen[1:41] == sorted(dead, reverse=True)  # then the most recently finished (ties: id, descending)

    only_dead, _ = await _all_pages(broker, 7, name=T, state=State.DEAD)
    assert only_dead == sorted(dead, reverse=True)
    with pytest.raises(ValueError, match="not a cursor"):
        await listing.list_jobs(broker, cursor="bm90LWEtY3Vyc29y")


async def test_a_selective_filter_answers_within_its_scan_with_a_cursor(
    broker: Broker, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _seed(redis, "completed", 300, 0, 1_700_000_000_000)
    wanted = await _seed(redis, "completed", 3, 5000, 1_600_000_000_000, key="acme")  # the oldest finished
    errors = await listing.list_jobs(broker, name=T, error="ValueError: ACME", limit=10)
    assert {j.id for j in errors[0]} == set(wanted) and errors[1] is None  # the error filter, any case
    monkeypatch.setattr(listing, "SCAN_MAX", 100)
    jobs, cursor = await listing.list_jobs(broker, name=T, key="acme", limit=10)
    assert jobs == [] and cursor is not None  # 100 entries walked, none matched: go on from there
    seen, pages = await _all_pages(broker, 10, name=T, key="acme")
    assert sorted(seen) == sorted(wanted) and pages > 1  # each request walked its bounded share

"""Bulk actions by filter (supervisor.engine.control) against a real Redis, through the real scripts.

Jobs are driven to dead and failed by the broker's own claim and fail scripts (what a daemon
does), then acted on by filter: a dry run counts and changes nothing; a replay takes only what
matches (error text, key, time range), in batches of at most 500 index entries, and records the
action in each job's history; delete and purge remove records and their index entries.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from supervisor import Client, State
from supervisor.engine import control, keys
from supervisor.engine.broker import Broker
from supervisor.engine.control import BulkFilter

T = "t.bulk"


async def _drive(broker: Broker, ids: list[str], mode: str, error: str) -> None:
    """Claim every ready job of T and fail it (`mode` permanent: failed; retry with max_deliver 1: dead)."""
    batch = await broker.claim(T, "test-instance", len(ids), 60_000, 1)
    assert sorted(j.id for j in batch.jobs) == sorted(ids)
    await broker.fail(T, 1, [(j.id, j.lease, mode, error, 0, "", "") for j in batch.jobs])


async def _seed(client: Client, broker: Broker, n: int, mode: str, error: str, **options: object) -> list[str]:
    ids = [(await client.enqueue(T, {"i": i}, **options)).id for i in range(n)]  # type: ignore[arg-type]
    await _drive(broker, ids, mode, error)
    return ids


async def test_bulk_replay_by_error_text_dry_run_first_in_batches(redis_url: str, broker: Broker,
                                                                  redis: aioredis.Redis) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        boom = await _seed(client, broker, 620, "retry", "ValueError: Boom at line 3")
        other = await _seed(client, broker, 30, "retry", "KeyError: 'sku'")
        failed = await _seed(client, broker, 5, "permanent", "PermanentError: boom too")
        assert await redis.zcard(keys.index_key(T, "st:dead")) == 650

        flt = BulkFilter(type=T, error="BOOM")  # case-insensitive substring
        dry = await control.bulk(broker, "replay", flt, dry_run=True)
        assert (dry.matched, dry.done, dry.by_state) == (620, 0, {"dead": 620})
        assert dry.batches == 2  # 650 entries, at most 500 a call
        assert await redis.zcard(keys.index_key(T, "st:dead")) == 650  # nothing changed

        done = await control.bulk(broker, "replay", flt, source="api", by="alice")
        assert (done.matched, done.done, done.skipped) == (620, 620, 0)
        assert done.longest_call_ms > 0
        assert await redis.zcard(keys.index_key(T, "st:dead")) == 30
        assert await redis.zcard(keys.index_key(T, "ready")) == 620
        job = await client.get(boom[-1])
        assert job.state is State.PENDING
        assert [(a.action, a.source, a.by) for a in job.actions] == [("replay", "api", "alice")]
        assert (await client.get(other[0])).state is State.DEAD

        # retry takes failed jobs only; a state the action does not take is refused with the fix
        with pytest.raises(ValueError, match="filter on one of failed"):
            control.bulk_states("retry", State.DEAD)
        retried = await control.bulk(broker, "retry", BulkFilter(type=T))
        assert (retried.matched, retried.done) == (5, 5)
        assert (await client.get(failed[0])).actions[0].action == "retry"

        # dismiss the rest of the dead, then the limit: cancel at most 100 of the 625 queued
        assert (await control.bulk(broker, "dismiss", BulkFilter(type=T, state=State.DEAD))).done == 30
        cancelled = await control.bulk(broker, "cancel", BulkFilter(type=T, limit=100))
        assert cancelled.done == 100
        assert await redis.zcard(keys.index_key(T, "ready")) == 525


async def test_bulk_filters_key_and_time_range_and_delete_purge(redis_url: str, broker: Broker,
                                                                redis: aioredis.Redis) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        keyed = [i for _ in range(3)  # one live job per key at a time: each dies before the next
                 for i in await _seed(client, broker, 1, "retry", "x", concurrency_key="acme")]
        plain = await _seed(client, broker, 4, "retry", "x")
        await asyncio.sleep(0.01)  # `created` is in ms: t_mid falls between the two groups, in no job's ms
        t_mid = datetime.now(UTC)
        await asyncio.sleep(0.01)
        late = await _seed(client, broker, 2, "retry", "x")

        by_key = await control.bulk(broker, "replay", BulkFilter(key="acme"), dry_run=True)  # every type
        assert by_key.matched == 3
        early = await control.bulk(broker, "replay", BulkFilter(type=T, until=t_mid), dry_run=True)
        assert early.matched == 7
        recent = await control.bulk(broker, "dismiss", BulkFilter(type=T, since=t_mid))
        assert recent.done == 2
        assert {(await client.get(i)).state for i in late} == {State.DISMISSED}

        # delete: the records and their index entries go; an active job is never deleted
        deleted = await control.bulk(broker, "delete", BulkFilter(type=T, key="acme"))
        assert deleted.done == 3
        assert not await redis.exists(*(keys.job_key(i) for i in keyed))
        assert await redis.zcard(keys.index_key(T, "st:dead")) == 4
        with pytest.raises(ValueError, match="does not take active"):
            control.bulk_states("delete", State.ACTIVE)

        # purge: finished records of one type (here: the dead and the dismissed)
        with pytest.raises(ValueError, match="purge needs a type"):
            await control.bulk(broker, "purge", BulkFilter())
        live = await client.enqueue(T, {"still": "queued"})
        purged = await control.bulk(broker, "purge", BulkFilter(type=T,
                                                                until=datetime.now(UTC) + timedelta(seconds=1)))
        assert (purged.done, purged.by_state) == (6, {"dead": 4, "dismissed": 2})
        assert not await redis.exists(*(keys.job_key(i) for i in plain + late))
        assert (await client.get(live.id)).state is State.PENDING


async def test_pause_flag_stops_claims_and_survives_as_a_key(redis_url: str, broker: Broker,
                                                             redis: aioredis.Redis) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        running = (await broker.claim(T, "i", 1, 60_000, 3)).jobs  # nothing yet
        await client.enqueue(T, {"running": True})
        (running_job,) = (await broker.claim(T, "i", 1, 60_000, 3)).jobs
        ref = await client.enqueue(T, {})
        paused = await control.set_paused(broker, T, True, source="cli", by="ops")
        # a job that was running when the type was paused finishes
        assert running == [] and await broker.complete(T, [(running_job.id, running_job.lease, "1", "")]) == ["ok"]
        assert paused.paused and paused.changed and paused.by == "ops" and paused.at is not None
        assert not (await control.set_paused(broker, T, True)).changed  # idempotent
        assert await redis.ttl(keys.index_key(T, "paused")) == -1  # no expiry: survives restarts
        assert (await broker.claim(T, "i", 10, 60_000, 3)).jobs == []
        await client.enqueue(T, {})  # enqueue still accepted
        assert (await control.paused_states(broker, [T]))[T].paused
        resumed = await control.set_paused(broker, T, False)
        assert (resumed.paused, resumed.changed) == (False, True)
        batch = await broker.claim(T, "i", 10, 60_000, 3)
        assert ref.id in {j.id for j in batch.jobs} and len(batch.jobs) == 2


async def test_deleting_a_job_others_wait_on_tells_them(redis_url: str, broker: Broker,
                                                        redis: aioredis.Redis) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        parent = await client.enqueue(T, {})
        child = await client.enqueue(T, {}, depends_on=[parent.id])
        assert (await client.get(child.id)).state is State.WAITING
        deleted = await control.bulk(broker, "delete", BulkFilter(type=T, state=State.PENDING))
        assert deleted.done == 1
        # its release notice: the daemon's releaser delivers it, and the child hears "cancelled"
        assert await redis.zrange(keys.index_key(T, "outbox"), 0, -1) == [f"{parent.id} cancelled"]

"""An idle fetch loop's wait and its next claim in one round trip (Broker.wait_then_claim), and
the halt that keeps that claim from claiming for a loop told to stop. Real Redis."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from supervisor import Client, State
from supervisor.engine import keys
from supervisor.engine.broker import SCRIPTS, Broker, connect
from supervisor.engine.transport import RedisPyTransport
from tests.conftest import await_until

NAME = "t.waiting"


async def _blocked_waiters(redis: aioredis.Redis) -> int:
    return sum(1 for c in await redis.client_list() if c.get("cmd") == "bzpopmin")


async def _wait_in_background(broker: Broker, redis: aioredis.Redis, token: str) -> asyncio.Task:
    before = await _blocked_waiters(redis)
    task = asyncio.create_task(broker.wait_then_claim(NAME, 10.0, token, "A", 5, 30_000, 5))
    await await_until(lambda: task.done() or _more_waiters(redis, before), timeout=10,
                      what="the wait to block in Redis")
    if task.done():
        task.result()  # raises what went wrong
    return task


async def _more_waiters(redis: aioredis.Redis, before: int) -> bool:
    return await _blocked_waiters(redis) > before


async def test_a_job_queued_during_the_wait_comes_back_claimed(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    # Given an idle loop blocked on the queue with its next claim queued behind the wait
    waiting = await _wait_in_background(broker, redis, "tok-1")
    started = time.monotonic()
    # When a producer queues a job
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue(NAME, {"n": 1})
        # Then the wait returns that job already claimed by instance A, long before its timeout
        batch = await asyncio.wait_for(waiting, 5)
        assert time.monotonic() - started < 5
        assert [job.id for job in batch.jobs] == [ref.id]
        job = await client.get(ref.id)
        assert job.state is State.ACTIVE and job.instance == "A" and job.deliveries == 1


async def test_a_claim_that_leaves_work_queued_wakes_the_next_idle_loop(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    # Given two idle loops (instances A and B) that each claim one job at a time
    other = Broker(connect(redis_url))
    try:
        before = await _blocked_waiters(redis)
        loops = [asyncio.create_task(b.wait_then_claim(NAME, 10.0, f"tok-{i}", inst, 1, 30_000, 5))
                 for i, (b, inst) in enumerate([(broker, "A"), (other, "B")])]
        await await_until(lambda: _more_waiters(redis, before + 1), timeout=10, what="both waits to block")
        started = time.monotonic()
        # When two jobs arrive in one call (one wake-up)
        async with Client(redis_url, allow_unknown=True) as client:
            refs = await client.enqueue_many([(NAME, {"n": 1}), (NAME, {"n": 2})])
        # Then the loop woken first claims one and wakes the other, which claims the second
        batches = await asyncio.wait_for(asyncio.gather(*loops), 5)
        assert time.monotonic() - started < 5
        assert sorted(job.id for b in batches for job in b.jobs) == sorted(ref.id for ref in refs)
        assert [len(b.jobs) for b in batches] == [1, 1]
    finally:
        await other.close()


async def test_a_halted_claim_leaves_the_job_queued(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    # Given an idle loop blocked on the queue, and its token halted (as on SIGTERM)
    waiting = await _wait_in_background(broker, redis, "tok-2")
    await redis.set(keys.index_key(NAME, "halt:tok-2"), 1, px=60_000)
    # When a job arrives and ends the wait
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue(NAME, {"n": 2})
        batch = await asyncio.wait_for(waiting, 5)
        # Then the claim behind the wait took nothing: the job is still queued for others
        assert batch.jobs == []
        assert (await client.get(ref.id)).state is State.PENDING
        other = await broker.claim(NAME, "B", 5, 30_000, 5)
        assert [job.id for job in other.jobs] == [ref.id]


async def test_halt_ends_the_wait_and_the_loop_claims_nothing(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        await client.enqueue(f"{NAME}.other", {})  # another type's job is not this wait's business
    waiting = await _wait_in_background(broker, redis, "tok-3")
    await broker.halt([NAME], "tok-3", 60_000)
    batch = await asyncio.wait_for(waiting, 5)
    assert batch.jobs == []
    assert 0 < await redis.pttl(keys.index_key(NAME, "halt:tok-3")) <= 60_000  # it does not linger


async def test_halt_ends_only_the_halted_loops_wait(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    # Given two instances idle on one type: A blocked first, so Redis would hand the queue's
    # wake-up to A
    other = Broker(connect(redis_url))
    try:
        first = await _wait_in_background(broker, redis, "tok-a")
        second = await _wait_in_background(other, redis, "tok-b")
        # When B's loop is halted (B stops)
        await other.halt([NAME], "tok-b", 60_000)
        # Then B's wait ends at once, long before its 10 s timeout, claiming nothing
        assert (await asyncio.wait_for(second, 5)).jobs == []
        # and A is still waiting, and still the one a producer's job wakes
        assert not first.done() and await _blocked_waiters(redis) == 1
        async with Client(redis_url, allow_unknown=True) as client:
            ref = await client.enqueue(NAME, {"n": 7})
            assert [job.id for job in (await asyncio.wait_for(first, 5)).jobs] == [ref.id]
        assert await redis.exists(keys.index_key(NAME, "hw:tok-b")) == 0  # the wait popped its own wake-up
    finally:
        await other.close()


async def test_a_halted_claim_passes_on_a_producers_wake_up_it_took(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    # Given a queued job whose wake-up was already used, and two idle instances, A blocked first
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue(NAME, {"n": 8})
    await redis.delete(keys.index_key(NAME, "marker"))
    await broker.halt([NAME], "tok-warm", 1_000)  # loads the halt script
    other = Broker(connect(redis_url))
    try:
        first = await _wait_in_background(broker, redis, "tok-c")
        second = await _wait_in_background(other, redis, "tok-d")
        # When a producer's wake-up and A's halt land together (one transaction: Redis serves the
        # waits after both), so A's wait takes the producer's wake-up, not its own
        prefix = keys.queue_prefix(NAME)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zadd(keys.index_key(NAME, "marker"), {"m": 0})
            pipe.evalsha(SCRIPTS["halt"].sha, 1, prefix + keys.ROUTE, prefix, keys.job_prefix(NAME),
                         "tok-c", 60_000)
            await pipe.execute()
        # Then A claims nothing, and passes the wake-up on: B claims the job
        assert (await asyncio.wait_for(first, 5)).jobs == []
        assert [job.id for job in (await asyncio.wait_for(second, 5)).jobs] == [ref.id]
        assert await redis.exists(keys.index_key(NAME, "hw:tok-c")) == 0  # not left behind
    finally:
        await other.close()


async def test_a_claim_script_redis_forgot_is_loaded_again(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        await client.enqueue(NAME, {"warm": 1})  # loads the scripts; then an empty queue again
        await broker.claim(NAME, "A", 5, 30_000, 5)
        await redis.delete(keys.index_key(NAME, "marker"))
        await redis.script_flush()
        waiting = await _wait_in_background(broker, redis, "tok-4")
        ref = await client.enqueue(NAME, {"n": 4})
        batch = await asyncio.wait_for(waiting, 5)
        assert [job.id for job in batch.jobs] == [ref.id]


async def test_without_the_lean_wire_the_wait_then_claim_still_honours_the_halt(
        broker: Broker, redis_url: str, redis: aioredis.Redis) -> None:
    # Given a broker on redis-py alone (as for rediss:// URLs), waiting with its token halted
    broker.transport = RedisPyTransport(broker.redis, broker.blocking)
    waiting = await _wait_in_background(broker, redis, "tok-5")
    await redis.set(keys.index_key(NAME, "halt:tok-5"), 1, px=60_000)
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue(NAME, {"n": 5})
        # When the job ends the wait, then the claim takes nothing; unhalted, the next one takes it
        assert (await asyncio.wait_for(waiting, 5)).jobs == []
        assert (await client.get(ref.id)).state is State.PENDING
        batch = await broker.wait_then_claim(NAME, 1.0, "tok-6", "A", 5, 30_000, 5)
        assert [job.id for job in batch.jobs] == [ref.id]

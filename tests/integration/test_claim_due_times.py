"""What a claim tells an idle fetch loop about when to look again (ClaimBatch.next_due_ms: the
first delayed job, the first lease to lapse), and that due delayed jobs and lapsed leases are
claimed. Real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from supervisor import Client
from supervisor.engine.broker import Broker, ClaimBatch
from tests.conftest import await_until

NAME = "t.due"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Client]:
    async with Client(redis_url, allow_unknown=True) as c:
        yield c


async def test_an_empty_queue_has_nothing_due(broker: Broker) -> None:
    batch = await broker.claim(NAME, "A", 5, 30_000, 5)
    assert batch.jobs == [] and batch.next_due_ms is None


async def test_a_delayed_job_is_due_at_its_run_time_and_claimed_then(broker: Broker, client: Client) -> None:
    # Given a job delayed by 0.3 s
    ref = await client.enqueue(NAME, {}, delay=0.3)
    # When a claim comes before it is due
    batch = await broker.claim(NAME, "A", 5, 30_000, 5)
    # Then nothing is claimed and the loop is told to look again at its run time
    assert batch.jobs == []
    assert batch.next_due_ms is not None and 200 <= batch.next_due_ms - batch.now_ms <= 300
    # And once that time has passed, a claim takes it
    await asyncio.sleep((batch.next_due_ms - batch.now_ms) / 1000 + 0.05)
    later = await broker.claim(NAME, "A", 5, 30_000, 5)
    assert [j.id for j in later.jobs] == [ref.id]


async def test_a_new_lease_is_due_when_it_lapses(broker: Broker, client: Client) -> None:
    # Given one ready job and one delayed by 60 s
    ready = await client.enqueue(NAME, {})
    await client.enqueue(NAME, {}, delay=60)
    # When the ready one is claimed under a 10 s lease
    batch = await broker.claim(NAME, "A", 5, 10_000, 5)
    # Then the next thing due is that lease, not the delayed job
    assert [j.id for j in batch.jobs] == [ready.id]
    assert batch.next_due_ms == batch.now_ms + 10_000


async def test_a_delayed_job_due_before_every_lease_comes_first(broker: Broker, client: Client) -> None:
    # Given one ready job and one delayed by 5 s
    ready = await client.enqueue(NAME, {})
    await client.enqueue(NAME, {}, delay=5)
    # When the ready one is claimed under a 120 s lease
    batch = await broker.claim(NAME, "A", 5, 120_000, 5)
    # Then the next thing due is the delayed job
    assert [j.id for j in batch.jobs] == [ready.id]
    assert batch.next_due_ms is not None and 4_000 <= batch.next_due_ms - batch.now_ms <= 5_000


async def test_a_lapsed_lease_is_taken_back_and_delivered_again(broker: Broker, client: Client) -> None:
    # Given a job claimed under a 50 ms lease that nobody renews
    ref = await client.enqueue(NAME, {})
    first = await broker.claim(NAME, "A", 5, 50, 5)
    assert [j.id for j in first.jobs] == [ref.id] and first.next_due_ms == first.now_ms + 50

    # When a claim comes after the lease lapsed
    claims: list[ClaimBatch] = []

    async def taken_back() -> bool:
        claims.append(await broker.claim(NAME, "B", 5, 30_000, 5))
        return bool(claims[-1].jobs)

    await await_until(taken_back, timeout=5, what="the lapsed job to be claimed again")
    again = claims[-1]
    # Then the job is delivered again, and the next thing due is the new lease
    assert [(j.id, j.attempt) for j in again.jobs] == [(ref.id, 2)]
    assert again.next_due_ms == again.now_ms + 30_000

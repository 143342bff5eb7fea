"""The janitor's expiry, trimming and clean-up, and worker presence (alive, stale, forgotten)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from supervisor import Client, State
from supervisor.daemon.janitor import Janitor
from supervisor.daemon.presence import list_workers
from supervisor.engine import keys
from supervisor.engine.broker import Broker, connect
from tests.conftest import await_until


async def test_janitor_expires_past_deadline_and_trims_finished(redis_url: str) -> None:
    broker = Broker(connect(redis_url))
    async with Client(redis_url, allow_unknown=True) as client:
        # Given a job whose deadline passes while it waits, and five completed jobs
        late = await client.enqueue("t.jan", {}, deadline=0.1, delay=60)
        done = []
        for i in range(5):
            await client.enqueue("t.jan", {"i": i})
        for job in (await broker.claim("t.jan", "test", 10, 60_000, 5)).jobs:
            assert await broker.complete("t.jan", [(job.id, job.lease, "{}", "")]) == ["ok"]
            done.append(job.id)
        await asyncio.sleep(0.15)
        # When two janitors sweep at once (every instance runs one)
        one, two = Janitor(broker, max_finished=2), Janitor(Broker(connect(redis_url)), max_finished=2)
        reports = await asyncio.gather(one.sweep(), two.sweep())
        # Then the late job expired once, and only the 2 newest completed records remain
        assert sum(r.expired for r in reports) == 1
        assert (await client.get(late.id)).state is State.EXPIRED
        assert sum(r.trimmed for r in reports) == 3
        kept = await client.list("t.jan", State.COMPLETED)
        assert len(kept) == 2
        assert {j.id for j in kept} <= set(done)
        # And a third sweep finds nothing to do
        again = await one.sweep()
        assert again.expired == 0 and again.trimmed == 0
    await broker.close()


async def test_janitor_drops_index_entries_whose_record_is_gone(redis_url: str) -> None:
    broker = Broker(connect(redis_url))
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue("t.jan2", {})
        job = (await broker.claim("t.jan2", "test", 1, 60_000, 5)).jobs[0]
        await broker.complete("t.jan2", [(job.id, job.lease, "{}", "")])
        await broker.redis.delete(f"js:{{{ref.id.split('-')[0]}}}:j:{ref.id}")  # as retention would
        report = await Janitor(broker).sweep()
        assert report.stale_entries == 1
        assert (await broker.counts("t.jan2"))["completed"] == 0
    await broker.close()


async def test_presence_alive_then_stale_then_forgotten(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    d = daemon(env={"JOB_SUPERVISOR_PRESENCE_INTERVAL": "0.3"})
    broker = Broker(connect(redis_url))
    async with Client(redis_url) as client:
        ref = await client.enqueue("t.long", {"seconds": 5})

        async def alive_with_job() -> dict[str, Any] | None:
            for w in await list_workers(broker.redis):
                if w["status"] == "alive" and any(j["id"] == ref.id for j in w.get("in_flight", [])):
                    return w
            return None

        deadline = time.monotonic() + 10
        while (me := await alive_with_job()) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert me["pid"] == d.pid and "t.echo" in me["types"]
        assert me["workers"][0]["pid"] == d.pid and me["workers"][0]["rss"] > 10_000_000
        # When the instance is killed, it shows as stale once its heartbeat expires
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        deadline = time.monotonic() + 10
        while (await list_workers(broker.redis))[0]["status"] != "stale":
            assert time.monotonic() < deadline, "a killed instance must show as stale"
            await asyncio.sleep(0.1)
        # And the janitor forgets it later
        await asyncio.sleep(0.2)
        report = await Janitor(broker, forget_after_s=0.1).sweep()
        assert report.forgotten_instances == 1 and await list_workers(broker.redis) == []
    await broker.close()


async def test_clean_stop_withdraws_presence(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("basic")
    d = daemon()
    broker = Broker(connect(redis_url))
    assert [w["status"] for w in await list_workers(broker.redis)] == ["alive"]
    assert d.stop() == 0
    assert await list_workers(broker.redis) == []
    await broker.close()


async def test_a_served_types_metadata_lost_in_redis_is_published_again(
        redis_url: str, use_handlers: Any, daemon: Any) -> None:
    # Given a daemon serving t.echo (heartbeat every 0.3 s), and a failover of Redis that lost the
    # type's published metadata and its entry in the list of types (writes the replica had not got)
    use_handlers("basic")
    d = daemon(env={"JOB_SUPERVISOR_PRESENCE_INTERVAL": "0.3"})
    broker = Broker(connect(redis_url))
    try:
        policy = (await broker.type_meta("t.echo"))["policy"]
        await broker.redis.delete(keys.meta_key("t.echo"))
        await broker.redis.srem(keys.TYPES_KEY, "t.echo")
        # Then the next heartbeats publish it again, and a producer is served without --allow-unknown
        await await_until(lambda: broker.type_meta("t.echo"), timeout=10, what="t.echo's metadata back")
        assert (await broker.type_meta("t.echo"))["policy"] == policy
        assert "t.echo" in await broker.type_names()
        assert [e["job_types"] for e in d.events("types.republished")][:1] == [["t.echo"]]
        async with Client(redis_url) as client:
            ref = await client.enqueue("t.echo", {"value": "back"})
            assert (await client.wait(ref.id, timeout=10)).state is State.COMPLETED
    finally:
        await broker.close()

"""Redis Cluster (issue 18, item 3): three masters with a replica each, two daemons, twenty
types whose hash tags spread over the three shards. Every job completes exactly once in the
record (one `completed` event in its type's stream) and the witness saw each run to its end;
a master SIGKILLed under load is failed over and the daemons carry on by themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as syncredis
from redis.exceptions import (
    ClusterDownError,
    ResponseError,
    TimeoutError as RedisTimeoutError,
)

from supervisor.engine import keys
from supervisor.engine.broker import Broker, NewJob, connect
from supervisor.engine.cluster_wire import ClusterWire
from supervisor.operators.admin import EventFollower, FollowedEvent
from supervisor.producers.client import Client, SyncClient
from tests.conftest import DaemonProcess, await_until, wait_until
from tests.scaleout.conftest import Cluster
from tests.scaleout.loads import (
    FAILOVER_RETRIED,
    REDIS_DOWN,
    TYPES,
    completed_once,
    cron_keyed_concurrency_and_rate_limits_hold,
    twenty_types_each_job_completed_once,
)

pytestmark = pytest.mark.slow


async def test_twenty_types_over_three_shards_each_job_completed_once(
        cluster: Cluster, scaleout_jobs: Path, daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given twenty types whose keys live on all three shards
    slots = {cluster.nodes[0].client().cluster("keyslot", keys.queue_prefix(name) + "ready") for name in TYPES}
    owners = {owner for owner in (_owner(cluster, slot) for slot in slots)}
    assert len(owners) == 3, "the twenty types should spread over the three masters"
    # two daemons, 2,000 jobs, each completed exactly once on whichever daemon claimed it from its shard
    await twenty_types_each_job_completed_once(cluster.url, daemon, tmp_path)


def _owner(cluster: Cluster, slot: int) -> int:
    for start, end, master, *_ in cluster.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(master[1])
    raise AssertionError(f"slot {slot} has no owner")


async def test_a_master_killed_under_load_is_failed_over_and_the_daemons_carry_on(
        cluster: Cluster, scaleout_jobs: Path, daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given two daemons and a producer on the cluster
    witness = tmp_path / "witness.txt"
    witness.touch()
    # presence every 3 s: the types stay served through the failover
    env = {"SCALEOUT_WITNESS": str(witness), "JOB_SUPERVISOR_PRESENCE_INTERVAL": "3"}
    daemons = [daemon(url=cluster.url, env=env) for _ in range(2)]
    victim = cluster.masters()[0]
    # When a master is SIGKILLed a third of the way through 600 enqueues (each retried with its
    # idempotency key until acknowledged)
    acked: dict[str, str] = {}
    after_failover: set[str] = set()
    async with Client(cluster.url) as client:
        for i in range(600):
            if i == 200:
                victim.kill()
            deadline = time.monotonic() + 30
            while True:
                try:
                    ref = await client.enqueue(TYPES[i % 20], {"n": i}, idempotency_key=f"job-{i}")
                    break
                except FAILOVER_RETRIED:
                    assert time.monotonic() < deadline, f"job {i} not acknowledged 30 s after the master died"
                    await asyncio.sleep(0.1)
            acked[ref.id] = ref.name
            if i >= 200 and cluster.healthy():
                after_failover.add(ref.id)
    # Then a replica took over, every job acknowledged since completed, none completed twice; what
    # the default durability lost (acknowledged before the kill, not yet on the replica) is reported
    assert victim not in cluster.masters() and len(cluster.masters()) == 3
    redis = connect(cluster.url)
    try:
        async def settled() -> bool:
            states = {job_id: await redis.hget(keys.job_key(job_id), "state") for job_id in acked}
            return all(state in ("completed", None) for state in states.values()) and all(
                states[job_id] == "completed" for job_id in after_failover)

        await await_until(settled, 90, interval=0.5, what="every job acknowledged after the failover completed")
        lost = [job_id for job_id in acked if await redis.hget(keys.job_key(job_id), "state") is None]
    finally:
        await redis.aclose()
    completions = await completed_once(cluster.url, {j: n for j, n in acked.items() if j not in lost})
    assert {job_id: n for job_id, n in completions.items() if n != 1} == {}
    print(f"default durability: {len(lost)} of {len(acked)} acknowledged jobs lost with the master")
    for d in daemons:
        assert d.proc.poll() is None
        assert d.stop() == 0


def _migrate(cluster: Cluster, slot: int, source: int, target: int) -> None:
    """Move `slot` from the master on port `source` to the one on `target` (CLUSTER SETSLOT
    IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE), every key of the slot in one MIGRATE, which the
    source runs as one command: a script never sees a type's keys split between two nodes
    (`redis-cli --cluster reshard --cluster-replace --cluster-pipeline N`, N over a slot's keys, does
    the same; docs/scaling.md)."""
    src, dst = (next(n for n in cluster.nodes if n.port == port).client() for port in (source, target))
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    time.sleep(0.3)  # the producer and the daemons keep working on the slot while it is MIGRATING
    if batch := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1_000_000):
        # REPLACE: a plain command on a key absent from the source (a wake-up's ZADD on the marker,
        # a job's first log line) was sent to the target by ASK; the source's copy wins
        wait_until(lambda: _migrated(src, target, batch), 10, interval=0.2, what="MIGRATE")
    # then the slot is the target's at once (target first, as redis-cli does): until then a call
    # reaches the target only through ASK, and a script may touch only the key it declares there
    for master in sorted(cluster.masters(), key=lambda m: (m.port != target, m.port != source)):
        master.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def _migrated(src: syncredis.Redis, target: int, batch: list[str]) -> bool:
    """One MIGRATE; False while the cluster says it is down (a node late with its pings on a busy machine)."""
    try:
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 10_000, "REPLACE", "KEYS", *batch)
    except ClusterDownError:
        return False
    return True


async def test_a_slot_migrated_under_load_loses_nothing(
        cluster: Cluster, scaleout_jobs: Path, daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given two daemons and a producer busy with the twenty types
    witness = tmp_path / "witness.txt"
    witness.touch()
    daemons = [daemon(url=cluster.url, env={"SCALEOUT_WITNESS": str(witness)}) for _ in range(2)]
    moved = [name for name in TYPES if name in ("so.t00", "so.t01")]
    slots = {cluster.nodes[0].client().cluster("keyslot", keys.queue_prefix(name) + "ready") for name in moved}
    acked: dict[str, str] = {}
    async with Client(cluster.url) as client:
        async def produce(start: int, stop: int) -> None:
            for i in range(start, stop):
                deadline = time.monotonic() + 30
                while True:
                    try:
                        ref = await client.enqueue(TYPES[i % 20], {"n": i}, idempotency_key=f"job-{i}")
                        break
                    except (*REDIS_DOWN, ResponseError) as exc:  # not acknowledged: enqueued again
                        # (while its slot migrates, a script may touch only keys the node has)
                        assert isinstance(exc, REDIS_DOWN) or "non local key" in str(exc), exc
                        assert time.monotonic() < deadline, f"job {i} not acknowledged within 30 s"
                        await asyncio.sleep(0.05)
                acked[ref.id] = ref.name
                await asyncio.sleep(0.002)

        await produce(0, 200)
        # When the slots of two types move to another master while jobs are queued and run
        before = {slot: _owner(cluster, slot) for slot in slots}
        # one after the other: two masters MIGRATE-ing to each other at once block each other
        # (MIGRATE blocks its source until the target answers) until MIGRATE's timeout
        def migrate_all() -> None:
            for slot, source in before.items():
                _migrate(cluster, slot, source, next(m.port for m in cluster.masters() if m.port != source))
        await asyncio.gather(produce(200, 800), asyncio.to_thread(migrate_all))
    assert all(_owner(cluster, slot) != source for slot, source in before.items())
    # Then every job completed exactly once, and the witness saw each
    completions = await completed_once(cluster.url, acked)
    assert {job_id: n for job_id, n in completions.items() if n != 1} == {}
    assert set(acked) <= set(witness.read_text().split())
    for d in daemons:
        assert d.stop() == 0


async def test_events_merge_the_shards_streams_and_resume_from_a_token(cluster: Cluster) -> None:
    # Given jobs of five types, whose event streams live on different shards
    names = TYPES[:5]
    async with Client(cluster.url, allow_unknown=True) as client:
        follower = EventFollower(client.broker.redis, types=names, block_ms=500)
        await follower.prepare()
        ids = [(await client.enqueue(names[i % 5], {"n": i})).id for i in range(40)]
        # When they are followed, then followed again from the token of the 15th event
        seen: list[FollowedEvent] = []
        async for event in follower.events():
            if event is not None:
                seen.append(event)
            if len(seen) == 40:
                break
        again: list[FollowedEvent] = []
        async for event in EventFollower(client.broker.redis, types=names, start=seen[14].token,
                                         block_ms=500).events():
            if event is None:
                break
            again.append(event)
    # Then every event came once, by time across the shards, and the resumed follow goes on
    # from the 16th without a loss or a repeat
    assert sorted(e.doc["job_id"] for e in seen) == sorted(ids)
    assert [e.doc["job_id"] for e in again] == [e.doc["job_id"] for e in seen[15:]]


async def test_replicated_durability_waits_for_the_replica_of_the_scripts_shard(cluster: Cluster) -> None:
    # Given a broker whose type is of durability = "replicated", on the cluster
    name = TYPES[3]
    broker = Broker(connect(cluster.url))
    assert isinstance(broker.transport, ClusterWire)  # the lean wire, one connection per master
    broker.replicated.add(name)
    broker.replica_wait_ms = 2000  # the first write waits for the replica on a busy machine too
    try:
        # When its shard's replica has the write, the enqueue is acknowledged
        (done,) = await broker.enqueue(name, [NewJob(keys.new_job_id(name), "{}")])
        assert done.outcome == "new"
        # Then, the replica gone, an enqueue is refused rather than acknowledged unreplicated
        owner = _owner(cluster, cluster.nodes[0].client().cluster("keyslot", keys.route_key(name)))
        for node in cluster.nodes:
            role = node.client().execute_command("ROLE")
            if role[0] == "slave" and int(role[2]) == owner:
                node.kill()
        with pytest.raises(RedisTimeoutError, match="no replica acknowledged"):
            await broker.enqueue(name, [NewJob(keys.new_job_id(name), "{}")])
    finally:
        await broker.close()


async def test_cron_keyed_concurrency_and_rate_limits_hold_across_shards(
        cluster: Cluster, use_handlers: Callable[..., Path], daemon: Callable[..., DaemonProcess]) -> None:
    # Given two daemons on the cluster serving a per-second schedule, a keyed type (one run per
    # tenant at a time) and a type limited to 50 starts a second, whose slots are on different shards
    use_handlers("cron", "keyed")
    owners = {_owner(cluster, cluster.nodes[0].client().cluster("keyslot", keys.route_key(name)))
              for name in ("t.every-second", "t.keyed", "t.rated")}
    assert len(owners) > 1
    await cron_keyed_concurrency_and_rate_limits_hold(cluster.url, daemon)


def test_sync_client_enqueues_and_reads_on_every_shard(cluster: Cluster) -> None:
    # Given the blocking client on the cluster
    with SyncClient(cluster.url, allow_unknown=True) as client:
        # When it queues jobs of types on every shard, one at a time and in a batch
        refs = [client.enqueue(name, {"n": i}) for i, name in enumerate(TYPES)]
        refs += client.enqueue_many([(name, {"n": 100 + i}) for i, name in enumerate(TYPES)])
        # Then each is where its type lives, and reads find it
        assert [client.get(ref.id).payload["n"] for ref in refs] == [*range(20), *range(100, 120)]
        assert {job.id for job in client.list(TYPES[7])} == {refs[7].id, refs[27].id}

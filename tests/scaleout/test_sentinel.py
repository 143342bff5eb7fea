"""Sentinel (issue 18, item 2): a real master, two replicas and three sentinels; the master is
SIGKILLed while producers enqueue and two daemons run jobs. With `durability = "replicated"`
every job acknowledged to the producer completes, once in the record, and the witness (each
run's own note, outside Redis) saw it run to its end."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError, ReadOnlyError, TimeoutError as RedisTimeoutError

from supervisor.engine import keys
from supervisor.engine.broker import connect
from supervisor.operators.admin import job_fields
from supervisor.producers.client import Client
from tests.conftest import DaemonProcess, await_until
from tests.scaleout.conftest import SentinelGroup

pytestmark = pytest.mark.slow
JOBS = 300
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ConnectionError, OSError)


async def _enqueue_through_failover(client: Client, group: SentinelGroup, jobs: int) -> dict[int, str]:
    """Enqueue `jobs` jobs, SIGKILLing the master a third of the way; each retried with its
    idempotency key until acknowledged. Returns the acknowledged ids."""
    acked: dict[int, str] = {}
    for i in range(jobs):
        if i == jobs // 3:
            group.master.kill()
        deadline = time.monotonic() + 30
        while True:
            try:
                acked[i] = (await client.enqueue("so.work", {"n": i}, idempotency_key=f"job-{i}")).id
                break
            except REDIS_DOWN:
                assert time.monotonic() < deadline, f"job {i} not acknowledged 30 s after the master died"
                await asyncio.sleep(0.1)
    return acked


async def test_a_master_killed_under_load_loses_no_acknowledged_job(
        sentinel_group: SentinelGroup, scaleout_jobs: Path, daemon: Callable[..., DaemonProcess],
        tmp_path: Path) -> None:
    # Given two daemons and a producer on the Sentinel group, every type replicated before acknowledged
    witness = tmp_path / "witness.txt"
    witness.touch()
    env = {"SCALEOUT_WITNESS": str(witness), "JOB_SUPERVISOR_DURABILITY": "replicated",
           "JOB_SUPERVISOR_REPLICA_WAIT": "2", "JOB_SUPERVISOR_PRESENCE_INTERVAL": "1"}
    first_master = sentinel_group.master.port
    daemons = [daemon(url=sentinel_group.url, env=env) for _ in range(2)]
    # When the master is SIGKILLed while jobs are queued and run
    async with Client(sentinel_group.url) as client:
        acked = await _enqueue_through_failover(client, sentinel_group, JOBS)
    # Then a replica was promoted, and every acknowledged job completed there, once
    assert sentinel_group.master_port() != first_master
    redis = connect(sentinel_group.url)
    try:
        async def all_completed() -> bool:
            pipe = redis.pipeline(transaction=False)
            for job_id in acked.values():
                pipe.hget(keys.job_key(job_id), "state")
            try:
                return all(state == "completed" for state in await pipe.execute())
            except REDIS_DOWN:
                return False

        await await_until(all_completed, 60, interval=0.2, what="every acknowledged job completed")
        events = await redis.xrange(keys.events_key("so.work"))
    finally:
        await redis.aclose()
    completions = Counter(fields["id"] for _, entry in events for fields in job_fields(entry)  # one per job
                          if fields["event"] == "completed")
    assert len(set(acked.values())) == JOBS
    assert {job_id: completions[job_id] for job_id in acked.values() if completions[job_id] != 1} == {}
    ran = set(witness.read_text().split())
    assert set(acked.values()) <= ran  # the witness saw each run to its end
    for d in daemons:  # the daemons kept running through the failover, and stop cleanly
        assert d.proc.poll() is None
        assert d.stop() == 0

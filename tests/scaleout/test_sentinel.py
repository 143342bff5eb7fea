"""Sentinel (issue 18, items 2 and 5): a real master, two replicas and three sentinels, reached
through a `redis+sentinel://` URL. The cluster's loads (loads.py) hold here too: 2,000 jobs of
twenty types each completed once; cron ticks once, keyed concurrency and rate limits hold. The
master is SIGKILLed while producers enqueue and two daemons run jobs. With `durability =
"replicated"` every job acknowledged to the producer completes, once in the record, and the
witness (each run's own note, outside Redis) saw it run to its end."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError, ReadOnlyError, TimeoutError as RedisTimeoutError

from supervisor.engine import keys
from supervisor.engine.broker import connect
from supervisor.errors import UnknownJobType
from supervisor.operators.admin import job_fields
from supervisor.producers.client import Client, SyncClient
from tests.conftest import DaemonProcess, await_until, cli_env, run_cli
from tests.scaleout.conftest import SentinelGroup
from tests.scaleout.loads import cron_keyed_concurrency_and_rate_limits_hold, twenty_types_each_job_completed_once

pytestmark = pytest.mark.slow
JOBS = 300
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ConnectionError, OSError)
#: ... and, for an enqueue, a type whose statements the failover lost (back at the next heartbeat).
FAILOVER_RETRIED = (*REDIS_DOWN, UnknownJobType)


async def test_twenty_types_each_job_completed_once(
        sentinel_group: SentinelGroup, scaleout_jobs: Path, daemon: Callable[..., DaemonProcess],
        tmp_path: Path) -> None:
    # Given two daemons and a producer that find the master through the sentinels: 2,000 jobs of
    # twenty types, each completed exactly once in the record and seen by the witness
    await twenty_types_each_job_completed_once(sentinel_group.url, daemon, tmp_path)
    # and it all ran on the master the sentinels name (no failover stood in for it)
    assert sentinel_group.master_port() == sentinel_group.master.port


async def test_cron_keyed_concurrency_and_rate_limits_hold(
        sentinel_group: SentinelGroup, use_handlers: Callable[..., Path],
        daemon: Callable[..., DaemonProcess]) -> None:
    # Given two daemons on the Sentinel group serving a per-second schedule, a keyed type and a
    # type limited to 50 starts a second: each tick fires once, the limits hold
    use_handlers("cron", "keyed")
    await cron_keyed_concurrency_and_rate_limits_hold(sentinel_group.url, daemon)


async def _enqueue_through_failover(client: Client, group: SentinelGroup, jobs: int) -> tuple[dict[int, str], int]:
    """Enqueue `jobs` jobs, SIGKILLing the master a third of the way; each retried with its
    idempotency key until acknowledged. Returns the acknowledged ids, and the killed master's port."""
    acked: dict[int, str] = {}
    killed = 0
    for i in range(jobs):
        if i == jobs // 3:
            killed = group.kill_master()
        deadline = time.monotonic() + 30
        while True:
            try:
                acked[i] = (await client.enqueue("so.work", {"n": i}, idempotency_key=f"job-{i}")).id
                break
            except FAILOVER_RETRIED:
                assert time.monotonic() < deadline, f"job {i} not acknowledged 30 s after the master died"
                await asyncio.sleep(0.1)
    return acked, killed


@pytest.mark.parametrize("durability", ["replicated", "async"])
async def test_a_master_killed_under_load_loses_no_acknowledged_job(
        durability: str, sentinel_group: SentinelGroup, scaleout_jobs: Path,
        daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Given two daemons and a producer on the Sentinel group (replicated: every type's writes
    # acknowledged once a replica has them; async, the default: once the master has them)
    witness = tmp_path / "witness.txt"
    witness.touch()
    env = {"SCALEOUT_WITNESS": str(witness), "JOB_SUPERVISOR_DURABILITY": durability,
           "JOB_SUPERVISOR_REPLICA_WAIT": "2",
           "JOB_SUPERVISOR_PRESENCE_INTERVAL": "3"}  # types stay served through the failover
    daemons = [daemon(url=sentinel_group.url, env=env) for _ in range(2)]
    # When the master is SIGKILLed while jobs are queued and run
    async with Client(sentinel_group.url) as client:
        acked, killed = await _enqueue_through_failover(client, sentinel_group, JOBS)
    # Then a replica was promoted, and every acknowledged job completed there, once; with the
    # default durability, what the old master had not passed on is gone (reported)
    assert sentinel_group.master_port() != killed
    redis = connect(sentinel_group.url)
    try:
        async def settled() -> list[str] | None:
            pipe = redis.pipeline(transaction=False)
            for job_id in acked.values():
                pipe.hget(keys.job_key(job_id), "state")
            try:
                states = await pipe.execute()
            except REDIS_DOWN:
                return None
            if not all(state in ("completed", None) for state in states):
                return None
            return [job_id for job_id, state in zip(acked.values(), states, strict=True) if state is None]

        lost = await await_until(lambda: _or_none(settled), 60, interval=0.2, what="every acknowledged job settled")
        events = await redis.xrange(keys.events_key("so.work"))
    finally:
        await redis.aclose()
    lost = [] if lost is True else lost
    print(f"durability {durability}: {len(lost)} of {JOBS} acknowledged jobs lost with the master")
    if durability == "replicated":
        assert lost == []
    completions = Counter(fields["id"] for _, entry in events for fields in job_fields(entry)  # one per job
                          if fields["event"] == "completed")
    kept = set(acked.values()) - set(lost)
    assert len(set(acked.values())) == JOBS
    assert {job_id: completions[job_id] for job_id in kept if completions[job_id] != 1} == {}
    assert kept <= set(witness.read_text().split())  # the witness saw each run to its end
    # and the blocking client and the operators' commands reach the new master through the sentinels too
    with SyncClient(sentinel_group.url) as sync:
        assert sync.wait(sync.enqueue("so.work", {"n": -1}).id, timeout=20).state.value == "completed"
    listed = run_cli("workers", "--json", env=cli_env(REDIS_URL=sentinel_group.url), cwd=tmp_path)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 2, listed.stderr
    for d in daemons:  # the daemons kept running through the failover, and stop cleanly
        assert d.proc.poll() is None
        assert d.stop() == 0


async def _or_none(check: Callable[[], Awaitable[list[str] | None]]) -> list[str] | bool:
    """`check()`'s list, made truthy when empty (True) so `await_until` takes it; False for None."""
    found = await check()
    if found is None:
        return False
    return found or True

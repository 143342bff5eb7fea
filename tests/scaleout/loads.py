"""The scale-out loads (issue 18, item 5) run alike on every topology: the cluster and the
Sentinel group tests call these with their own `redis+cluster://` or `redis+sentinel://` URL,
the only difference between them."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    RedisClusterException,
    TimeoutError as RedisTimeoutError,
)

from supervisor.engine import keys
from supervisor.engine.broker import connect
from supervisor.errors import UnknownJobType
from supervisor.operators.admin import job_fields
from supervisor.producers.client import Client
from tests.conftest import DaemonProcess, await_until

#: Twenty types (handlers/scaleout_jobs.py) whose hash tags spread over a cluster's shards.
TYPES = [f"so.t{i:02d}" for i in range(20)]
#: What a call may meet while a node is down or failed over: retried, not a failure.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, RedisClusterException, ConnectionError, OSError)
#: What an enqueue may meet during a failover, retried until acknowledged: Redis down, or a type whose
#: published statements the failover lost (the daemons' next heartbeat writes them again).
FAILOVER_RETRIED = (*REDIS_DOWN, UnknownJobType)


async def completed_once(url: str, ids: dict[str, str]) -> Counter[str]:
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


async def twenty_types_each_job_completed_once(url: str, daemon: Callable[..., DaemonProcess],
                                               tmp_path: Path) -> None:
    """Two daemons (the `scaleout_jobs` handlers) serve the twenty types; 2,000 jobs, each
    completed exactly once in the record and seen to its end by the witness."""
    witness = tmp_path / "witness.txt"
    witness.touch()
    env = {"SCALEOUT_WITNESS": str(witness), "JOB_SUPERVISOR_PRESENCE_INTERVAL": "1"}
    daemons = [daemon(url=url, env=env) for _ in range(2)]
    # When 2,000 jobs are queued, half one at a time and half in batches
    async with Client(url) as client:
        ids = {(await client.enqueue(TYPES[i % 20], {"n": i})).id: TYPES[i % 20] for i in range(1000)}
        refs = await client.enqueue_many([(TYPES[i % 20], {"n": i}) for i in range(1000, 2000)])
        ids.update({ref.id: ref.name for ref in refs})
    # Then each completed exactly once, on whichever daemon claimed it
    completions = await completed_once(url, ids)
    assert len(ids) == 2000
    assert {job_id: n for job_id, n in completions.items() if n != 1} == {}
    assert set(ids) <= set(completions) and set(ids) <= set(witness.read_text().split())
    for d in daemons:
        assert d.stop() == 0


async def cron_keyed_concurrency_and_rate_limits_hold(url: str, daemon: Callable[..., DaemonProcess]) -> None:
    """Two daemons (the `cron` and `keyed` handlers) serve a per-second schedule, a keyed type
    (one run per tenant at a time) and a type limited to 50 starts a second: each tick fires
    exactly once, no tenant runs twice at once, no second sees more than 50 rated starts."""
    daemons = [daemon(url=url, wait=False) for _ in range(2)]
    for d in daemons:
        d.wait_ready()
    async with Client(url) as client:
        # When keyed and rated jobs are queued while the schedule fires for a few seconds
        keyed = [await client.enqueue("t.keyed", {"tenant": f"t{i % 3}"}) for i in range(60)]
        rated = await client.enqueue_many([("t.rated", {}) for _ in range(150)])
        done = [ref.id for ref in [*keyed, *rated]]

        async def all_done() -> bool:
            return all([(await client.get(job_id)).state.value == "completed" for job_id in done])

        await await_until(all_done, 60, interval=0.5, what="the keyed and rated jobs")
        for d in daemons:
            assert d.stop() == 0
        runs = [await client.get(ref.id) for ref in keyed]
        # the limit holds where it is enforced: when Redis (its own clock) let each job start
        starts = sorted([(await client.get(ref.id)).started.timestamp() for ref in rated])
        ticks = Counter(int(j.idempotency_key.rsplit(":", 1)[1])
                        for j in await client.list("t.every-second", limit=10_000) if j.idempotency_key)
    # Then each tick fired exactly once, none missing
    assert ticks and max(ticks.values()) == 1 and sorted(ticks) == list(range(min(ticks), max(ticks) + 1))
    assert max(ticks) - min(ticks) >= 2, "the schedule fired for a few seconds"
    # and no two jobs of one tenant ran at once, and no second saw more than 50 rated starts
    for tenant in ("t0", "t1", "t2"):
        spans = sorted((r.result["started"], r.result["ended"]) for r in runs if r.payload["tenant"] == tenant)
        assert all(prev[1] <= nxt[0] for prev, nxt in itertools.pairwise(spans)), tenant
    worst = max(sum(1 for t in starts[i:i + 60] if t < s + 1.0) for i, s in enumerate(starts))
    assert worst <= 50, f"{worst} rated jobs claimed to start within one second"

"""A dead instance's leases end at once when an instance of its own host and boot finds its process
gone (SPEC §4): at a successor's start and in any same-host janitor, never for an instance elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from supervisor import Client, State
from supervisor.daemon.presence import PROCESSES_KEY, ProcessIdentity
from supervisor.engine import keys
from supervisor.engine.broker import Broker, connect
from tests.conftest import DaemonProcess, await_until

# Every lease here is 300 s (t.held): a job that runs again within these deadlines was released,
# not lapsed.
_until = functools.partial(await_until, timeout=10.0)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Client]:
    async with Client(redis_url, allow_unknown=True) as c:
        yield c


async def _held_by(broker: Broker, job_ids: list[str], instance: str) -> bool:
    for job_id in job_ids:
        state, worker = await broker.redis.hmget(keys.job_key(job_id), "state", "worker")
        if state != "active" or worker != instance:
            return False
    return True


async def _leases(broker: Broker, job_ids: list[str]) -> dict[str, str]:
    return {j: await broker.redis.hget(keys.job_key(j), "lease") for j in job_ids}


def _instance(d: DaemonProcess) -> str:
    return str(d.events("daemon.ready")[0]["instance"])


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_a_killed_daemon_s_jobs_run_again_as_soon_as_its_successor_is_ready(
        redis_url: str, use_handlers: Any, daemon: Any, client: Client, broker: Broker) -> None:
    # Given a daemon running jobs under 300 s leases
    use_handlers("recovery")
    first = daemon()
    refs = [await client.enqueue("t.held", {"seconds": 120}) for _ in range(3)]
    once = await client.enqueue("t.held-once", {"seconds": 120})
    ids = [r.id for r in refs]
    await _until(lambda: _held_by(broker, [*ids, once.id], _instance(first)), what="jobs active on the first")
    leases = await _leases(broker, ids)
    # When it is SIGKILLed and a successor starts on the same host, with the same state dir
    first.kill()
    second = daemon(env={"JOB_SUPERVISOR_STATE_DIR": first.env["JOB_SUPERVISOR_STATE_DIR"]})
    # Then every job runs again within seconds of READY (not after the lease), each redelivery counted
    jobs = [await client.wait(j, timeout=5) for j in ids]
    for job in jobs:
        assert job.state is State.COMPLETED, job
        assert [a.outcome for a in job.attempts] == ["lease-expired", "completed"]
        assert job.attempts[0].instance == _instance(first) and job.deliveries == 2
        assert f"instance {_instance(first)} is gone" in (job.attempts[0].error or ""), job.attempts[0]
        assert job.result == {"attempt": 2, "pid": second.pid}
    # And max_deliver applies as to any lapsed lease: the one-delivery job is dead
    dead = await client.wait(once.id, timeout=5)
    assert dead.state is State.DEAD and "max_deliver (1)" in (dead.error or "")
    # And the dead holder's late heartbeat or result is refused: its leases were fenced
    assert await broker.heartbeat("t.held", 300_000, [(j, leases[j], "") for j in ids]) == ["lost"] * 3
    late = await broker.complete("t.held", [(j, leases[j], '"late"', "") for j in ids])
    assert late == ["fenced:completed"] * 3
    # And the successor said whom it found gone, and forgot its process record
    [gone] = await _until(lambda: second.events("instance.gone"), what="instance.gone logged")
    assert gone["instance"] == _instance(first) and gone["pid"] == first.pid and gone["released"] == 4
    assert await broker.redis.hexists(PROCESSES_KEY, _instance(first)) == 0


async def test_the_janitor_of_a_running_instance_releases_a_neighbour_that_died(
        redis_url: str, use_handlers: Any, daemon: Any, client: Client, broker: Broker) -> None:
    # Given a daemon holding jobs under 300 s leases
    use_handlers("recovery")
    first = daemon()
    ids = [(await client.enqueue("t.held", {"seconds": 120})).id for _ in range(2)]
    await _until(lambda: _held_by(broker, ids, _instance(first)), what="jobs active on the first")
    # And a second one on the same host that starts while the first is alive: it releases nothing
    second = daemon(env={"JOB_SUPERVISOR_JANITOR_INTERVAL": "0.2"})
    assert await _held_by(broker, ids, _instance(first))
    # When the first is SIGKILLed
    first.kill()
    # Then the second one's janitor releases its jobs, and they run again there
    for job_id in ids:
        job = await client.wait(job_id, timeout=10)
        assert job.state is State.COMPLETED and job.deliveries == 2
        assert job.attempts[-1].instance == _instance(second)
    gone = await _until(lambda: second.events("instance.gone"), what="instance.gone logged")
    assert [e["instance"] for e in gone] == [_instance(first)]


async def test_only_same_host_same_boot_pid_gone_evidence_releases(
        redis_url: str, use_handlers: Any, daemon: Any, client: Client, broker: Broker) -> None:
    # Given jobs held by instances whose process records say where they run
    me = ProcessIdentity.current()
    assert me is not None, "these tests need Linux's boot id"
    dead = _dead_pid()
    ghosts = {
        "near": dataclasses.replace(me, pid=dead, started=me.started + 1),  # this host and boot: gone
        "reused": dataclasses.replace(me, started=me.started - 100),  # our pid, another process's start
        "alive": me,  # this very process: alive
        "far": dataclasses.replace(me, host="elsewhere", pid=dead),  # another host: maybe partitioned
        "rebooted": dataclasses.replace(me, boot="00000000-0000-0000-0000-000000000000", pid=dead),
        "contained": dataclasses.replace(me, pidns="pid:[1]", pid=dead),  # another pid namespace
    }
    held: dict[str, str] = {}
    for ghost, identity in ghosts.items():
        ref = await client.enqueue("t.held", {"seconds": 0})
        [claimed] = (await broker.claim("t.held", ghost, 1, 300_000, 5)).jobs
        assert claimed.id == ref.id
        held[ghost] = ref.id
        record = {**dataclasses.asdict(identity), "types": ["t.held"]}
        await broker.redis.hset(PROCESSES_KEY, ghost, json.dumps(record))
    leases = await _leases(broker, list(held.values()))
    # When a daemon starts on this host
    use_handlers("recovery")
    d = daemon()
    # Then the jobs of the instances whose process is gone run again there
    for ghost in ("near", "reused"):
        job = await client.wait(held[ghost], timeout=5)
        assert job.state is State.COMPLETED and job.attempts[0].instance == ghost
    await _until(lambda: sorted(e["instance"] for e in d.events("instance.gone")) == ["near", "reused"],
                 what="both logged as gone")
    # And the others keep their jobs and leases: another host, boot or pid namespace is no
    # evidence, and a live process is alive; their leases decide
    for ghost in ("alive", "far", "rebooted", "contained"):
        state, worker, lease, deliveries = await broker.redis.hmget(
            keys.job_key(held[ghost]), "state", "worker", "lease", "deliveries")
        assert (state, worker, lease, deliveries) == ("active", ghost, leases[held[ghost]], "1"), ghost
        assert await broker.redis.hexists(PROCESSES_KEY, ghost) == 1


async def test_a_claim_the_dead_process_left_behind_its_wait_claims_nothing(
        redis_url: str, client: Client, broker: Broker) -> None:
    # Given a job held by an instance whose last wait, with a claim queued behind it, is still
    # blocked in Redis (a killed process whose connection Redis has not yet seen close)
    ref = await client.enqueue("t.held", {"seconds": 0})
    [held] = (await broker.claim("t.held", "dead", 1, 300_000, 5)).jobs
    zombie = Broker(connect(redis_url))
    # (its first wait takes the enqueue's wake-up)
    assert (await zombie.wait_then_claim("t.held", 1, "dead:1", "dead", 10, 300_000, 5)).jobs == []
    queued = asyncio.create_task(zombie.wait_then_claim("t.held", 30, "dead:1", "dead", 10, 300_000, 5))

    async def blocked() -> bool:
        return any(c.get("cmd") == "bzpopmin" for c in await broker.redis.client_list())

    await _until(blocked, what="the wait blocked")
    # When its leases are released
    assert await broker.release_instance("t.held", "dead", "dead is gone") == [held.id]
    # Then the queued claim, woken by the release, claims nothing for the dead instance
    assert (await asyncio.wait_for(queued, 5)).jobs == []
    await zombie.close()
    # And a live instance reaps the lease and runs the job again: a second delivery, a new lease
    [again] = (await broker.claim("t.held", "live", 1, 300_000, 5)).jobs
    assert (again.id, again.attempt) == (ref.id, 2) and int(again.lease) > int(held.lease) + 1
    [attempt] = (await client.get(ref.id)).attempts
    assert (attempt.outcome, attempt.instance, attempt.error) == ("lease-expired", "dead", "dead is gone")
    # And a second release (another janitor at the same time) finds nothing more to do
    assert await broker.release_instance("t.held", "dead", "dead is gone") == []


async def test_a_foreign_value_at_the_process_records_never_stops_an_instance(
        redis_url: str, use_handlers: Any, daemon: Any, client: Client, broker: Broker) -> None:
    # Given another program's value where the process records live
    await broker.redis.set(PROCESSES_KEY, "not a hash")
    # When a daemon starts
    use_handlers("recovery")
    d = daemon()
    # Then it serves its types all the same, and names the key once
    job = await client.wait((await client.enqueue("t.held", {"seconds": 0})).id, timeout=10)
    assert job.state is State.COMPLETED
    found = await _until(lambda: [e for e in d.events("record.corrupt") if e.get("key") == PROCESSES_KEY],
                         what="record.corrupt logged")
    assert len(found) == 1

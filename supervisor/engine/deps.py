"""Dependencies, release notices and batches in Redis: the calls of `lua/deps.lua` and `lua/batch.lua`.

A job's dependencies may be of other types, so in other Redis Cluster slots, and no script touches
two slots. So each fact crosses slots through a caller (docs/workflows.md):

- `attach`: a dependent, created `waiting` with deps_left = its dependencies + 1 (the gate), is
  registered with each dependency (one script in the dependency's slot, which marks it `notify`);
  a dependency already settled is reported to the dependent at once (`settle`, in its slot).
  `open_gate` takes the last 1 off once the producer made every registration: before that the
  job cannot be released, so a half-made graph never starts (the janitor cancels one whose gate
  stays shut: `sweep_waiting`).
- a `notify` job's settle writes a notice `<id> <state>` into its type's outbox with the
  transition (lib.lua `notify_settled`); a daemon `claim_notices` (a lease per notice), `settle`s
  each dependent, settles the batch, then `notices_done`. Every step is idempotent.
- a batch (`batch.lua`): counts in its record, member ids in two sets trimmed when it is done.

Member of a dependents set: `<dependent id> <its type>` (so a settle needs no read of its type).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from supervisor.engine import keys
from supervisor.engine.broker import SCRIPTS, dumps
from supervisor.engine.records import hash_reply, loads
from supervisor.engine.states import FINISHED
from supervisor.engine.transport import ScriptTransport
from supervisor.errors import InvalidWorkflow

DEPS, BATCH = SCRIPTS["deps"], SCRIPTS["batch"]
#: The finished states a dependency may end in (its notice's outcome).
SETTLED = frozenset(s.value for s in FINISHED)
#: What a failed, dead, cancelled or expired dependency does to its dependent.
ON_DEPENDENCY_FAILURE = ("cancel", "run", "wait")
GATE = "gate"
#: The context entry that tells the dispatcher a job has dependencies: their results go in its run's
#: context (`DEPENDENCY_RESULTS`, JSON text) for `ctx.dependency_results`.
DEPENDENCIES_MARK = "dependencies"
DEPENDENCY_RESULTS = "dependency_results"
#: How long a claimed notice is left to its deliverer before another takes it over (ms).
NOTICE_LEASE_MS = 10_000


def slot_base(job_id: str) -> str:
    """`js:{tag}:`: what the keys of `job_id`'s slot start with."""
    return f"{keys.PREFIX}:{{{keys.tag_from_id(job_id)}}}:"


def _deps_call(job_id: str, name: str, op: str, *args: Any) -> tuple[list[str], list[Any]]:
    base = slot_base(job_id)
    return [base + "j:" + job_id], [op, keys.queue_prefix(name), base + "j:", *args]


async def register(transport: ScriptTransport, dep_id: str, dependent: str, dependent_name: str) -> str:
    """Register `dependent` with `dep_id`; the dependency's state ('gone': no such job)."""
    try:
        base = slot_base(dep_id)
    except ValueError:
        return "gone"
    reply = await transport.evalsha(DEPS, [base + "j:" + dep_id],
                                    ["register", "", base + "j:", dep_id, f"{dependent} {dependent_name}"])
    return str(reply[0])


async def settle(transport: ScriptTransport, job_id: str, name: str, dep: str, outcome: str) -> str:
    """Tell `job_id` (of type `name`) that `dep` (a job id, or GATE) settled as `outcome`."""
    script_keys, args = _deps_call(job_id, name, "settle", job_id, dep, outcome)
    return str((await transport.evalsha(DEPS, script_keys, args))[0])


async def attach(transport: ScriptTransport, job_id: str, name: str, depends_on: Sequence[str]) -> None:
    """Register a `waiting` job with each of its dependencies (settled ones reported at once).
    InvalidWorkflow for a dependency that is no job. Idempotent: safe to repeat."""
    for dep in depends_on:
        state = await register(transport, dep, job_id, name)
        if state == "gone":
            raise InvalidWorkflow(f"job {job_id} ({name}) depends on {dep!r}, which is no job (never "
                                  "existed, or trimmed by retention): pass ids of jobs that exist")
        if state in SETTLED:
            await settle(transport, job_id, name, dep, state)


async def open_gate(transport: ScriptTransport, job_id: str, name: str) -> str:
    """Every dependency of `job_id` is registered: it may be released now."""
    return await settle(transport, job_id, name, GATE, "completed")


async def claim_notices(transport: ScriptTransport, name: str, n: int,
                        lease_ms: int = NOTICE_LEASE_MS) -> list[tuple[str, str, bool]]:
    """Up to `n` undelivered notices of type `name`'s outbox, leased: (notice, batch id or '',
    whether the job has dependents)."""
    prefix = keys.queue_prefix(name)
    raw = await transport.evalsha(DEPS, [prefix + "outbox"], ["claim", prefix, keys.job_prefix(name), n, lease_ms])
    return [(str(raw[i]), str(raw[i + 1]), str(raw[i + 2]) == "1") for i in range(0, len(raw), 3)]


async def notices_done(transport: ScriptTransport, name: str, notices: Sequence[str]) -> None:
    """The notices were delivered to every dependent and batch: they leave the outbox."""
    prefix = keys.queue_prefix(name)
    await transport.evalsha(DEPS, [prefix + "outbox"], ["done", prefix, keys.job_prefix(name), *notices])


async def sweep_waiting(transport: ScriptTransport, name: str, age_ms: int) -> int:
    """Cancel waiting jobs of `name` older than `age_ms` whose gate never opened; how many."""
    prefix = keys.queue_prefix(name)
    return int(await transport.evalsha(DEPS, [prefix + "waiting"], ["sweep", prefix, keys.job_prefix(name), age_ms]))


async def dependents(transport: ScriptTransport, job_id: str) -> AsyncIterator[tuple[str, str]]:
    """The (dependent id, its type) pairs registered with `job_id`, read in slices (SSCAN)."""
    key, cursor = slot_base(job_id) + "dp:" + job_id, "0"
    while True:
        cursor, members = await transport.call("SSCAN", key, cursor, "COUNT", 500)
        for member in members:
            dep_id, _, name = str(member).partition(" ")
            yield dep_id, name
        if str(cursor) == "0":
            return


async def dependency_results(transport: ScriptTransport, job_id: str) -> dict[str, Any]:
    """What `job_id`'s dependencies ended as: {id: {"name", "state", "result"}} (the gate left out)."""
    outcomes = hash_reply(await transport.call("HGETALL", slot_base(job_id) + "dd:" + job_id))
    found: dict[str, str] = {}  # dependency id -> its record's key
    for dep in outcomes:
        if dep != GATE:
            with contextlib.suppress(ValueError):  # not a job id
                found[dep] = keys.job_key(dep)
    # concurrently: the wire pipelines them (and a cluster's reach every node at once)
    records = await asyncio.gather(*(transport.call("HMGET", key, "name", "result") for key in found.values()))
    return {dep: {"name": name, "state": outcomes[dep], "result": loads(result) if result else None}
            for dep, (name, result) in zip(found, records, strict=True)}


async def with_dependency_results(transport: ScriptTransport, job_id: str,
                                  context: dict[str, Any]) -> dict[str, Any]:
    """A run's context with its dependencies' results added (`DEPENDENCY_RESULTS`)."""
    return {**context, DEPENDENCY_RESULTS: dumps(await dependency_results(transport, job_id))}


# --- batches ------------------------------------------------------------------------

BATCH_INDEX = f"{keys.PREFIX}:batches"  # every batch id, by creation time (ms)


def batch_prefix(batch_id: str) -> str:
    """`js:{<batch id>}:b:`: the batch's keys (record, members, settled) share its slot."""
    return f"{keys.PREFIX}:{{{batch_id}}}:b:"


async def batch_op(transport: ScriptTransport, batch_id: str, op: str, *args: Any) -> list[str]:
    """One op of batch.lua: [result, total, completed, failed, callbacks JSON]."""
    prefix = batch_prefix(batch_id)
    reply = await transport.evalsha(BATCH, [prefix + "rec"], [op, prefix, *args])
    return [str(v) for v in reply]


async def batch_record(transport: ScriptTransport, batch_id: str) -> dict[str, str]:
    return hash_reply(await transport.call("HGETALL", batch_prefix(batch_id) + "rec"))


__all__ = [
    "BATCH_INDEX", "DEPENDENCIES_MARK", "DEPENDENCY_RESULTS", "GATE", "NOTICE_LEASE_MS", "ON_DEPENDENCY_FAILURE",
    "SETTLED", "attach", "batch_op", "batch_prefix", "batch_record", "claim_notices", "dependency_results",
    "dependents", "notices_done", "open_gate", "register", "settle", "slot_base", "sweep_waiting",
    "with_dependency_results",
]

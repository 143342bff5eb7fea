"""A job's place in the graph (the job page's links, `GET /jobs/{id}/links`): the workflow and
batch it belongs to, its dependencies with their states, and the jobs that wait on it.

A record keeps only a count of the dependencies not yet settled (an enqueue carries no ids: see
docs/workflows.md, Sizes), so the ids come from where they are kept: a workflow step's from its
workflow's graph, any job's settled ones from its `dd` hash (with how each ended), the dependents
from its `dp` set. Each list is read up to `limit` entries (a fan-in may have 10,000).
"""

from __future__ import annotations

from typing import Any, cast

from supervisor.engine import deps, keys
from supervisor.engine.broker import Broker
from supervisor.engine.records import loads
from supervisor.errors import JobNotFound
from supervisor.producers.workflows import workflow_key

_WF_PREFIX = "wf:"  # a workflow step's idempotency key: wf:<workflow id>:<step key>


async def job_links(broker: Broker, job_id: str, limit: int = 100) -> dict[str, Any]:
    """{workflow: {id, step} | None, batch, dependencies: [{id, name, state, outcome}],
    unsettled (dependencies still awaited), dependents: [{id, name, state}], truncated}."""
    try:
        record = keys.job_key(job_id)
    except ValueError:
        raise JobNotFound(job_id) from None
    state, idem, batch, deps_left = cast(list[str | None], await broker.redis.hmget(
        record, "state", "idem", "batch", "deps_left"))
    if state is None:
        raise JobNotFound(job_id)
    base = deps.slot_base(job_id)
    outcomes, more_deps = await _hash_slice(broker, base + "dd:" + job_id, limit)
    gate_open = outcomes.pop(deps.GATE, None) is not None or (more_deps and bool(  # a part was read
        await broker.redis.hexists(base + "dd:" + job_id, deps.GATE)))
    workflow = await _workflow_of(broker, job_id, idem) if idem and idem.startswith(_WF_PREFIX) else None
    dep_ids = workflow.pop("after") if workflow else list(outcomes)
    dependents: list[str] = []
    more_dependents = False
    async for dep_id, _name in deps.dependents(broker.transport, job_id):
        if len(dependents) >= limit:
            more_dependents = True
            break
        dependents.append(dep_id)
    facts = await _names_and_states(broker, [*dep_ids[:limit], *dependents])
    left = int(deps_left or 0) - (0 if gate_open else 1)
    return {
        "id": job_id, "workflow": workflow, "batch": batch or None,
        "dependencies": [{"id": d, **facts[d], "outcome": outcomes.get(d)} for d in dep_ids[:limit]],
        "unsettled": max(left, 0) if state == "waiting" else 0,
        "dependents": [{"id": d, **facts[d]} for d in dependents],
        "truncated": more_deps or len(dep_ids) > limit or more_dependents,
    }


async def _hash_slice(broker: Broker, key: str, limit: int) -> tuple[dict[str, str], bool]:
    """Up to about `limit` fields of a hash (one HSCAN step past that size), and whether there are more."""
    if int(await broker.redis.hlen(key)) <= limit + 1:
        return cast(dict[str, str], await broker.redis.hgetall(key)), False
    _cursor, page = await broker.redis.hscan(key, 0, count=limit)
    return cast(dict[str, str], page), True


async def _workflow_of(broker: Broker, job_id: str, idem: str) -> dict[str, Any] | None:
    """{id, step, after: [job ids]} when `idem` names a workflow whose step is this job (ids and
    keys may hold ':', so each split is tried; a look-alike key a user chose matches none)."""
    rest = idem[len(_WF_PREFIX):]
    cuts = [i for i, ch in enumerate(rest) if ch == ":"][:4]
    for cut in cuts:
        wf_id, step_key = rest[:cut], rest[cut + 1:]
        raw = cast(str | None, await broker.redis.hget(workflow_key(wf_id), "steps"))
        if not raw:
            continue
        steps: dict[str, dict[str, Any]] = loads(raw)
        step = steps.get(step_key)
        if step and step.get("id") == job_id:
            after = [steps[k]["id"] for k in step.get("after", []) if k in steps]
            return {"id": wf_id, "step": step_key, "after": after}
    return None


async def _names_and_states(broker: Broker, ids: list[str]) -> dict[str, dict[str, Any]]:
    """{id: {name, state}} in one pipeline (a trimmed record: state 'trimmed')."""
    out: dict[str, dict[str, Any]] = {}
    async with broker.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.job_key(job_id), "name", "state")
        rows = await pipe.execute()
    for job_id, (name, state) in zip(ids, rows, strict=True):
        out[job_id] = {"name": name, "state": state or "trimmed"}
    return out


__all__ = ["job_links"]

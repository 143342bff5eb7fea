"""Workflows and batches for producers: the graph builder (`Step`, `chain`, `group`, `chord`,
`dag`), creating a graph as one unit, reading and cancelling it, and batches with callbacks.

A workflow is a graph of jobs linked by `depends_on` (docs/workflows.md). It is created so that
either all of it runs or none of it does: every job is made `waiting` behind its gate, then each
edge is registered (`supervisor.engine.deps.attach`), then the record is written, and only then
are the gates opened. A failure before that cancels what was made and raises; a producer that dies
instead leaves jobs whose gate the janitor finds shut and cancels. Every job carries the idempotency
key `wf:<workflow id>:<step key>`, so creating the same workflow id again makes nothing twice.

Records: `js:{<workflow id>}:wf` (a hash: name, created, state, and the steps as JSON: step key ->
type, job id, the keys it waits on; it grows with the graph a caller gave in one call, not with
what runs) and `js:workflows` (every workflow id by creation time). A workflow's state is derived
from its jobs when read: running while one is live, completed when all are, else failed (or
cancelled, when it was cancelled as a whole).

A batch is an open set of jobs (`Client.batch`, `add`, `close`); see `supervisor.engine.deps`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from supervisor.engine import deps, keys
from supervisor.engine.broker import dumps
from supervisor.engine.records import loads
from supervisor.engine.states import FINISHED, State
from supervisor.errors import InvalidTransition, InvalidWorkflow, JobNotFound, SupervisorError, WorkflowNotFound
from supervisor.flow import SubmitOutcome
from supervisor.producers.enqueue import EnqueueRequest

if TYPE_CHECKING:
    from supervisor.engine.broker import NewJob
    from supervisor.producers.client import Client

WORKFLOW_INDEX = f"{keys.PREFIX}:workflows"
#: How long a workflow's and a done batch's records are kept (ms): as long as a failed job's.
RECORD_RETENTION_MS = 30 * 86_400_000
_LIVE = {State.WAITING.value, State.PENDING.value, State.ACTIVE.value, State.RETRY.value}


def workflow_key(workflow_id: str) -> str:
    return f"{keys.PREFIX}:{{{workflow_id}}}:wf"


# --- the graph ------------------------------------------------------------------------


@dataclass
class Step:
    """One job of a workflow: its type, payload and enqueue options (`priority`, `delay`,
    `deadline`, `concurrency_key`, ...). `key` names it in the graph (default: the type name, made
    unique); `after` lists the keys of the steps it waits for (`dag`; `chain` fills it in)."""

    name: str
    payload: Any = None
    key: str | None = None
    after: list[str] = field(default_factory=list)
    on_dependency_failure: str = "cancel"
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, payload: Any = None, *, key: str | None = None, after: Iterable[str] = (),
                 on_dependency_failure: str = "cancel", **options: Any) -> None:
        self.name, self.payload, self.key = name, payload, key
        self.after, self.on_dependency_failure, self.options = list(after), on_dependency_failure, options


class Graph:
    """Steps by key, each with the keys it waits for, in the order given. `heads`: the steps
    nothing of the graph waits for (what a following step of a chain waits for)."""

    def __init__(self) -> None:
        self.steps: dict[str, Step] = {}

    def add(self, step: Step, after: list[str] | None = None) -> str:
        """Add a copy of `step` (waiting for `after` instead of its own, when given); its key in
        the graph: its own `key`, else its type name made unique."""
        key = step.key or step.name
        if key in self.steps:
            if step.key:
                raise InvalidWorkflow(f"two steps have the key {key!r}: give each a key of its own")
            n = 2
            while f"{key}#{n}" in self.steps:
                n += 1
            key = f"{key}#{n}"
        self.steps[key] = Step(step.name, step.payload, key=step.key, after=step.after if after is None else after,
                               on_dependency_failure=step.on_dependency_failure, **step.options)
        return key

    def merge(self, other: Graph, after: list[str]) -> list[str]:
        """Add `other`'s steps, its roots waiting for `after`; the keys here of its heads."""
        renamed: dict[str, str] = {}
        for key in other.order():
            step = other.steps[key]
            renamed[key] = self.add(step, [renamed[a] for a in step.after] if step.after else list(after))
        return [renamed[k] for k in other.heads()]

    def heads(self) -> list[str]:
        waited = {a for s in self.steps.values() for a in s.after}
        return [k for k in self.steps if k not in waited]

    def order(self) -> list[str]:
        """The keys, each after every step it waits for; InvalidWorkflow for a cycle or a bad key."""
        for key, step in self.steps.items():
            for a in step.after:
                if a not in self.steps:
                    raise InvalidWorkflow(f"step {key!r} waits for {a!r}, which is no step of the workflow")
        done: dict[str, bool] = {}
        out: list[str] = []

        def visit(key: str, path: tuple[str, ...]) -> None:
            if done.get(key):
                return
            if key in path:
                raise InvalidWorkflow(f"the workflow has a cycle: {' -> '.join((*path, key))}")
            for a in self.steps[key].after:
                visit(a, (*path, key))
            done[key] = True
            out.append(key)

        for key in self.steps:
            visit(key, ())
        return out


def _graph(part: Step | Graph) -> Graph:
    if isinstance(part, Graph):
        return part
    g = Graph()
    g.add(part)
    return g


def chain(*parts: Step | Graph) -> Graph:
    """Each part waits for the one before it (for all of it, when it is a group)."""
    g = Graph()
    heads: list[str] = []
    for part in parts:
        heads = g.merge(_graph(part), heads)
    return g


def group(*parts: Step | Graph) -> Graph:
    """The parts side by side: none waits for another."""
    g = Graph()
    for part in parts:
        g.merge(_graph(part), [])
    return g


def chord(parts: Iterable[Step | Graph], callback: Step) -> Graph:
    """A group, then `callback`, which reads the group's results (`ctx.dependency_results`)."""
    return chain(group(*parts), callback)


def dag(steps: Mapping[str, Step] | Iterable[Step]) -> Graph:
    """Any graph of named steps: each step's `after` names the keys it waits for."""
    g = Graph()
    items = steps.items() if isinstance(steps, Mapping) else ((s.key or s.name, s) for s in steps)
    for key, step in items:
        if key in g.steps:
            raise InvalidWorkflow(f"two steps have the key {key!r}: give each a key of its own")
        g.steps[key] = Step(step.name, step.payload, key=key, after=step.after,
                            on_dependency_failure=step.on_dependency_failure, **step.options)
    return g


# --- creating one ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowRef:
    """A created workflow: its id and the job id of each step."""

    id: str
    jobs: dict[str, str]


def new_workflow_id() -> str:
    return f"wf-{os.urandom(8).hex()}"


async def create(client: Client, graph: Step | Graph, *, workflow_id: str | None = None, name: str = "",
                 context: dict[str, str] | None = None) -> WorkflowRef:
    """Create every job of `graph`, then let it run (see the module docstring). Validation errors
    (payloads, unknown types, a cycle) raise before anything is written."""
    g = _graph(graph)
    order = g.order()
    if not order:
        raise InvalidWorkflow("the workflow has no steps")
    wf = workflow_id or new_workflow_id()
    from supervisor.producers.client import new_trace_context  # noqa: PLC0415 (client imports this module)

    ctx = context or new_trace_context()
    news = {key: await _prepared(client, wf, key, g.steps[key], ctx) for key in order}
    transport = client.broker.transport
    made: list[tuple[str, str]] = []
    try:
        ids: dict[str, str] = {}
        for key in order:
            ids[key] = await _enqueue_one(client, g.steps[key], news[key])
            made.append((ids[key], g.steps[key].name))
        await asyncio.gather(*(deps.attach(transport, ids[key], g.steps[key].name,
                                           [ids[a] for a in g.steps[key].after]) for key in order))
        await _write_record(client, wf, name, g, ids)
    except BaseException:
        await _abort(client, wf, made)
        raise
    await asyncio.gather(*(deps.open_gate(transport, job_id, type_name) for job_id, type_name in made))
    return WorkflowRef(wf, ids)


async def _prepared(client: Client, wf: str, key: str, step: Step, ctx: dict[str, str]) -> NewJob:
    if step.on_dependency_failure not in deps.ON_DEPENDENCY_FAILURE:
        raise InvalidWorkflow(f"step {key!r}: on_dependency_failure={step.on_dependency_failure!r}: "
                              "use 'cancel' (the default), 'run' or 'wait'")
    options = dict(step.options)
    if given := sorted({"depends_on", "batch"} & options.keys()):  # the graph sets the first, no batch takes a step
        raise InvalidWorkflow(f"step {key!r}: {' and '.join(given)} is not an option of a workflow step: "
                              "a step waits for the steps of its graph (after=, chain, group, chord)")
    allow_unknown = options.pop("allow_unknown", None)
    options.setdefault("idempotency_key", f"wf:{wf}:{key}")
    if step.after:  # the dispatcher reads the results of the steps it waits for (ctx.dependency_results)
        options["context"] = {**options.get("context", ctx), deps.DEPENDENCIES_MARK: "1"}
    options.setdefault("context", ctx)
    try:
        req = EnqueueRequest(step.name, step.payload, **options)
    except TypeError as exc:
        raise InvalidWorkflow(f"step {key!r}: {exc}") from None
    new = await client.prepare(req, allow_unknown)
    new.waits = len(step.after) + 1  # the gate too: nothing runs before the whole graph exists
    new.on_dependency_failure = step.on_dependency_failure
    return new


async def _enqueue_one(client: Client, step: Step, new: NewJob) -> str:
    (done,) = await client.broker.enqueue(step.name, [new])
    if done.outcome in ("new", "existing"):
        return done.id
    raise InvalidWorkflow(f"step {step.key!r} ({step.name}) was refused by its concurrency key's queue policy "
                          f"({done.outcome}: {done.detail}); a workflow's steps must be accepted as given")


async def _write_record(client: Client, wf: str, name: str, g: Graph, ids: dict[str, str]) -> None:
    steps = {k: {"name": s.name, "id": ids[k], "after": s.after} for k, s in g.steps.items()}
    now = int(time.time() * 1000)
    async with client.broker.redis.pipeline(transaction=False) as pipe:
        pipe.hset(workflow_key(wf), mapping={"name": name, "state": "open", "created": now, "steps": dumps(steps)})
        pipe.zadd(WORKFLOW_INDEX, {wf: now})
        pipe.zremrangebyscore(WORKFLOW_INDEX, "-inf", now - RECORD_RETENTION_MS)
        pipe.pexpire(workflow_key(wf), RECORD_RETENTION_MS)
        await pipe.execute()


async def _abort(client: Client, wf: str, made: list[tuple[str, str]]) -> None:
    """Undo a workflow that could not be made whole: its jobs (all still behind their gates) are
    cancelled; what cannot be reached now the janitor cancels later (their gates stay shut)."""
    try:
        for job_id, _name in made:
            await client.cancel(job_id, f"workflow {wf} could not be created", source="client")
    except (SupervisorError, OSError, ConnectionError):
        pass


# --- reading and cancelling -------------------------------------------------------------


async def get(client: Client, workflow_id: str) -> dict[str, Any]:
    """The workflow: id, name, created (ms), state, and its steps with each job's state."""
    raw = cast(dict[str, str], await client.broker.redis.hgetall(workflow_key(workflow_id)))
    if not raw or "steps" not in raw:
        raise WorkflowNotFound("workflow", workflow_id)
    steps: dict[str, dict[str, Any]] = loads(raw["steps"])
    async with client.broker.redis.pipeline(transaction=False) as pipe:
        for step in steps.values():
            pipe.hget(keys.job_key(step["id"]), "state")
        states = await pipe.execute()
    for step, state in zip(steps.values(), states, strict=True):
        step["state"] = state or "trimmed"
    return {"id": workflow_id, "name": raw.get("name", ""), "created": int(raw.get("created") or 0),
            "state": derived_state(raw.get("state", ""), [s["state"] for s in steps.values()]), "steps": steps}


def derived_state(recorded: str, states: list[str]) -> str:
    """running while a job is live; completed when all completed; else cancelled or failed."""
    if any(s in _LIVE for s in states):
        return "running"
    if all(s == State.COMPLETED.value for s in states):
        return "completed"
    return "cancelled" if recorded == "cancelled" else "failed"


async def list_workflows(client: Client, limit: int = 50) -> list[dict[str, Any]]:
    """The newest workflows with their derived state (steps left out)."""
    ids = cast(list[str], await client.broker.redis.zrevrange(WORKFLOW_INDEX, 0, limit - 1))
    out = []
    for wf in ids:
        try:
            doc = await get(client, wf)
        except WorkflowNotFound:
            continue
        counts: dict[str, int] = {}
        for step in doc.pop("steps").values():
            counts[step["state"]] = counts.get(step["state"], 0) + 1
        out.append({**doc, "jobs": counts})
    return out


async def cancel(client: Client, workflow_id: str, reason: str = "workflow cancelled", *,
                 source: str = "client", by: str = "") -> dict[str, str]:
    """Cancel every job of the workflow not finished yet: waiting and pending ones at once,
    running ones asked to stop. What each job's cancel did, by step key."""
    doc = await get(client, workflow_id)
    await client.broker.redis.hset(workflow_key(workflow_id), "state", "cancelled")
    out: dict[str, str] = {}
    for key, step in doc["steps"].items():
        if step["state"] in {s.value for s in FINISHED} or step["state"] == "trimmed":
            out[key] = "finished"
            continue
        try:
            out[key] = await client.cancel(step["id"], reason, source=source, by=by)
        except InvalidTransition as exc:  # it finished meanwhile (a cancelled dependency cancels it too)
            out[key] = exc.state
        except JobNotFound:
            out[key] = "trimmed"
    return out


# --- after an enqueue -----------------------------------------------------------------


async def link(client: Client, req: EnqueueRequest, outcome: SubmitOutcome) -> None:
    """After the enqueue of a job with `depends_on` or `batch`: its dependencies registered and
    its gate opened; its batch told (both idempotent: a repeated enqueue repeats them harmlessly)."""
    await link_many(client, [req], [outcome])


def _linked(outcome: SubmitOutcome) -> bool:
    """Whether an enqueue's job gets its links: a new one (a job that replaced the oldest queued
    one of its key is new), or the one its idempotency key found; not a rejected one, nor one
    folded into another job by its key's queue policy."""
    new = outcome.outcome in ("accepted", "replaced")
    return outcome.job_id is not None and (new or outcome.reason == "idempotency-key")


async def link_many(client: Client, reqs: list[EnqueueRequest], outcomes: list[SubmitOutcome]) -> None:
    """`link` for the jobs of `enqueue_many`: one batch call per 1,000 members."""
    transport = client.broker.transport
    members: dict[str, list[str]] = {}
    for req, outcome in zip(reqs, outcomes, strict=True):
        if not _linked(outcome):
            continue
        job_id = cast(str, outcome.job_id)
        if req.depends_on:
            await deps.attach(transport, job_id, req.name, list(req.depends_on))
            await deps.open_gate(transport, job_id, req.name)
        if req.batch:
            members.setdefault(req.batch, []).append(job_id)
    for batch_id, ids in members.items():
        for start in range(0, len(ids), 1000):
            await add_to_batch(client, batch_id, ids[start:start + 1000])


# --- batches --------------------------------------------------------------------------


@dataclass(frozen=True)
class Callback:
    """A batch callback: a job of `name` enqueued once when the batch is done; its payload is
    `payload` with `batch` (the batch's id and counts) added."""

    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def _callback_spec(cb: Callback | str | None) -> dict[str, Any] | None:
    if cb is None:
        return None
    cb = Callback(cb) if isinstance(cb, str) else cb
    return {"name": cb.name, "payload": cb.payload, "options": cb.options}


async def open_batch(client: Client, *, on_complete: Callback | str | None = None,
                     on_success: Callback | str | None = None, description: str = "",
                     batch_id: str | None = None) -> str:
    """A new open batch; its id (`batch=` of enqueue adds a job to it)."""
    bid = batch_id or f"b-{os.urandom(8).hex()}"
    callbacks = {"on_complete": _callback_spec(on_complete), "on_success": _callback_spec(on_success)}
    await deps.batch_op(client.broker.transport, bid, "open", dumps(callbacks), description)
    now = int(time.time() * 1000)
    await client.broker.redis.zadd(deps.BATCH_INDEX, {bid: now})
    await client.broker.redis.zremrangebyscore(deps.BATCH_INDEX, "-inf", now - RECORD_RETENTION_MS)
    return bid


async def add_to_batch(client: Client, batch_id: str, job_ids: list[str]) -> None:
    reply = await deps.batch_op(client.broker.transport, batch_id, "add", *job_ids)
    if reply[0] == "gone":
        raise WorkflowNotFound("batch", batch_id)
    if reply[0] == "late":
        raise InvalidWorkflow(f"batch {batch_id} is done (its callbacks fired): jobs {job_ids} are not counted in it")


async def close_batch(client: Client, batch_id: str) -> None:
    """No more jobs from the producer; the callbacks fire once every job settled (now, if they have)."""
    reply = await deps.batch_op(client.broker.transport, batch_id, "close")
    if reply[0] == "gone":
        raise WorkflowNotFound("batch", batch_id)
    if reply[0] == "fire":
        await fire(client, batch_id, reply)


async def fire(client: Client, batch_id: str, reply: list[str]) -> None:
    """Enqueue the due callbacks of a batch (idempotency keys `batch:<id>:<which>`), then mark it done."""
    total, completed, failed = int(reply[1]), int(reply[2]), int(reply[3])
    callbacks = loads(reply[4] or "{}")
    info = {"id": batch_id, "total": total, "completed": completed, "failed": failed}
    for which in ("on_complete", "on_success"):
        spec = callbacks.get(which)
        if not spec or (which == "on_success" and failed):
            continue
        options = {**spec.get("options", {}), "idempotency_key": f"batch:{batch_id}:{which}", "allow_unknown": True}
        await client.enqueue(spec["name"], {**spec.get("payload", {}), "batch": info}, **options)
    await deps.batch_op(client.broker.transport, batch_id, "fired", RECORD_RETENTION_MS)


async def batch_status(client: Client, batch_id: str) -> dict[str, Any]:
    """A batch's counts: total, settled, completed, failed, pending (= total - settled), and state."""
    rec = await deps.batch_record(client.broker.transport, batch_id)
    if not rec:
        raise WorkflowNotFound("batch", batch_id)
    total, settled = int(rec.get("total", 0)), int(rec.get("settled", 0))
    return {"id": batch_id, "state": rec.get("state"), "total": total, "settled": settled,
            "completed": int(rec.get("completed", 0)), "failed": int(rec.get("failed", 0)),
            "pending": max(total - settled, 0), "description": rec.get("description", ""),
            "created": int(rec.get("created") or 0), "finished": int(rec.get("finished") or 0),
            "callbacks": await _callbacks(client, batch_id, rec)}


async def _callbacks(client: Client, batch_id: str, rec: dict[str, str]) -> list[dict[str, Any]]:
    """Each callback: which, its type, whether it fired (its job, found by its idempotency key; None
    while the batch is not done; False once done without it: on_success after a failure)."""
    out = []
    for which, spec in loads(rec.get("callbacks") or "{}").items():
        if not spec:
            continue
        job = await client.broker.redis.get(keys.queue_prefix(spec["name"]) + f"idem:batch:{batch_id}:{which}")
        fired = True if job else (False if rec.get("state") == "done" else None)
        out.append({"which": which, "name": spec["name"], "fired": fired, "job": job})
    return out


__all__ = [
    "Callback", "Graph", "Step", "WorkflowRef", "add_to_batch", "batch_status", "cancel", "chain", "chord",
    "close_batch", "create", "dag", "derived_state", "fire", "get", "group", "link", "link_many", "list_workflows",
    "open_batch",
]

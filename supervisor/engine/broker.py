"""Redis I/O for the queue engine: one method per transition script, plus reads.

The broker knows job types only by name and policy numbers handed to it; it
knows nothing of handlers or runners. Every state change goes through one
of the Lua scripts of `supervisor.engine.scripts`, called through a `ScriptTransport`
(`supervisor.engine.transport`: the lean wire, or redis-py for TLS); reads are plain
redis-py commands.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, cast

from supervisor.engine import keys
from supervisor.engine.records import Job, check_text, indexed_job_key, loads, parsed
from supervisor.engine.redis_url import FORMS, mask_url, parse_redis_url
from supervisor.engine.scripts import SCRIPT_NAMES, script_source
from supervisor.engine.states import FINISHED, State
from supervisor.engine.transport import ScriptTransport, replicated_call, transport_for
from supervisor.engine.wire import Script, redis_errors
from supervisor.errors import ConfigError, CorruptRecord, InvalidTransition, JobNotFound, RedisUnsafe, printable

if TYPE_CHECKING:  # redis-py is imported where a connection is made (`connect`): a CLI read needs none
    import redis.asyncio as aioredis


#: The transition scripts, by name, as the transports call them (by SHA).
SCRIPTS = {name: Script(script_source(name)) for name in SCRIPT_NAMES}
ENQUEUE, CLAIM = SCRIPTS["enqueue"], SCRIPTS["claim"]
#: What a failover must not roll back once acknowledged (durability = "replicated"): a job queued, a
#: result or failure recorded, a job handed back or acted on. A claim or a heartbeat rolled back
#: costs a run at most (the old lease is fenced), never a job.
_DURABLE = frozenset(SCRIPTS[n] for n in ("enqueue", "complete", "fail", "release", "cancel", "expire", "revive",
                                          "dismiss"))

#: Output lines kept per job, and how long when the type's retention is unknown.
LOG_LINES = 1000
DEFAULT_LOG_RETENTION_S = 30 * 86_400.0


@dataclass(slots=True)
class NewJob:
    """Arguments of one job to enqueue (the client fills them in)."""

    id: str
    payload_json: str
    priority: int = 0
    delay_ms: int = 0
    deadline_ms: int = 0  # relative to enqueue time; 0 = none
    idempotency_key: str = ""
    context_json: str = "{}"
    parent: str = ""
    concurrency_key: str = ""
    max_active: int = 1
    max_queued: int = 0
    when_full: str = "reject"
    stale_policy: str = "fail-stale"
    # Workflows (supervisor.engine.deps): `waits` (dependencies + 1, the gate) makes it `waiting`.
    waits: int = 0
    on_dependency_failure: str = ""
    batch: str = ""  # a member notifies its batch when it settles

    def args(self, stride: int = 13) -> list[Any]:
        return [self.id, self.payload_json, self.priority, self.delay_ms, self.deadline_ms,
                self.idempotency_key, self.context_json, self.parent, self.concurrency_key,
                self.max_active, self.max_queued, self.when_full, self.stale_policy,
                *((self.waits, self.on_dependency_failure, self.batch) if stride == 16 else ())]

    @property
    def plain(self) -> bool:
        """Nothing but a payload: the enqueue script takes it in its short form."""
        return not (self.priority or self.delay_ms or self.deadline_ms or self.idempotency_key or self.parent
                    or self.concurrency_key or self.waits or self.batch)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What the enqueue script did with one job (see enqueue.lua)."""

    id: str
    outcome: str  # new | existing | rejected | coalesced | replaced
    detail: str


@dataclass(slots=True)
class ClaimedJob:
    """A job this instance now holds under a lease. One per claimed job: not frozen, since a
    frozen dataclass pays an `object.__setattr__` call per field (2 µs here) on creation."""

    id: str
    name: str
    payload_json: str
    attempt: int
    lease: str
    deadline_ms: int | None
    context_json: str
    created_ms: int
    corrupt: str = ""  # what of its record does not parse (the dispatcher fails it: claimed_context)


def claimed_context(job: ClaimedJob) -> dict[str, Any]:
    """The trace context of a claimed job, after checking what of its record the job runs on:
    CorruptRecord (the key named) when job-supervisor did not write it. Cheap: the payload is
    only checked to be text here (the runners parse it, and fail a job whose payload is not JSON)."""
    key = keys.job_key(job.id)
    if job.corrupt:
        raise CorruptRecord(key, job.corrupt)
    parsed(key, "payload", check_text, job.payload_json)
    if not job.context_json:
        return {}
    context = parsed(key, "ctx", loads, job.context_json)
    if not isinstance(context, dict):
        raise CorruptRecord(key, f"field 'ctx': a {type(context).__name__}, not an object")
    return context


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    now_ms: int
    next_due_ms: int | None
    jobs: list[ClaimedJob]


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio Redis client for `url`: any form of `supervisor.engine.redis_url` (one server,
    the master of a Sentinel group, a Redis Cluster).

    No automatic retries: a transition script that timed out may have run, and only the
    caller knows whether running it again is safe (every loop of the daemon retries with
    backoff itself). The socket timeout must exceed the longest blocking wait.
    """
    import redis.asyncio as aioredis  # noqa: PLC0415
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    try:
        target = parse_redis_url(url)
    except ValueError as exc:
        raise ConfigError(f"setting 'redis_url' (env REDIS_URL) = {mask_url(url)!r}: {exc}") from None
    options.setdefault("retry", Retry(NoBackoff(), 0))
    options.setdefault("socket_timeout", 30.0)
    options.setdefault("socket_connect_timeout", 5.0)
    if not url.startswith("unix://"):
        options.setdefault("socket_keepalive", True)
    # A value that is not UTF-8 (foreign or hostile bytes in a key) decodes to lone surrogates
    # instead of failing the read; the record parsers report it (supervisor.engine.records).
    options.setdefault("encoding_errors", "surrogateescape")
    if target.kind != "server":
        from supervisor.engine.topology import connect_target  # noqa: PLC0415

        return connect_target(target, decode_responses=True, **options)
    try:
        return aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **options)
    except ValueError as exc:
        raise ConfigError(
            f"setting 'redis_url' (env REDIS_URL) = {mask_url(url)!r} is not a Redis URL: {exc}. "
            f"Use {FORMS}"
        ) from exc


async def read_job(redis: Any, job_id: str) -> Job:
    """The record of `job_id`: JobNotFound, or CorruptRecord when its key holds something else.

    `redis` is redis-py's asyncio client or a `supervisor.engine.reads.SyncReads` (the CLI's blocking
    reads): this needs only `hgetall`.
    """
    try:
        key = keys.job_key(job_id)
    except ValueError:
        raise JobNotFound(job_id) from None
    try:
        raw = await redis.hgetall(key)
    except redis_errors().ResponseError as exc:  # WRONGTYPE: something else wrote a non-hash there
        raise CorruptRecord(key, str(exc)) from None
    if not raw:
        raise JobNotFound(job_id)
    return Job.from_hash(job_id, raw, key)


class Broker:
    """All the queue engine's Redis operations, over one asyncio client."""

    def __init__(self, client: aioredis.Redis, blocking: aioredis.Redis | None = None) -> None:
        self.redis = client
        self.blocking = blocking or client
        # Transition scripts and blocking waits go through the transport (the lean wire, or
        # redis-py when the wire cannot speak the URL); redis-py serves the reads.
        self.transport: ScriptTransport = transport_for(client, self.blocking)
        self._waiters: dict[str, ScriptTransport] = {}  # one blocking connection per waiting queue
        # Types of `durability = "replicated"`: their enqueues and the transitions that would lose
        # work if a failover rolled them back wait for a replica (WAIT) before they return.
        self.replicated: set[str] = set()
        self.replica_wait_ms = 1000

    async def _call(self, script: Script, name: str, keys_: list[str], args: Sequence[Any]) -> Any:
        """One script call for the type `name`, replicated before it returns when the type is."""
        if name in self.replicated and script in _DURABLE:
            return await replicated_call(self.transport, script, keys_, args, self.replica_wait_ms)
        return await self.transport.evalsha(script, keys_, args)

    async def run_type_script(self, script: str, name: str, args: Sequence[Any]) -> Any:
        """SCRIPTS[script] for the type `name`: ARGV its queue and job prefixes, then `args`."""
        prefix, job_prefix = _prefixes(name)
        # KEYS[1] routes the call to the queue's slot; the script builds its other keys
        # from the same prefix, which carries the same hash tag.
        return await self._call(SCRIPTS[script], name, [prefix + keys.ROUTE], [prefix, job_prefix, *args])

    async def _run_for_job(self, script: str, job_id: str, args: Sequence[Any]) -> Any:
        name = await self.job_type(job_id)
        return await self.run_type_script(script, name, [job_id, *args])

    # --- safety checks ---------------------------------------------------------------

    async def check_server(self) -> list[str]:
        """Refuse a server that evicts keys; return warnings (persistence off)."""
        info = await self.redis.config_get("maxmemory-policy")
        policy = info.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            raise RedisUnsafe(
                f"Redis maxmemory-policy is {policy!r}: Redis would evict job records under memory "
                "pressure and jobs would vanish. Fix: CONFIG SET maxmemory-policy noeviction "
                "(and persist it in redis.conf), or use a dedicated Redis for job-supervisor"
            )
        persistence = await self.redis.config_get("appendonly")
        save = await self.redis.config_get("save")
        warnings = []
        if persistence.get("appendonly") != "yes" and not save.get("save"):
            warnings.append(
                "Redis persistence is off (appendonly no, no RDB save points): a Redis restart "
                "loses every queued job. Enable appendonly yes for durability."
            )
        compact = await self.redis.config_get("hash-max-ziplist-value")  # Redis 7: alias of ...-listpack-value
        limit = int(next(iter(compact.values()), 0) or 0)
        if 0 < limit < 256:
            warnings.append(
                f"Redis hash-max-listpack-value is {limit}: job records with a payload over {limit} B use "
                "Redis's large hash encoding (~1,060 B per queued 100 B job instead of ~690 B). "
                "CONFIG SET hash-max-listpack-value 1024 (and set it in redis.conf) to save ~1/3 of the memory."
            )
        return warnings

    # --- type metadata ---------------------------------------------------------------

    async def publish_type(self, name: str, meta: dict[str, str]) -> None:
        """Publish a type's schema and policy so producers can validate against it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(keys.meta_key(name), mapping=meta)  # type: ignore[arg-type]  # redis-py's key type is invariant
            pipe.sadd(keys.TYPES_KEY, name)
            await pipe.execute()

    async def type_meta(self, name: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(keys.meta_key(name)))

    async def type_names(self) -> list[str]:
        return sorted(cast(set[str], await self.redis.smembers(keys.TYPES_KEY)))

    # --- transitions -----------------------------------------------------------------

    async def enqueue(self, name: str, jobs: Sequence[NewJob]) -> list[Enqueued]:
        """Queue `jobs` of type `name`; says per job what happened (idempotency, key policy)."""
        script_keys, args = enqueue_call(name, jobs)
        return parse_enqueued(await self._call(ENQUEUE, name, script_keys, args))

    async def enqueue_calls(self, calls: Iterable[tuple[str, list[Any]]], *,
                            outcomes: bool = True) -> list[list[Enqueued]]:
        """Queue chunks of jobs, (type name, the enqueue script's ARGV: `enqueue_args`) each, one
        script call a chunk, each sent as soon as it is made: `calls` may be a generator that
        prepares the next chunk while Redis runs the last one. Returns what happened to each job,
        chunk by chunk; `outcomes=False`: the replies are not parsed (an empty list is returned),
        for jobs whose only outcome is 'new' (the script's short form); errors still raise."""
        if self.replicated:  # each chunk acknowledged by a replica before the next is sent
            replies = [await self._call(ENQUEUE, name, [_prefixes(name)[0] + keys.ROUTE], args) for name, args in calls]
        else:
            replies = await self.transport.evalsha_stream(ENQUEUE, ((_prefixes(name)[0] + keys.ROUTE, args)
                                                                   for name, args in calls))
        return [parse_enqueued(raw) for raw in replies] if outcomes else []

    async def claim(self, name: str, instance: str, n: int, ack_wait_ms: int, max_deliver: int,
                    rate: int = 0, period_ms: int = 0) -> ClaimBatch:
        """Take up to `n` ready jobs under a lease (after promoting due ones and reaping lapsed leases).

        With `rate`, at most that many jobs of the type start per `period_ms` across all instances.
        """
        reply = await self.run_type_script("claim", name, [instance, n, ack_wait_ms, max_deliver, rate, period_ms])
        return _claim_batch(name, reply)

    async def wait_then_claim(self, name: str, timeout_s: float, halt_token: str, instance: str, n: int,
                              ack_wait_ms: int, max_deliver: int, rate: int = 0, period_ms: int = 0) -> ClaimBatch:
        """Block until a producer wakes this type's queue or `timeout_s` passes, then claim as
        `claim` does, in one round trip: the claim travels right behind the blocking wait on the
        waiter's connection, so Redis runs it the moment the wait ends. It claims nothing once
        `halt(name, halt_token)` ran (a fetch loop told to stop while it waited).
        """
        prefix, job_prefix = _prefixes(name)
        # It also wakes on the loop's own key, which only `halt` writes (see lua/halt.lua).
        reply = await self._waiter(name).wait_then_evalsha(
            [prefix + "marker", prefix + f"hw:{halt_token}"], max(timeout_s, 0.001), CLAIM, [prefix + keys.ROUTE],
            [prefix, job_prefix, instance, n, ack_wait_ms, max_deliver, rate, period_ms, halt_token])
        return _claim_batch(name, reply)

    async def halt(self, names: Iterable[str], halt_token: str, ttl_ms: int) -> None:
        """Tell the claims a fetch loop sent behind its waits (`wait_then_claim` with
        `halt_token`) to claim nothing, and end those waits: each through a key only the
        loop's own wait blocks on, so another instance idle on the same type keeps waiting."""
        # At once, so the wire pipelines them: a stop halts every served type.
        await asyncio.gather(*(self.run_type_script("halt", name, [halt_token, ttl_ms]) for name in names))

    async def key_status(self, name: str, key: str) -> dict[str, Any]:
        """The state of one concurrency key: active jobs, queued depth, last decision, takeovers."""
        prefix = keys.queue_prefix(name)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(prefix + f"ka:{key}")
            pipe.zcard(prefix + f"kj:{key}")
            pipe.zcard(prefix + f"kw:{key}")
            pipe.hgetall(prefix + f"kstat:{key}")
            pipe.time()
            active_ids, live, waiting, stat, (now_s, now_us) = await pipe.execute()
        now_ms = now_s * 1000 + now_us // 1000
        active = []
        for job_id in sorted(active_ids):
            job = await self.redis.hmget(keys.job_key(job_id), "started", "worker", "deliveries")
            lease = await self.redis.zscore(prefix + "active", job_id)
            active.append({
                "id": job_id, "instance": job[1], "attempt": int(job[2] or 0),
                "running_s": round((now_ms - int(job[0])) / 1000, 3) if job[0] else None,
                "lease_expires_in_s": round((lease - now_ms) / 1000, 3) if lease is not None else None,
            })
        return {
            "type": name, "key": key, "active": active, "queued": int(live) - len(active_ids),
            "waiting_for_slot": int(waiting), "stale_takeovers": int(stat.get("stale_takeovers", 0)),
            "last_decision": stat.get("decision"), "last_reason": stat.get("reason") or None,
            "last_decision_at_ms": int(stat["at"]) if stat.get("at") else None,
        }

    async def complete(self, name: str, items: Sequence[tuple[str, str, str, str]]) -> list[str]:
        """active -> completed for (id, lease, result JSON, progress JSON or '') items; 'ok' or 'fenced:<state>'."""
        outcomes: list[str] = await self.run_type_script("complete", name, [len(items), *_flat(items)])
        return outcomes

    async def fail(
        self, name: str, max_deliver: int, items: Sequence[tuple[str, str, str, str, int, str, str]],
    ) -> list[str]:
        """active -> retry|failed|dead for (id, lease, mode, error, delay_ms, progress JSON or '', traceback
        or '') items."""
        outcomes: list[str] = await self.run_type_script("fail", name, [max_deliver, len(items), *_flat(items)])
        return outcomes

    async def heartbeat(self, name: str, ack_wait_ms: int, items: Sequence[tuple[str, str, str]]) -> list[str]:
        """Extend leases for (id, lease, progress JSON or '') items; 'ok' | 'cancel' | 'lost' each."""
        outcomes: list[str] = await self.run_type_script("heartbeat", name, [ack_wait_ms, len(items), *_flat(items)])
        return outcomes

    async def release(self, name: str, items: Sequence[tuple[str, str]]) -> list[str]:
        """active -> pending for (id, lease) items, without counting the delivery."""
        outcomes: list[str] = await self.run_type_script("release", name, [len(items), *_flat(items)])
        return outcomes

    async def release_instance(self, name: str, instance: str, reason: str) -> list[str]:
        """End now, fenced, the leases a dead `instance` held on jobs of `name`: the next claim
        reaps them as lapsed leases (each a delivery; `reason` is the error their attempt records).
        Returns the ids whose lease ended."""
        ids: list[str] = await self.run_type_script("release_instance", name, [instance, reason])
        return ids

    async def cancel(self, job_id: str, reason: str = "cancelled", lease: str = "", *,
                     source: str = "client", by: str = "") -> str:
        """Cancel a job: 'cancelled' at once, or 'requested' for an active one. Without a lease (a
        producer's or operator's request) the job's history records it with `source` and `by`."""
        result, state = await self._run_for_job("cancel", job_id, [reason, lease, source, by])
        if result == "gone":
            raise JobNotFound(job_id)
        if result == "invalid":
            raise InvalidTransition(job_id, state, "cancel")
        return str(result)

    async def expire(self, job_id: str, lease: str = "") -> str:
        result, _state = await self._run_for_job("expire", job_id, [lease])
        if result == "gone":
            raise JobNotFound(job_id)
        return str(result)

    async def revive(self, job_id: str, action: str, *, source: str = "client", by: str = "") -> None:
        """Operator `retry` (failed -> pending) or `replay` (dead -> pending), recorded in the
        job's history with `source` (cli | api | client) and `by` (the API token's name)."""
        expected, event = {"retry": ("failed", "retried"), "replay": ("dead", "replayed")}[action]
        result, state = await self._run_for_job("revive", job_id, [expected, event, source, by])
        if result == "gone":
            raise JobNotFound(job_id)
        if result == "invalid":
            raise InvalidTransition(job_id, state, action)

    async def dismiss(self, job_id: str, *, source: str = "client", by: str = "") -> None:
        """Operator `dismiss` (dead -> dismissed), recorded in the job's history like `revive`."""
        result, state = await self._run_for_job("dismiss", job_id, [source, by])
        if result == "gone":
            raise JobNotFound(job_id)
        if result == "invalid":
            raise InvalidTransition(job_id, state, "dismiss")

    async def append_logs(self, lines: dict[str, list[str]], retention_s: dict[str, float]) -> None:
        """Append output lines to jobs' logs (each capped to its last LOG_LINES lines)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, batch in lines.items():
                key = keys.log_key(job_id)
                pipe.rpush(key, *batch)
                pipe.ltrim(key, -LOG_LINES, -1)
                pipe.pexpire(key, int(retention_s.get(job_id, DEFAULT_LOG_RETENTION_S) * 1000))
            await pipe.execute()

    async def logs(self, job_id: str, last: int = LOG_LINES) -> list[str]:
        """A job's output lines, oldest first."""
        try:
            key = keys.log_key(job_id)
        except ValueError:
            raise JobNotFound(job_id) from None
        try:
            lines = cast(list[str], await self.redis.lrange(key, -last, -1))
        except redis_errors().ResponseError as exc:  # WRONGTYPE: something else wrote a non-list there
            raise CorruptRecord(key, str(exc)) from None
        return [printable(line) for line in lines]  # bytes that were not UTF-8, escaped

    # --- waiting ---------------------------------------------------------------------

    async def wait_for_work(self, name: str, timeout_s: float) -> bool:
        """Block until a producer wakes this type's queue or `timeout_s` passes."""
        return await self._waiter(name).wait(keys.index_key(name, "marker"), max(timeout_s, 0.001))

    def _waiter(self, name: str) -> ScriptTransport:
        """The transport this type's blocking waits use (one per waiting queue)."""
        waiter = self._waiters.get(name)
        if waiter is None:
            waiter = self._waiters[name] = self.transport.blocking()
        return waiter

    # --- reads -----------------------------------------------------------------------

    async def job_type(self, job_id: str) -> str:
        try:
            key = keys.job_key(job_id)
        except ValueError:
            raise JobNotFound(job_id) from None
        try:
            name = await self.redis.hget(key, "name")
        except redis_errors().ResponseError as exc:  # WRONGTYPE: something else wrote a non-hash there
            raise CorruptRecord(key, str(exc)) from None
        if name is None:
            raise JobNotFound(job_id)
        # A job's id starts with its type's tag: a name that does not hash to it is forged.
        try:
            forged = keys.tag_for(name) != keys.tag_from_id(job_id)
        except UnicodeError:  # bytes that were not UTF-8
            forged = True
        if forged:
            raise CorruptRecord(key, f"field 'name': {name!r} is not the type of job {job_id}")
        return str(name)

    async def get(self, job_id: str) -> Job:
        return await read_job(self.redis, job_id)

    async def get_many(self, job_ids: Iterable[str], corrupt: list[CorruptRecord] | None = None) -> list[Job]:
        """Records of `job_ids` that still exist, in order (trimmed ones are skipped). A listing
        never fails for one bad record: ids that are not job ids and records that do not parse
        are skipped too, each reported in `corrupt` when given."""
        ids, job_keys, bad = [], [], corrupt if corrupt is not None else []
        for job_id in job_ids:
            if (key := indexed_job_key(job_id, bad)) is not None:
                job_keys.append(key)
                ids.append(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in job_keys:
                pipe.hgetall(key)
            rows = await pipe.execute(raise_on_error=False)
        jobs, reply_error = [], redis_errors().ResponseError
        for job_id, key, row in zip(ids, job_keys, rows, strict=True):
            if isinstance(row, reply_error):
                bad.append(CorruptRecord(key, str(row)))
            elif row:
                try:
                    jobs.append(Job.from_hash(job_id, row, key))
                except CorruptRecord as exc:
                    bad.append(exc)
        return jobs

    async def list_ids(self, name: str, state: State | None, limit: int) -> list[str]:
        """Ids of one type's jobs in `state` (all states when None), newest index entries first."""
        states = [state] if state else list(State)
        ids: list[str] = []
        for st in states:
            if st in FINISHED:
                ids += cast(list[str], await self.redis.zrevrange(keys.index_key(name, f"st:{st.value}"), 0, limit - 1))
            elif st in (State.ACTIVE, State.WAITING):  # each has an index of its own
                ids += cast(list[str], await self.redis.zrange(keys.index_key(name, st.value), 0, limit - 1))
            else:  # pending and retry share the ready and scheduled sets; the record tells them apart
                for part in ("ready", "sched"):
                    ids += cast(list[str], await self.redis.zrange(keys.index_key(name, part), 0, limit - 1))
        return ids

    async def counts(self, name: str) -> dict[str, int]:
        """Index sizes of one type: waiting (on dependencies), ready, scheduled, active and each finished state."""
        parts = ["waiting", "ready", "sched", "active", *(f"st:{s.value}" for s in State if s in FINISHED)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for part in parts:
                pipe.zcard(keys.index_key(name, part))
            sizes = await pipe.execute()
        return {p.removeprefix("st:"): int(n) for p, n in zip(parts, sizes, strict=True)}

    async def close(self) -> None:
        await self.transport.close()
        for waiter in self._waiters.values():
            await waiter.close()
        await self.redis.aclose()
        if self.blocking is not self.redis:
            await self.blocking.aclose()


_PREFIXES: dict[str, tuple[str, str]] = {}


def _claim_batch(name: str, reply: list[Any]) -> ClaimBatch:
    """The claim script's reply as a ClaimBatch."""
    now, next_due, flat = reply
    jobs = []
    for i in range(0, len(flat), 7):
        job = ClaimedJob(id=flat[i], name=name, payload_json=flat[i + 1], attempt=int(flat[i + 2]),
                         lease=str(flat[i + 3]), deadline_ms=None, context_json=flat[i + 5] or "{}", created_ms=0)
        try:  # a claimed job is never dropped: one whose record does not parse is failed (claimed_context)
            job.deadline_ms = int(flat[i + 4]) if flat[i + 4] else None
            job.created_ms = int(flat[i + 6] or 0)
        except ValueError as exc:
            job.corrupt = f"field 'deadline' or 'created': {exc}"
        jobs.append(job)
    return ClaimBatch(int(now), int(next_due) if int(next_due) >= 0 else None, jobs)


def _prefixes(name: str) -> tuple[str, str]:
    """(queue prefix, job-record prefix) of a type, memoized: they are on every script call."""
    got = _PREFIXES.get(name)
    if got is None:
        if len(_PREFIXES) > 10_000:
            _PREFIXES.clear()
        got = _PREFIXES[name] = (keys.queue_prefix(name), keys.job_prefix(name))
    return got


def enqueue_args(name: str, jobs: Sequence[NewJob]) -> list[Any]:
    """The enqueue script's ARGV for `jobs` of type `name`: its short form when every job is plain."""
    prefix, job_prefix = _prefixes(name)
    if all(j.plain for j in jobs):
        args: list[Any] = [prefix, job_prefix, name, len(jobs), 3]
        for j in jobs:
            args += (j.id, j.payload_json, j.context_json)
        return args
    stride = 16 if any(j.waits or j.batch for j in jobs) else 13  # 16: jobs of workflows and batches
    args = [prefix, job_prefix, name, len(jobs), stride]
    for j in jobs:
        args += j.args(stride)
    return args


def enqueue_call(name: str, jobs: Sequence[NewJob]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of the enqueue script for `jobs` of type `name` (for any transport)."""
    return [_prefixes(name)[0] + keys.ROUTE], enqueue_args(name, jobs)


def parse_enqueued(raw: list[str]) -> list[Enqueued]:
    return [Enqueued(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]


def _flat(items: Iterable[Sequence[Any]]) -> list[Any]:
    return [v for item in items for v in item]


# One reusable C encoder (compact, ASCII, default=str): `json.dumps` and `JSONEncoder.encode`
# make a new one per call, half the cost of encoding a small value. It keeps no table of the
# containers it is in (check_circular), so a value that contains itself ends in RecursionError,
# reported as the ValueError `json.dumps` would raise.
_ENCODE = (c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False, False, True)
           if c_make_encoder is not None else None)
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def dumps(value: Any) -> str:
    """Compact JSON (the only serialization job-supervisor uses).

    Raises TypeError/ValueError for what JSON cannot hold, ValueError for a value that contains
    itself (or nests too deep).
    """
    if _ENCODE is None:
        return _ENCODER.encode(value)
    try:
        return "".join(_ENCODE(value, 0))
    except RecursionError:
        raise ValueError("it contains itself, or nests too deep") from None

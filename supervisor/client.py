"""Producers: `Client` (asyncio) and `SyncClient` enqueue, inspect, wait for and cancel jobs.

Enqueue validates the payload against the schema that running instances
published for the type (or against a local `Registry`, inside the daemon),
and refuses a type no live instance serves unless `allow_unknown=True` (see
`supervisor.serving`; a type that stops being served is refused within 5 s).
Every job gets a request id and a W3C trace context at enqueue.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from supervisor import keys, telemetry
from supervisor.broker import SCRIPTS, Broker, Enqueued, NewJob, connect, dumps, enqueue_call, parse_enqueued
from supervisor.errors import (
    CorruptRecord,
    InvalidPayload,
    JobFailed,
    JobRejected,
    SupervisorError,
    WaitTimeout,
)
from supervisor.flow import KeyConcurrency, QueuePolicy, SubmitOutcome, derive_key
from supervisor.policy import PublishedType
from supervisor.records import Job
from supervisor.serving import Serving, type_state, type_state_sync
from supervisor.states import State
from supervisor.telemetry import Tracing
from supervisor.log import LazyLogger
from supervisor.wire import DEFAULT_SPIN_US, PackedCall, SyncWire, WireParams, params_of, redis_errors

if TYPE_CHECKING:  # the daemon passes its Registry; a CLI command never loads handler code
    import redis.asyncio as aioredis

    from supervisor.registry import Registry

T = TypeVar("T")
_log = LazyLogger(__name__)
_META_TTL_S = 5.0
_ENQUEUE = SCRIPTS["enqueue"]
_CHUNK = 200  # jobs per enqueue script call in enqueue_many


@dataclass(frozen=True, slots=True)
class JobRef:
    """A queued job: its id and type; `existing` when an idempotency key matched an earlier job."""

    id: str
    name: str
    existing: bool = False


@dataclass(slots=True)
class EnqueueRequest:
    """One job for `enqueue_many`. A plain record, not frozen: a frozen dataclass pays a
    `object.__setattr__` call per field on creation, 2 µs of a bulk enqueue's ~20 per job."""

    name: str
    payload: Any = None
    delay: float | None = None
    run_at: datetime | None = None
    priority: int | None = None
    idempotency_key: str | None = None
    deadline: float | None = None
    context: dict[str, str] | None = None
    parent: str | None = None
    concurrency_key: str | None = None


def new_trace_context(request_id: str | None = None) -> dict[str, str]:
    """A fresh request id and W3C trace context (trace id, traceparent)."""
    trace_id = secrets.token_hex(16)
    return {
        "request_id": request_id or secrets.token_hex(8),
        "trace_id": trace_id,
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }


class _TypeInfo:
    """A view of a type's published policy for the enqueue paths: the fields they read per job,
    derived once per read of the metadata (`PublishedType.read`, at most every 5 s)."""

    __slots__ = ("validator", "priority", "deadline_ms", "fetched", "key_concurrency", "queue", "plain",
                 "serving", "served", "policy")

    def __init__(self, name: str, meta: dict[str, str], serving: Serving) -> None:
        published = PublishedType.read(name, meta)
        policy = self.policy = published.policy
        self.validator = None
        if published.schema:  # jsonschema is loaded only once a type has a schema (keeps CLI start-up light)
            from supervisor.validation import compile_schema  # noqa: PLC0415

            # once per read of the metadata; formats unless a pydantic model judges them (PayloadModel)
            self.validator = compile_schema(published.schema, formats=published.check_formats)
        self.priority = policy.priority or 0
        self.deadline_ms = int(policy.deadline * 1000) if policy.deadline else 0
        self.key_concurrency, self.queue = policy.key_concurrency, policy.queue
        # No default that needs the script's long form: a job without options is a plain one.
        self.plain = not self.priority and not self.deadline_ms and self.key_concurrency is None
        self.serving = serving
        self.served = serving.served  # a live instance serves it (else refused unless allow_unknown)
        self.fetched = time.monotonic()


class _TypeCache:
    """Published type metadata and who serves it, per type name, re-read at most every 5 s
    (with the metadata, in the same script call: `supervisor.serving.type_state`); so is the
    absence of metadata (an enqueue with `allow_unknown` of a type no daemon published yet).
    So a type whose last instance stopped serving it is refused at most 5 s later."""

    __slots__ = ("_types", "_listed", "_absent", "_tracing")

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing  # with tracing on no job takes the plain path (a span to open)
        self._types: dict[str, _TypeInfo] = {}
        self._listed: set[str] = set()
        # type name -> (when it was found unpublished, who served it: the refusal names them)
        self._absent: dict[str, tuple[float, Serving]] = {}

    def cached(self, name: str, allowed: bool) -> tuple[bool, _TypeInfo | None]:
        """(True, what validates `name`) when a read under 5 s old answers it: its metadata, or
        None for a type found unpublished; UnknownJobType unless `allowed` for a type no live
        instance serves; (False, None) when Redis must be read."""
        now = time.monotonic()
        info = self._types.get(name)
        if info is not None and now - info.fetched < _META_TTL_S:
            self.admit(name, info, info.serving, allowed)
            return True, info
        absent = self._absent.get(name)
        if absent is not None and now - absent[0] < _META_TTL_S:
            self.admit(name, None, absent[1], allowed)  # raises unless allowed (listed already)
            return True, None
        return False, None

    def plain(self, name: str, allowed: bool) -> _TypeInfo | None:
        """The type when a job of it without options may take the plain fast path: published,
        served (or `allowed`), cached, no default priority, deadline or key policy, and tracing
        off (no span to open)."""
        cached = self._types.get(name)
        if (cached is None or not cached.plain or not (cached.served or allowed)
                or time.monotonic() - cached.fetched >= _META_TTL_S or self._tracing.tracer() is not None):
            return None
        return cached

    def store(self, name: str, meta: dict[str, str], serving: Serving) -> _TypeInfo | None:
        if not meta:
            self._types.pop(name, None)
            if len(self._absent) > 10_000:
                self._absent.clear()
            self._absent[name] = (time.monotonic(), serving)
            return None
        self._absent.pop(name, None)
        try:
            info = self._types[name] = _TypeInfo(name, meta, serving)
        except Exception as exc:  # noqa: BLE001 (metadata another program wrote: whatever its parse raises)
            raise CorruptRecord(keys.meta_key(name), f"{type(exc).__name__}: {exc}") from None
        return info

    def admit(self, name: str, info: _TypeInfo | None, serving: Serving, allowed: bool) -> bool:
        """A type no live instance serves raises UnknownJobType (naming who served it last and
        any load error) unless allowed; True when an unpublished type needs listing."""
        if info is not None and info.served:
            return False
        if not allowed:
            raise serving.refusal(name)
        if info is not None or name in self._listed:
            return False
        self._listed.add(name)
        return True


class Client:
    """Asyncio producer and inspector of jobs.

    Args:
        redis: a Redis URL or an existing `redis.asyncio.Redis` client.
        registry: the daemon's own registry (validates locally, no Redis read).
        allow_unknown: queue jobs of types no live instance serves (they wait for one).
        tracing: where producer spans go (default: the process's own OpenTelemetry tracer
            provider, if it has one; `Tracing()` records none).
    """

    def __init__(
        self, redis: str | aioredis.Redis, *, registry: Registry | None = None, allow_unknown: bool = False,
        tracing: Tracing | None = None,
    ) -> None:
        self._owns = isinstance(redis, str)
        client = connect(redis) if isinstance(redis, str) else redis
        self.broker = Broker(client)
        self.registry = registry
        self.allow_unknown = allow_unknown
        self.tracing = Tracing.from_process() if tracing is None else tracing
        self._types = _TypeCache(self.tracing)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns:
            await self.broker.close()

    # --- enqueue ---------------------------------------------------------------------

    async def _resolve(self, name: str, allow_unknown: bool | None) -> Any:
        """What validates a job of `name`: the local JobType, the published _TypeInfo, or None
        (unknown type, allowed); raises UnknownJobType. Reads Redis at most every 5 s per type."""
        local = self.registry.get(name) if self.registry else None
        if local is not None:
            return local
        allowed = self.allow_unknown if allow_unknown is None else allow_unknown
        known, info = self._types.cached(name, allowed)
        if known:
            return info
        meta, serving = await type_state(self.broker.redis, name, self.broker.wire)
        info = self._types.store(name, meta, serving)
        if self._types.admit(name, info, serving, allowed):
            await self.broker.redis.sadd(keys.TYPES_KEY, name)  # so listings and the janitor see its jobs
        return info

    def _plain(self, name: str, allow_unknown: bool | None) -> _TypeInfo | None:
        """The published type of `name` when a job without options takes the plain fast path."""
        if self.registry is not None and name in self.registry:  # the daemon's own type validates locally
            return None
        return self._types.plain(name, self.allow_unknown if allow_unknown is None else allow_unknown)

    def _plain_one(self, name: str, payload: Any, allow_unknown: bool | None) -> tuple[str, bytes] | None:
        """A job without options, when it takes the plain fast path: its id and packed call."""
        if self.broker.wire is None or (info := self._plain(name, allow_unknown)) is None:
            return None
        return _plain_job(name, payload, info)

    async def _prepare(self, req: EnqueueRequest, allow_unknown: bool | None, span: Any = None) -> NewJob:
        return build_job(req, await self._resolve(req.name, allow_unknown), span)

    async def enqueue(
        self,
        name: str,
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        deadline: float | None = None,
        context: dict[str, str] | None = None,
        parent: str | None = None,
        allow_unknown: bool | None = None,
        concurrency_key: str | None = None,
    ) -> JobRef:
        """Queue one job; raises InvalidPayload or UnknownJobType instead of queueing a bad one.

        Args:
            name: the job type.
            payload: JSON-ready value or pydantic model ({} when None).
            delay: seconds before it may run; `run_at`: a datetime before which it won't.
            priority: higher runs first (default: the type's).
            idempotency_key: a second enqueue with the same key returns the first job.
            deadline: seconds from now after which the job expires if not completed.
            context: request id / trace context to carry (a fresh one by default).
            concurrency_key: a key for keyed concurrency (default: derived from the type's
                `key_concurrency` policy, if it has one).

        Raises JobRejected when the key's queue policy refuses the job; a coalesced job
        returns the job it folded into (`existing=True`).
        """
        if (not (delay or run_at or priority or idempotency_key or deadline or context or parent or concurrency_key)
                and (plain := self._plain_one(name, payload, allow_unknown)) is not None):  # the hot path
            await self.broker.wire.evalsha_packed(_ENQUEUE, plain[1])  # type: ignore[union-attr]
            return JobRef(plain[0], name)
        outcome = await self.submit(name, payload, delay=delay, run_at=run_at, priority=priority,
                                    idempotency_key=idempotency_key, deadline=deadline, context=context,
                                    parent=parent, allow_unknown=allow_unknown, concurrency_key=concurrency_key)
        return _ref_or_raise(outcome)

    async def submit(self, name: str, payload: Any = None, **options: Any) -> SubmitOutcome:
        """Like `enqueue`, but returns the admission outcome instead of raising on rejection:
        accepted / rejected / coalesced / replaced, with the key and the existing job."""
        allow_unknown = options.pop("allow_unknown", None)
        if _no_options(options) and (plain := self._plain_one(name, payload, allow_unknown)) is not None:
            await self.broker.wire.evalsha_packed(_ENQUEUE, plain[1])  # type: ignore[union-attr]
            return SubmitOutcome("accepted", plain[0], name)
        req = EnqueueRequest(name, payload, **options)
        with _EnqueueSpan(self.tracing, name, req.context) as tracked:
            new = await self._prepare(req, allow_unknown, tracked.span)
            (done,) = await self.broker.enqueue(name, [new])
            return tracked.done(_outcome(name, new, done))

    async def key_status(self, name: str, key: str) -> dict[str, Any]:
        """Active jobs of a concurrency key, queued depth, stale takeovers, last decision."""
        return await self.broker.key_status(name, key)

    async def enqueue_many(
        self, requests: Iterable[EnqueueRequest | tuple[str, Any]], *, allow_unknown: bool | None = None,
    ) -> list[JobRef]:
        """Queue many jobs in one pipelined round trip (all validated before any is queued)."""
        reqs = [r if isinstance(r, EnqueueRequest) else EnqueueRequest(r[0], r[1]) for r in requests]
        kinds = {name: await self._resolve(name, allow_unknown) for name in dict.fromkeys(r.name for r in reqs)}
        if (self.broker.wire is not None and self.tracing.tracer() is None
                and all(isinstance(k, _TypeInfo) and k.plain for k in kinds.values())
                and all(_plain_request(r) for r in reqs)):
            return await self._enqueue_plain(reqs, kinds)
        checked = [_checked(r, kinds[r.name]) for r in reqs]  # every job validated before any is queued
        # telemetry: one producer span per job when tracing is on (None: off, nothing allocated)
        spans = [self.tracing.start_enqueue_span(r.name, r.context) for r in reqs] if self.tracing.enabled() else None
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(reqs):
            groups.setdefault(req.name, []).append(i)
        chunks = [(name, idxs[start:start + _CHUNK]) for name, idxs in groups.items()
                  for start in range(0, len(idxs), _CHUNK)]
        prepared: list[NewJob] = [None] * len(reqs)  # type: ignore[list-item]

        def made() -> Iterator[tuple[str, list[NewJob]]]:
            # Each chunk is made while Redis runs the one before it.
            for name, part in chunks:
                for i in part:
                    prepared[i] = _new_job(reqs[i], checked[i], spans[i] if spans else None)
                yield name, [prepared[i] for i in part]

        try:
            replies = await self.broker.enqueue_stream(made())
        except BaseException as exc:
            for sp in spans or ():
                if sp is not None:
                    telemetry.end_enqueue_span(sp, error=exc)
            raise
        outcomes: list[SubmitOutcome | None] = [None] * len(reqs)
        for (name, part), done_list in zip(chunks, replies, strict=True):
            for done, i in zip(done_list, part, strict=True):
                outcomes[i] = _outcome(name, prepared[i], done)
        for sp, o in zip(spans or (), outcomes, strict=False):
            if sp is not None and o is not None:
                telemetry.end_enqueue_span(sp, o.job_id, o.outcome)
        # Every job was offered; a rejected one raises after the others were queued.
        return [_ref_or_raise(o) for o in outcomes if o is not None]

    async def _enqueue_plain(self, reqs: list[EnqueueRequest], kinds: dict[str, Any]) -> list[JobRef]:
        """`enqueue_many` of jobs without options, of published types without defaults: the
        script's short form, built straight from the payloads (no per-job objects)."""
        payloads = []
        checked = any(k.validator is not None for k in kinds.values())
        for r in reqs:  # every job validated before any is queued
            value = _payload_value(r.payload)
            if checked:
                _schema_check(r.name, kinds[r.name], value)
            payloads.append(_payload_json(r.name, value))
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(reqs):
            groups.setdefault(req.name, []).append(i)
        ids: list[str] = [""] * len(reqs)

        # The caller's trace, looked up once: every job of the batch continues it or none does.
        context_json = telemetry.fresh_job_context_json if telemetry.in_caller_trace() else \
            telemetry.new_job_context_json

        def made() -> Iterator[tuple[str, list[Any]]]:
            # Each chunk is made while Redis runs the one before it.
            for name, idxs in groups.items():
                prefix, job_prefix = keys.queue_prefix(name), keys.job_prefix(name)
                for start in range(0, len(idxs), _CHUNK):
                    part = idxs[start:start + _CHUNK]
                    bits = os.urandom(40 * len(part)).hex()  # per job: 16 hex of id, 64 of trace ids
                    args: list[Any] = [prefix, job_prefix, name, len(part), 3]
                    for k, i in enumerate(part):
                        drawn = bits[80 * k:80 * k + 80]
                        ids[i] = job_id = keys.new_job_id(name, drawn[:16])
                        args += (job_id, payloads[i], context_json(drawn[16:]))
                    yield name, args

        await self.broker.enqueue_calls(made(), outcomes=False)  # plain jobs: every outcome is 'new'
        return [JobRef(job_id, r.name) for job_id, r in zip(ids, reqs, strict=True)]

    # --- inspect and control ---------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The job's record (JobNotFound when it never existed or was trimmed)."""
        return await self.broker.get(job_id)

    async def list(self, name: str | None = None, state: State | str | None = None, limit: int = 100) -> list[Job]:
        """Jobs of one type (or of every published type), optionally in one state, newest first."""
        st = State(state) if state else None
        names = [name] if name else await self.broker.type_names()
        ids: list[str] = []
        for n in names:
            ids += await self.broker.list_ids(n, st, limit)
        corrupt: list[CorruptRecord] = []
        jobs = [j for j in await self.broker.get_many(dict.fromkeys(ids), corrupt) if st is None or j.state == st]
        for exc in corrupt:  # one bad record does not fail the listing; each is named
            _log.warning("record.corrupt", code=exc.code, key=exc.key, error=exc.detail)
        jobs.sort(key=lambda j: j.created or datetime.min.replace(tzinfo=UTC), reverse=True)
        return jobs[:limit]

    async def logs(self, job_id: str, last: int = 1000) -> list[str]:
        """The job's output lines (a task's stdout/stderr), oldest first, capped at the last 1000."""
        return await self.broker.logs(job_id, last)

    # The operator actions below are recorded in the job's history with `source` (who acted:
    # cli, api or client) and `by` (the API token's name, when the API had one).

    async def cancel(self, job_id: str, reason: str = "cancelled by request", *,
                     source: str = "client", by: str = "") -> str:
        """Cancel: 'cancelled' at once for pending/retry jobs, 'requested' for an active one."""
        return await self.broker.cancel(job_id, reason, source=source, by=by)

    async def retry(self, job_id: str, *, source: str = "client", by: str = "") -> None:
        """failed -> pending (attempt numbers keep counting; max_deliver starts afresh)."""
        await self.broker.revive(job_id, "retry", source=source, by=by)

    async def replay(self, job_id: str, *, source: str = "client", by: str = "") -> None:
        """dead -> pending (attempt numbers keep counting; max_deliver starts afresh)."""
        await self.broker.revive(job_id, "replay", source=source, by=by)

    async def dismiss(self, job_id: str, *, source: str = "client", by: str = "") -> None:
        """dead -> dismissed."""
        await self.broker.dismiss(job_id, source=source, by=by)

    async def wait(self, job_id: str, timeout: float | None = None, *, raise_on_failure: bool = False) -> Job:
        """Wait until the job is finished (completed, failed, dead, cancelled, expired, dismissed).

        Blocks on the type's event stream, so it reacts within milliseconds without polling.
        Raises WaitTimeout after `timeout` seconds, JobFailed when asked and the job did not complete.
        """
        name = await self.broker.job_type(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = keys.events_key(name)
        try:
            last = await self.broker.redis.xrevrange(stream, count=1)
        except redis_errors().ResponseError as exc:  # WRONGTYPE: something else wrote a non-stream there
            raise CorruptRecord(stream, str(exc)) from None
        last_id = last[0][0] if last else "0-0"
        while True:
            job = await self.broker.get(job_id)
            if job.finished_running:
                if raise_on_failure and job.state is not State.COMPLETED:
                    raise JobFailed(job)
                return job
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {job_id} is still {job.state} after {timeout:g}s")
            rows = await self.broker.redis.xread({stream: last_id}, count=1000, block=max(int(min(left, 1.0) * 1000), 1))
            for _stream, entries in rows:
                if entries:
                    last_id = entries[-1][0]


_DEFAULT_KEY_POLICY = KeyConcurrency(key=["-"])  # SPEC defaults for an enqueue-time key
_DEFAULT_QUEUE = QueuePolicy()


def build_job(req: EnqueueRequest, kind: Any, span: Any = None) -> NewJob:
    """Validate one request against its type (`kind`: a local JobType, a published _TypeInfo,
    or None for an allowed unknown type) and give it an id and a trace context. No I/O."""
    return _new_job(req, _checked(req, kind), span)


@dataclass(slots=True)
class _Checked:
    """A request that passed validation, with its type's defaults applied."""

    payload_json: str
    priority: int
    deadline_ms: int
    delay_ms: int
    ckey: str
    key_policy: KeyConcurrency
    queue: QueuePolicy


def _payload_value(payload: Any) -> Any:
    """What is validated and sent: {} for None, a pydantic model's JSON-mode dump."""
    if payload is None:
        return {}
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return payload


def _schema_check(name: str, info: _TypeInfo, payload: Any) -> None:
    """Raises InvalidPayload when the payload breaks the schema an instance published."""
    if info.validator is not None:
        from supervisor.validation import check_payload  # noqa: PLC0415 (loaded with the validator)

        check_payload(name, info.validator, payload)


def _payload_json(name: str, payload: Any) -> str:
    """The payload as JSON text (a str payload must be JSON text already)."""
    try:
        return _checked_json(payload) if isinstance(payload, str) else dumps(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(name, f"payload is not JSON: {exc}") from None


def _checked(req: EnqueueRequest, kind: Any) -> _Checked:
    """Raises InvalidPayload for a request its type refuses (schema, priority, not JSON)."""
    payload = _payload_value(req.payload)
    priority, deadline_ms = req.priority, int(req.deadline * 1000) if req.deadline else 0
    key_policy: KeyConcurrency | None = None
    queue: QueuePolicy | None = None
    if isinstance(kind, _TypeInfo):
        _schema_check(req.name, kind, payload)
        if priority is None:
            priority = kind.priority
        deadline_ms = deadline_ms or kind.deadline_ms
        key_policy, queue = kind.key_concurrency, kind.queue
    elif kind is not None:  # the daemon's own JobType
        payload = kind.payload.check(payload)
        if priority is None:
            priority = kind.options.priority
        if not deadline_ms and kind.options.deadline:
            deadline_ms = int(kind.options.deadline * 1000)
        key_policy, queue = kind.options.key_concurrency, kind.options.queue
    priority = priority or 0
    if not -4000 <= priority <= 4000:
        raise InvalidPayload(req.name, f"priority {priority} is outside -4000..4000")
    payload_json = _payload_json(req.name, payload)
    ckey = req.concurrency_key or ""
    if not ckey and key_policy is not None:
        ckey = derive_key(req.name, key_policy, payload)
    delay = req.delay or 0.0
    if req.run_at is not None:
        at = req.run_at if req.run_at.tzinfo else req.run_at.replace(tzinfo=UTC)
        delay = max(delay, (at - datetime.now(UTC)).total_seconds())
    return _Checked(payload_json, priority, deadline_ms, max(int(delay * 1000), 0), ckey,
                    key_policy or _DEFAULT_KEY_POLICY, queue or _DEFAULT_QUEUE)


def _new_job(req: EnqueueRequest, c: _Checked, span: Any) -> NewJob:
    """The job to queue: a fresh id and trace context (the enqueue span's when tracing)."""
    return NewJob(
        id=keys.new_job_id(req.name), payload_json=c.payload_json, priority=c.priority, delay_ms=c.delay_ms,
        deadline_ms=c.deadline_ms, idempotency_key=req.idempotency_key or "",
        context_json=(dumps(telemetry.job_context(req.context, span)) if req.context or span is not None
                      else telemetry.fresh_job_context_json()),
        parent=req.parent or "", concurrency_key=c.ckey, max_active=c.key_policy.max_active,
        max_queued=c.queue.max_queued_per_key, when_full=c.queue.when_full, stale_policy=c.key_policy.stale_policy,
    )


_PLAIN_CALLS: dict[str, PackedCall] = {}


def _plain_call(name: str) -> PackedCall:
    """The enqueue script's call for one plain job of `name` (the short form: id, payload, ctx follow)."""
    call = _PLAIN_CALLS.get(name)
    if call is None:
        if len(_PLAIN_CALLS) > 10_000:
            _PLAIN_CALLS.clear()
        prefix = keys.queue_prefix(name)
        call = _PLAIN_CALLS[name] = PackedCall(
            _ENQUEUE, [prefix + "ready"], [prefix, keys.job_prefix(name), name, 1, 3], tail=3)
    return call


_OPTION_NAMES = frozenset(EnqueueRequest.__dataclass_fields__) - {"name", "payload"}


def _no_options(options: dict[str, Any]) -> bool:
    """`submit`'s keyword options set nothing (none given, or all None/0/empty)."""
    return not any(options.values()) and options.keys() <= _OPTION_NAMES


def _plain_request(r: EnqueueRequest) -> bool:
    """No option set: the job takes its type's defaults."""
    return not (r.delay or r.run_at is not None or r.priority or r.idempotency_key or r.deadline or r.context
                or r.parent or r.concurrency_key)


def _plain_job(name: str, payload: Any, info: _TypeInfo) -> tuple[str, bytes]:
    """A job without options of a plain type: its id and packed enqueue call. The hot path of
    one-at-a-time enqueue: the same checks as `build_job`, none of its objects. No I/O."""
    value = _payload_value(payload)
    _schema_check(name, info, value)
    bits = os.urandom(40).hex()  # one draw: the job id's 16 hex digits, then its trace context's 64
    job_id = keys.new_job_id(name, bits[:16])
    context_json = telemetry.fresh_job_context_json(bits[16:])
    return job_id, _plain_call(name).pack(job_id, _payload_json(name, value), context_json)


class _EnqueueSpan:
    """The producer span of one enqueue (`span` is None when tracing is off), ended with the
    enqueue's outcome (`done`) or with the error that left the block."""

    __slots__ = ("span",)

    def __init__(self, tracing: Tracing, name: str, context: dict[str, str] | None) -> None:
        self.span = tracing.start_enqueue_span(name, context)

    def __enter__(self) -> _EnqueueSpan:
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is not None and self.span is not None:
            telemetry.end_enqueue_span(self.span, error=exc)

    def done(self, outcome: SubmitOutcome) -> SubmitOutcome:
        if self.span is not None:
            telemetry.end_enqueue_span(self.span, outcome.job_id, outcome.outcome)
        return outcome


def _outcome(name: str, new: NewJob, done: Enqueued) -> SubmitOutcome:
    key = new.concurrency_key or None
    if done.outcome == "new":
        return SubmitOutcome("accepted", done.id, name, key)
    if done.outcome == "existing":  # idempotency key: the first job stands
        return SubmitOutcome("coalesced", done.id, name, key, existing=done.id, reason="idempotency-key")
    if done.outcome == "replaced":
        return SubmitOutcome("replaced", done.id, name, key, existing=done.detail, reason="queue-depth")
    if done.outcome == "coalesced":
        return SubmitOutcome("coalesced", done.id, name, key, existing=done.id, reason=done.detail)
    return SubmitOutcome("rejected", None, name, key, existing=done.id, reason=done.detail)


def _ref_or_raise(outcome: SubmitOutcome) -> JobRef:
    if outcome.outcome == "rejected":
        raise JobRejected(outcome.name, outcome.key or "", outcome.reason or "", outcome.existing)
    assert outcome.job_id is not None
    return JobRef(outcome.job_id, outcome.name, existing=outcome.outcome == "coalesced")


def _checked_json(text: str) -> str:
    json.loads(text)
    return text


class SyncClient:
    """The blocking twin of `Client`, for code without an event loop (web views, scripts).

    Runs a private event loop in a daemon thread, started by the first call that needs it; safe
    to share between threads. `enqueue` and `submit` skip that thread: they use a blocking connection of their own, which polls for
    Redis's reply for up to `reply_spin_us` before it sleeps, when that slows nobody down
    (see `supervisor.wire.SyncWire`; 0 turns it off).
    """

    def __init__(self, redis: str, *, allow_unknown: bool = False,
                 reply_spin_us: float = DEFAULT_SPIN_US, tracing: Tracing | None = None) -> None:
        self._url, self.allow_unknown = redis, allow_unknown
        self.tracing = Tracing.from_process() if tracing is None else tracing
        self._lock = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        # enqueue and submit skip the loop thread: a blocking wire straight to Redis (not for TLS).
        # Its parameters come from the URL, so an enqueue needs neither the loop nor redis-py;
        # for a URL the wire cannot read alone (TLS, redis-py's query options) redis-py says, once.
        params = WireParams.from_url(redis)
        if params is None:
            params = params_of(self._async_client().broker.redis)
        # quiet_threads=2: the caller and this client's loop thread
        self._wire = SyncWire(params, reply_spin_us, quiet_threads=2) if params is not None else None
        self._types = _TypeCache(self.tracing)

    def _async_client(self) -> Client:
        """The asyncio `Client` and its loop thread, made when a call first needs them (every
        call but `enqueue` and `submit` over the wire)."""
        with self._lock:
            if self._client is None:
                if self._closed:
                    raise RuntimeError("this SyncClient is closed")
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="job-supervisor-client",
                                                daemon=True)
                self._thread.start()
                self._client = self._call(self._make(self._url, self.allow_unknown, self.tracing))
            return self._client

    @staticmethod
    async def _make(redis: str, allow_unknown: bool, tracing: Tracing) -> Client:
        return Client(redis, allow_unknown=allow_unknown, tracing=tracing)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def enqueue(self, name: str, payload: Any = None, **options: Any) -> JobRef:
        """Queue one job (see `Client.enqueue`)."""
        if _no_options(options) and (job_id := self._enqueue_plain(name, payload, None)) is not None:
            return JobRef(job_id, name)  # the hot path: no outcome object
        return _ref_or_raise(self.submit(name, payload, **options))

    def _enqueue_plain(self, name: str, payload: Any, allow_unknown: bool | None) -> str | None:
        """Queue a job without options on the plain fast path and return its id; None when it
        does not take that path (nothing was sent)."""
        wire = self._wire
        allowed = self.allow_unknown if allow_unknown is None else allow_unknown
        if wire is None or (info := self._types.plain(name, allowed)) is None:
            return None
        job_id, data = _plain_job(name, payload, info)
        wire.evalsha_packed(_ENQUEUE, data)
        return job_id

    def submit(self, name: str, payload: Any = None, **options: Any) -> SubmitOutcome:
        """See `Client.submit`."""
        wire = self._wire
        if wire is None:
            return self._call(self._async_client().submit(name, payload, **options))
        allow_unknown = options.pop("allow_unknown", None)
        if _no_options(options) and (job_id := self._enqueue_plain(name, payload, allow_unknown)) is not None:
            return SubmitOutcome("accepted", job_id, name)
        req = EnqueueRequest(name, payload, **options)
        with _EnqueueSpan(self.tracing, name, req.context) as tracked:
            new = build_job(req, self._resolve(wire, name, allow_unknown), tracked.span)
            script_keys, args = enqueue_call(name, [new])
            (done,) = parse_enqueued(wire.evalsha(_ENQUEUE, script_keys, args))
            return tracked.done(_outcome(name, new, done))

    def _resolve(self, wire: SyncWire, name: str, allow_unknown: bool | None) -> _TypeInfo | None:
        allowed = self.allow_unknown if allow_unknown is None else allow_unknown
        known, info = self._types.cached(name, allowed)
        if known:
            return info
        meta, serving = type_state_sync(wire, name)
        info = self._types.store(name, meta, serving)
        if self._types.admit(name, info, serving, allowed):
            wire.call("SADD", keys.TYPES_KEY, name)
        return info

    def key_status(self, name: str, key: str) -> dict[str, Any]:
        return self._call(self._async_client().key_status(name, key))

    def enqueue_many(self, requests: Sequence[EnqueueRequest | tuple[str, Any]], **options: Any) -> list[JobRef]:
        return self._call(self._async_client().enqueue_many(requests, **options))

    def get(self, job_id: str) -> Job:
        return self._call(self._async_client().get(job_id))

    def list(self, name: str | None = None, state: State | str | None = None, limit: int = 100) -> list[Job]:
        return self._call(self._async_client().list(name, state, limit))

    def wait(self, job_id: str, timeout: float | None = None, *, raise_on_failure: bool = False) -> Job:
        return self._call(self._async_client().wait(job_id, timeout, raise_on_failure=raise_on_failure))

    def logs(self, job_id: str, last: int = 1000) -> list[str]:
        return self._call(self._async_client().logs(job_id, last))

    def cancel(self, job_id: str, reason: str = "cancelled by request", *,
               source: str = "client", by: str = "") -> str:
        return self._call(self._async_client().cancel(job_id, reason, source=source, by=by))

    def retry(self, job_id: str, *, source: str = "client", by: str = "") -> None:
        self._call(self._async_client().retry(job_id, source=source, by=by))

    def replay(self, job_id: str, *, source: str = "client", by: str = "") -> None:
        self._call(self._async_client().replay(job_id, source=source, by=by))

    def dismiss(self, job_id: str, *, source: str = "client", by: str = "") -> None:
        self._call(self._async_client().dismiss(job_id, source=source, by=by))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, loop, thread = self._client, self._loop, self._thread
        if self._wire is not None:
            self._wire.close()
        if client is None or loop is None or thread is None:
            return  # the asyncio side was never needed
        self._call(client.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["Client", "EnqueueRequest", "JobRef", "SupervisorError", "SyncClient", "new_trace_context"]

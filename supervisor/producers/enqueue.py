"""The enqueue pipeline that `Client` and `SyncClient` share: from a request to the enqueue script's call.

One `Pipeline` per client, without I/O (the clients read and write Redis, asyncio or blocking):

- `fast` decides the plain fast path, the one place that does: a job without options (no option
  set, `has_options`) of a published type that takes the script's short form (`_TypeInfo.plain`,
  cached, served or allowed, tracing off). It returns the job's id and its packed call.
- `known` / `learn` keep the per-type cache of what validates a job (`_TypeCache`), which the
  clients fill from `supervisor.engine.serving.type_state` at most every 5 s per type.
- `prepare` validates one request against its type, applies the type's defaults and mints its
  id and trace context; `Batch` does it for `enqueue_many`, every job before any is queued.
- `mint` draws a new job's id and trace context: every path gets them from it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypedDict

from pydantic import BaseModel

from supervisor.engine import keys
from supervisor.engine.broker import ENQUEUE, Enqueued, NewJob, dumps, enqueue_args
from supervisor.engine.deps import DEPENDENCIES_MARK
from supervisor.engine.serving import Serving
from supervisor.engine.wire import PackedCall
from supervisor.errors import CorruptRecord, InvalidPayload, InvalidWorkflow, JobRejected
from supervisor.flow import KeyConcurrency, QueuePolicy, SubmitOutcome, derive_key
from supervisor.observability import telemetry
from supervisor.policy import PublishedType

if TYPE_CHECKING:
    from supervisor.daemon.registry import Registry
    from supervisor.observability.telemetry import Tracing

_META_TTL_S = 5.0
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
    depends_on: Sequence[str] | None = None  # job ids: the job waits (`waiting`) until they settle
    on_dependency_failure: str | None = None  # cancel (default) | run | wait
    batch: str | None = None  # the id of an open batch the job joins (`Client.batch`)


class EnqueueOptions(TypedDict, total=False):
    """The keyword options of `enqueue` and `submit`: `EnqueueRequest`'s, and `allow_unknown`."""

    delay: float | None
    run_at: datetime | None
    priority: int | None
    idempotency_key: str | None
    deadline: float | None
    context: dict[str, str] | None
    parent: str | None
    concurrency_key: str | None
    depends_on: Sequence[str] | None
    on_dependency_failure: str | None
    batch: str | None
    allow_unknown: bool | None


#: The options of one job (`EnqueueRequest`'s fields but its name and payload).
OPTION_NAMES = tuple(f for f in EnqueueRequest.__dataclass_fields__ if f not in ("name", "payload"))
_OPTION_SET = frozenset(OPTION_NAMES)
_options_of = attrgetter(*OPTION_NAMES)


def has_options(options: Mapping[str, Any] | EnqueueRequest) -> bool:
    """Whether a job sets any option (a value that is not None, 0 or empty), as keyword options
    (`allow_unknown` is not a job's option) or as a request. An unknown keyword counts as one:
    the general path, which builds an `EnqueueRequest`, refuses it."""
    if isinstance(options, EnqueueRequest):
        return any(_options_of(options))
    given = options.keys() - {"allow_unknown"}
    return not given <= _OPTION_SET or any(options[option] for option in given)


def mint(name: str, bits: str | None = None, given: dict[str, str] | None = None, span: Any = None,
         fresh: Callable[[str], str] | None = None) -> tuple[str, str]:
    """A new job's id and trace context (JSON), from 80 random hex digits: one `os.urandom` draw,
    or `bits` a batch drew for all its jobs at once. 16 make the id, 64 the request, trace and
    span ids. A `given` context or the producer `span` is continued (`telemetry.job_context`);
    else the caller's active trace goes on or a fresh one starts (`fresh`: a batch's choice of
    the two, made once; by default looked up per job)."""
    bits = bits or os.urandom(40).hex()
    job_id = keys.new_job_id(name, bits[:16])
    if given or span is not None:
        return job_id, dumps(telemetry.job_context(given, span))
    return job_id, (fresh or telemetry.fresh_job_context_json)(bits[16:])


class _TypeInfo:
    """A view of a type's published policy for the enqueue paths: the fields they read per job,
    derived once per read of the metadata (`PublishedType.read`, at most every 5 s)."""

    __slots__ = (
        "deadline_ms",
        "fetched",
        "key_concurrency",
        "plain",
        "policy",
        "priority",
        "queue",
        "schema_text",
        "served",
        "serving",
        "validator",
    )

    def __init__(self, name: str, meta: dict[str, str], serving: Serving, before: _TypeInfo | None = None) -> None:
        published = PublishedType.read(name, meta)
        policy = self.policy = published.policy
        self.validator = None
        self.schema_text = (meta.get("schema"), published.check_formats)
        if before is not None and before.schema_text == self.schema_text:
            self.validator = before.validator  # the same schema as at the last read: compiled already
        elif published.schema:  # jsonschema is loaded only once a type has a schema (keeps CLI start-up light)
            from supervisor.validation import compile_schema  # noqa: PLC0415

            # formats unless a pydantic model judges them (PayloadModel)
            self.validator = compile_schema(published.schema, formats=published.check_formats)
        self.priority = policy.priority or 0
        self.deadline_ms = int(policy.deadline * 1000) if policy.deadline else 0
        self.key_concurrency, self.queue = policy.key_concurrency, policy.queue
        # No default that needs the script's long form: a job without options is a plain one.
        # A replicated type's enqueues wait for a replica (Broker), which the plain path does not.
        self.plain = (not self.priority and not self.deadline_ms and self.key_concurrency is None
                      and policy.durability != "replicated")
        self.serving = serving
        self.served = serving.served  # a live instance serves it (else refused unless allow_unknown)
        self.fetched = time.monotonic()


class _TypeCache:
    """Published type metadata and who serves it, per type name, re-read at most every 5 s
    (with the metadata, in the same script call: `supervisor.engine.serving.type_state`); so is the
    absence of metadata (an enqueue with `allow_unknown` of a type no daemon published yet).
    So a type whose last instance stopped serving it is refused at most 5 s later."""

    __slots__ = ("_absent", "_listed", "_types")

    def __init__(self) -> None:
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

    def fresh(self, name: str, allowed: bool) -> _TypeInfo | None:
        """The published type of `name` when a read under 5 s old has it and it is served (or
        `allowed`); None when the general path must decide (it reads, refuses or lists)."""
        cached = self._types.get(name)
        if cached is None or not (cached.served or allowed) or time.monotonic() - cached.fetched >= _META_TTL_S:
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
            info = self._types[name] = _TypeInfo(name, meta, serving, self._types.get(name))
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


class Pipeline:
    """One client's enqueue pipeline (see the module docstring).

    Args:
        tracing: where producer spans go; with tracing on no job takes the plain path (a span
            to open).
        allow_unknown: the client's default for queueing types no live instance serves.
        registry: the daemon's own registry: its types validate locally, never from Redis.
    """

    __slots__ = ("_types", "allow_unknown", "registry", "tracing")

    def __init__(self, tracing: Tracing, allow_unknown: bool, registry: Registry | None = None) -> None:
        self.tracing, self.allow_unknown, self.registry = tracing, allow_unknown, registry
        self._types = _TypeCache()

    def plain_kind(self, kind: Any) -> bool:
        """Whether a job of `kind` (what `known`/`learn` gave) without options takes the
        script's short form: a published type without defaults, and no span to open."""
        return isinstance(kind, _TypeInfo) and kind.plain and self.tracing.tracer() is None

    def fast(self, name: str, payload: Any, options: Mapping[str, Any]) -> tuple[str, bytes] | None:
        """The plain fast path of one job: its id and packed enqueue call, when it has no options
        and its type, cached, takes the short form; None (nothing minted) for the general path.
        The same checks as `prepare`, none of its objects. The hot path of one-at-a-time enqueue."""
        allowed = self.allow_unknown
        if options:  # none given: the common case, one check
            if has_options(options):
                return None
            if options.get("allow_unknown") is not None:
                allowed = options["allow_unknown"]
        if self.registry is not None and name in self.registry:  # the daemon's own type validates locally
            return None
        info = self._types.fresh(name, allowed)
        if info is None or not self.plain_kind(info):
            return None
        value = _payload_value(payload)
        _schema_check(name, info, value)
        job_id, context_json = mint(name)
        return job_id, _plain_call(name).pack(job_id, _payload_json(name, value), context_json)

    def known(self, name: str, allow_unknown: bool | None) -> tuple[bool, Any]:
        """(True, what validates a job of `name`) when no Redis read is needed: the local
        JobType, or a cached read (a `_TypeInfo`, or None: an unknown type, allowed); raises
        UnknownJobType; (False, None) when the client must read `type_state` and call `learn`."""
        local = self.registry.get(name) if self.registry else None
        if local is not None:
            return True, local
        return self._types.cached(name, self.allow_unknown if allow_unknown is None else allow_unknown)

    def learn(self, name: str, allow_unknown: bool | None, meta: dict[str, str],
              serving: Serving) -> tuple[_TypeInfo | None, bool]:
        """What validates `name` after a read of its `type_state`, and whether the client must
        add it to the types registry (an unpublished type, allowed: so listings and the janitor
        see its jobs); raises UnknownJobType."""
        info = self._types.store(name, meta, serving)
        allowed = self.allow_unknown if allow_unknown is None else allow_unknown
        return info, self._types.admit(name, info, serving, allowed)

    def prepare(self, req: EnqueueRequest, kind: Any, span: Any = None) -> NewJob:
        """Validate one request against its type (`kind`: a local JobType, a published _TypeInfo,
        or None for an allowed unknown type) and give it an id and a trace context. No I/O."""
        return _new_job(req, _checked(req, kind), span)


def request_of(name: str, payload: Any, options: EnqueueOptions) -> tuple[EnqueueRequest, bool | None]:
    """`enqueue`/`submit`'s arguments as one request, and their `allow_unknown`."""
    allow_unknown = options.pop("allow_unknown", None)
    return EnqueueRequest(name, payload, **options), allow_unknown  # type: ignore[misc]


_DEFAULT_KEY_POLICY = KeyConcurrency(key=["-"])  # SPEC defaults for an enqueue-time key
_DEFAULT_QUEUE = QueuePolicy()


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


def _checked_json(text: str) -> str:
    json.loads(text)
    return text


def _check_links(req: EnqueueRequest) -> None:
    """Raises InvalidWorkflow for a bad `depends_on` / `on_dependency_failure` / `batch`; leaves
    `depends_on` as a list without repeats."""
    if req.on_dependency_failure not in (None, "cancel", "run", "wait"):
        raise InvalidWorkflow(f"on_dependency_failure={req.on_dependency_failure!r} for {req.name!r}: "
                              "use 'cancel' (the default), 'run' or 'wait'")
    if req.depends_on:
        if isinstance(req.depends_on, str):
            raise InvalidWorkflow(f"depends_on for {req.name!r} is one string: pass a list of job ids")
        deps = list(dict.fromkeys(str(getattr(d, "id", d)) for d in req.depends_on))  # a JobRef stands for its id
        for dep in deps:
            try:
                keys.tag_from_id(dep)
            except ValueError as exc:
                raise InvalidWorkflow(f"depends_on for {req.name!r}: {exc}") from None
        req.depends_on = deps
    if req.batch is not None and not (isinstance(req.batch, str) and req.batch.startswith("b-")):
        raise InvalidWorkflow(f"batch={req.batch!r} for {req.name!r} is no batch id: use Client.batch()'s id")


def _checked(req: EnqueueRequest, kind: Any) -> _Checked:
    """Raises InvalidPayload for a request its type refuses (schema, priority, not JSON)."""
    if req.depends_on or req.on_dependency_failure or req.batch:
        _check_links(req)
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
    given = req.context
    if req.depends_on:  # the dispatcher reads its dependencies' results for ctx.dependency_results
        given = {**(given or {}), DEPENDENCIES_MARK: "1"}
    job_id, context_json = mint(req.name, given=given, span=span)
    return NewJob(
        id=job_id, payload_json=c.payload_json, priority=c.priority, delay_ms=c.delay_ms,
        deadline_ms=c.deadline_ms, idempotency_key=req.idempotency_key or "", context_json=context_json,
        parent=req.parent or "", concurrency_key=c.ckey, max_active=c.key_policy.max_active,
        max_queued=c.queue.max_queued_per_key, when_full=c.queue.when_full, stale_policy=c.key_policy.stale_policy,
        waits=len(req.depends_on) + 1 if req.depends_on else 0,
        on_dependency_failure=req.on_dependency_failure or "cancel" if req.depends_on else "", batch=req.batch or "",
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
            ENQUEUE, [prefix + keys.ROUTE], [prefix, keys.job_prefix(name), name, 1, 3], tail=3)
    return call


class Batch:
    """The jobs of one `enqueue_many`, every one validated before any is queued (the constructor
    raises), then made chunk by chunk (`calls`) while Redis runs the chunk before.

    `plain`: every job is without options and of a type that takes the script's short form;
    its calls are built straight from the payloads (no per-job objects) and every outcome is
    'new'. Else each job is prepared as `Pipeline.prepare` does, with a producer span per job
    when tracing is on.
    """

    def __init__(self, pipeline: Pipeline, reqs: list[EnqueueRequest], kinds: dict[str, Any]) -> None:
        self.reqs, self.kinds, self.tracing = reqs, kinds, pipeline.tracing
        self.plain = (all(pipeline.plain_kind(k) for k in kinds.values())
                      and not any(has_options(r) for r in reqs))
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(reqs):
            groups.setdefault(req.name, []).append(i)
        self.chunks = [(name, idxs[start:start + _CHUNK]) for name, idxs in groups.items()
                       for start in range(0, len(idxs), _CHUNK)]
        self.ids: list[str] = [""] * len(reqs)
        self.prepared: list[NewJob] = []
        self.spans: list[Any] | None = None
        if self.plain:
            self.payloads = self._plain_payloads()
            return
        self.checked = [_checked(r, kinds[r.name]) for r in reqs]
        # telemetry: one producer span per job when tracing is on (None: off, nothing allocated)
        if self.tracing.enabled():
            self.spans = [self.tracing.start_enqueue_span(r.name, r.context) for r in reqs]

    def _plain_payloads(self) -> list[str]:
        payloads = []
        checked = any(k.validator is not None for k in self.kinds.values())
        for r in self.reqs:
            value = _payload_value(r.payload)
            if checked:
                _schema_check(r.name, self.kinds[r.name], value)
            payloads.append(_payload_json(r.name, value))
        return payloads

    def calls(self) -> Iterator[tuple[str, list[Any]]]:
        """(type name, the enqueue script's ARGV) per chunk, each made when the one before is sent."""
        if not self.plain:
            self.prepared = [None] * len(self.reqs)  # type: ignore[list-item]
            spans = self.spans
            for name, part in self.chunks:
                for i in part:
                    self.prepared[i] = _new_job(self.reqs[i], self.checked[i], spans[i] if spans else None)
                yield name, enqueue_args(name, [self.prepared[i] for i in part])
            return
        # The caller's trace, looked up once: every job of the batch continues it or none does.
        fresh = (telemetry.fresh_job_context_json if telemetry.in_caller_trace()
                 else telemetry.new_job_context_json)
        ids, payloads = self.ids, self.payloads
        for name, part in self.chunks:
            prefix, job_prefix = keys.queue_prefix(name), keys.job_prefix(name)
            bits = os.urandom(40 * len(part)).hex()  # one draw per chunk: 80 hex digits a job
            args: list[Any] = [prefix, job_prefix, name, len(part), 3]
            for k, i in enumerate(part):
                ids[i], context_json = mint(name, bits[80 * k:80 * k + 80], fresh=fresh)
                args += (ids[i], payloads[i], context_json)
            yield name, args

    def failed(self, exc: BaseException) -> None:
        """The batch did not reach Redis whole: each job's span ends with the error."""
        for span in self.spans or ():
            if span is not None:
                telemetry.end_enqueue_span(span, error=exc)

    def refs(self) -> list[JobRef]:
        """The queued jobs of a plain batch (every outcome is 'new'), in the order given."""
        return [JobRef(job_id, r.name) for job_id, r in zip(self.ids, self.reqs, strict=True)]

    def outcomes(self, replies: Sequence[list[Enqueued]]) -> list[SubmitOutcome]:
        """What happened to each job (not a plain batch), in the order given."""
        outcomes: list[SubmitOutcome | None] = [None] * len(self.reqs)
        for (name, part), done_list in zip(self.chunks, replies, strict=True):
            for done, i in zip(done_list, part, strict=True):
                outcomes[i] = outcome_of(name, self.prepared[i], done)
        for span, o in zip(self.spans or (), outcomes, strict=False):
            if span is not None and o is not None:
                telemetry.end_enqueue_span(span, o.job_id, o.outcome)
        return [o for o in outcomes if o is not None]


class EnqueueSpan:
    """The producer span of one enqueue (`span` is None when tracing is off), ended with the
    enqueue's outcome (`done`) or with the error that left the block."""

    __slots__ = ("span",)

    def __init__(self, tracing: Tracing, name: str, context: dict[str, str] | None) -> None:
        self.span = tracing.start_enqueue_span(name, context)

    def __enter__(self) -> EnqueueSpan:
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is not None and self.span is not None:
            telemetry.end_enqueue_span(self.span, error=exc)

    def done(self, name: str, new: NewJob, done: Enqueued) -> SubmitOutcome:
        """The outcome of the enqueue of `new`, which the span ends with."""
        outcome = outcome_of(name, new, done)
        if self.span is not None:
            telemetry.end_enqueue_span(self.span, outcome.job_id, outcome.outcome)
        return outcome


def outcome_of(name: str, new: NewJob, done: Enqueued) -> SubmitOutcome:
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


def ref_or_raise(outcome: SubmitOutcome) -> JobRef:
    if outcome.outcome == "rejected":
        raise JobRejected(outcome.name, outcome.key or "", outcome.reason or "", outcome.existing)
    assert outcome.job_id is not None
    return JobRef(outcome.job_id, outcome.name, existing=outcome.outcome == "coalesced")


__all__ = ["Batch", "EnqueueOptions", "EnqueueRequest", "EnqueueSpan", "JobRef", "Pipeline", "has_options", "mint",
           "outcome_of", "ref_or_raise", "request_of"]

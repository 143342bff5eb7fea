"""Producers: `Client` (asyncio) and `SyncClient` enqueue, inspect, wait for and cancel jobs.

Enqueue validates the payload against the schema that running instances
published for the type (or against a local `Registry`, inside the daemon),
and refuses a type no live instance serves unless `allow_unknown=True` (see
`supervisor.engine.serving`; a type that stops being served is refused within 5 s).
Every job gets a request id and a W3C trace context at enqueue. Both clients
share one enqueue pipeline (`supervisor.producers.enqueue`) and call the enqueue script
through a transport (`supervisor.engine.transport`).
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
import threading
import time
from collections.abc import Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from supervisor.engine import control, keys
from supervisor.engine.broker import ENQUEUE, Broker, connect, enqueue_call, parse_enqueued
from supervisor.engine.control import BulkFilter, BulkReport, PauseState
from supervisor.engine.records import Job
from supervisor.engine.serving import type_state, type_state_sync
from supervisor.engine.states import State
from supervisor.engine.topology import sync_transport_for
from supervisor.engine.transport import LoopTransport, SyncScriptTransport
from supervisor.engine.wire import DEFAULT_SPIN_US, SyncWire, WireParams, params_of, redis_errors
from supervisor.errors import CorruptRecord, JobFailed, SupervisorError, TypeNotFound, WaitTimeout
from supervisor.flow import SubmitOutcome
from supervisor.observability.log import LazyLogger
from supervisor.observability.telemetry import Tracing
from supervisor.producers import workflows
from supervisor.producers.enqueue import (
    Batch,
    EnqueueRequest,
    EnqueueSpan,
    JobRef,
    Pipeline,
    ref_or_raise,
    request_of,
)

if TYPE_CHECKING:  # the daemon passes its Registry; a CLI command never loads handler code
    import redis.asyncio as aioredis
    from typing_extensions import Unpack

    from supervisor.daemon.registry import Registry
    from supervisor.engine.broker import NewJob
    from supervisor.producers.enqueue import EnqueueOptions

T = TypeVar("T")
_log = LazyLogger(__name__)
#: What XRANGE/XREAD give for one stream: (entry id, fields) pairs.
_Entries = list[tuple[str, dict[str, str]]]


def new_trace_context(request_id: str | None = None) -> dict[str, str]:
    """A fresh request id and W3C trace context (trace id, traceparent)."""
    trace_id = secrets.token_hex(16)
    return {
        "request_id": request_id or secrets.token_hex(8),
        "trace_id": trace_id,
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }


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
        self.tracing = Tracing.from_process() if tracing is None else tracing
        self._pipeline = Pipeline(self.tracing, allow_unknown, registry)

    @property
    def registry(self) -> Registry | None:
        """The daemon's own registry (its types validate locally); a reload sets the new one."""
        return self._pipeline.registry

    @registry.setter
    def registry(self, registry: Registry | None) -> None:
        self._pipeline.registry = registry

    @property
    def allow_unknown(self) -> bool:
        return self._pipeline.allow_unknown

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns:
            await self.broker.close()

    # --- enqueue ---------------------------------------------------------------------

    async def _resolve(self, name: str, allow_unknown: bool | None) -> Any:
        """What validates a job of `name` (`Pipeline.known`); reads Redis at most every 5 s per type."""
        known, kind = self._pipeline.known(name, allow_unknown)
        if known:
            return kind
        transport = self.broker.transport
        kind, unlisted = self._pipeline.learn(name, allow_unknown, *await type_state(transport, name))
        if unlisted:
            await transport.call("SADD", keys.TYPES_KEY, name)
        if replicated(kind):
            self.broker.replicated.add(name)
        return kind

    async def enqueue(self, name: str, payload: Any = None, **options: Unpack[EnqueueOptions]) -> JobRef:
        """Queue one job; raises InvalidPayload or UnknownJobType instead of queueing a bad one.

        Args:
            name: the job type.
            payload: JSON-ready value or pydantic model ({} when None).
            delay: seconds before it may run; `run_at`: a datetime before which it won't.
            priority: higher runs first (default: the type's).
            idempotency_key: a second enqueue with the same key returns the first job.
            deadline: seconds from now after which the job expires if not completed.
            context: request id / trace context to carry (a fresh one by default).
            parent: the id of the job that queued this one.
            allow_unknown: queue it even when no live instance serves the type (default: the client's).
            concurrency_key: a key for keyed concurrency (default: derived from the type's
                `key_concurrency` policy, if it has one).

        Raises JobRejected when the key's queue policy refuses the job; a coalesced job
        returns the job it folded into (`existing=True`).
        """
        if (fast := self._pipeline.fast(name, payload, options)) is not None:
            await self.broker.transport.evalsha_packed(ENQUEUE, fast[1])
            return JobRef(fast[0], name)
        return ref_or_raise(await self._submit(name, payload, options))

    async def submit(self, name: str, payload: Any = None, **options: Unpack[EnqueueOptions]) -> SubmitOutcome:
        """Like `enqueue`, but returns the admission outcome instead of raising on rejection:
        accepted / rejected / coalesced / replaced, with the key and the existing job."""
        if (fast := self._pipeline.fast(name, payload, options)) is not None:
            await self.broker.transport.evalsha_packed(ENQUEUE, fast[1])
            return SubmitOutcome("accepted", fast[0], name)
        return await self._submit(name, payload, options)

    async def _submit(self, name: str, payload: Any, options: EnqueueOptions) -> SubmitOutcome:
        """One job on the general path: validated and prepared, then the enqueue script's outcome."""
        req, allow_unknown = request_of(name, payload, options)
        with EnqueueSpan(self.tracing, name, req.context) as tracked:
            new = self._pipeline.prepare(req, await self._resolve(name, allow_unknown), tracked.span)
            (done,) = await self.broker.enqueue(name, [new])
            outcome = tracked.done(name, new, done)
        if req.depends_on or req.batch:  # registered with its dependencies, then let go; told to its batch
            await workflows.link(self, req, outcome)
        return outcome

    async def prepare(self, req: EnqueueRequest, allow_unknown: bool | None = None) -> NewJob:
        """`req` validated against its type and given an id (no write): what a workflow queues."""
        return self._pipeline.prepare(req, await self._resolve(req.name, allow_unknown))

    async def key_status(self, name: str, key: str) -> dict[str, Any]:
        """Active jobs of a concurrency key, queued depth, stale takeovers, last decision."""
        return await self.broker.key_status(name, key)

    async def enqueue_many(
        self, requests: Iterable[EnqueueRequest | tuple[str, Any]], *, allow_unknown: bool | None = None,
    ) -> list[JobRef]:
        """Queue many jobs in one pipelined round trip (all validated before any is queued)."""
        reqs = [r if isinstance(r, EnqueueRequest) else EnqueueRequest(r[0], r[1]) for r in requests]
        kinds = {name: await self._resolve(name, allow_unknown) for name in dict.fromkeys(r.name for r in reqs)}
        batch = Batch(self._pipeline, reqs, kinds)
        try:
            replies = await self.broker.enqueue_calls(batch.calls(), outcomes=not batch.plain)
        except BaseException as exc:
            batch.failed(exc)
            raise
        if batch.plain:  # no job of it has options, so none has links
            return batch.refs()
        # Every job was offered; a rejected one raises after the others were queued and linked.
        outcomes = batch.outcomes(replies)
        await workflows.link_many(self, reqs, outcomes)
        return [ref_or_raise(o) for o in outcomes]

    # --- workflows and batches (supervisor.producers.workflows, docs/workflows.md) --------

    async def workflow(self, graph: workflows.Step | workflows.Graph, *, workflow_id: str | None = None,
                       name: str = "", context: dict[str, str] | None = None) -> workflows.WorkflowRef:
        """Create a whole graph of jobs (`chain`, `group`, `chord`, `dag`): all of it or none."""
        return await workflows.create(self, graph, workflow_id=workflow_id, name=name, context=context)

    async def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        """The workflow's derived state and each step's job and state."""
        return await workflows.get(self, workflow_id)

    async def list_workflows(self, limit: int = 50) -> builtins.list[dict[str, Any]]:
        return await workflows.list_workflows(self, limit)

    async def cancel_workflow(self, workflow_id: str, reason: str = "workflow cancelled", *,
                              source: str = "client", by: str = "") -> dict[str, str]:
        """Cancel its waiting and pending jobs, ask its running ones to stop."""
        return await workflows.cancel(self, workflow_id, reason, source=source, by=by)

    async def batch(self, *, on_complete: workflows.Callback | str | None = None,
                    on_success: workflows.Callback | str | None = None, description: str = "",
                    batch_id: str | None = None) -> str:
        """Open a batch; enqueue jobs into it with `batch=<id>`, then `close_batch`."""
        return await workflows.open_batch(self, on_complete=on_complete, on_success=on_success,
                                          description=description, batch_id=batch_id)

    async def close_batch(self, batch_id: str) -> None:
        await workflows.close_batch(self, batch_id)

    async def batch_status(self, batch_id: str) -> dict[str, Any]:
        """total, settled, completed, failed, pending, state."""
        return await workflows.batch_status(self, batch_id)

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

    async def logs(self, job_id: str, last: int = 1000) -> builtins.list[str]:  # `list` is a method here
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

    async def pause(self, name: str, *, allow_unknown: bool | None = None, source: str = "client",
                    by: str = "") -> PauseState:
        """Pause job type `name` on every instance: enqueues are accepted, no job of it is claimed
        (running ones finish) until `resume`; the flag lives in Redis, so it outlasts restarts.
        TypeNotFound for a type no instance ever published, unless `allow_unknown` (default: the
        client's)."""
        await self._known_type(name, "pause", allow_unknown)
        return await control.set_paused(self.broker, name, True, source=source, by=by)

    async def resume(self, name: str, *, allow_unknown: bool | None = None, source: str = "client",
                     by: str = "") -> PauseState:
        """Resume a paused job type (its idle instances are woken at once); TypeNotFound as `pause`."""
        await self._known_type(name, "resume", allow_unknown)
        return await control.set_paused(self.broker, name, False, source=source, by=by)

    async def _known_type(self, name: str, action: str, allow_unknown: bool | None) -> None:
        # a type ever published is in the registry, served now or not (pausing ahead of a deploy)
        allowed = self.allow_unknown if allow_unknown is None else allow_unknown
        if not allowed and not await self.broker.redis.sismember(keys.TYPES_KEY, name):
            raise TypeNotFound(name, action)

    async def bulk(self, action: str, flt: BulkFilter | None = None, *, dry_run: bool = False,
                   source: str = "client", by: str = "") -> BulkReport:
        """Run `action` (retry, replay, dismiss, cancel, delete, purge) on every job matching `flt`,
        in bounded batches, each recorded in the job's history; `dry_run` only counts. ValueError
        names a filter the action cannot take (see `supervisor.engine.control.bulk`)."""
        return await control.bulk(self.broker, action, flt or BulkFilter(), dry_run=dry_run, source=source, by=by)

    async def wait(self, job_id: str, timeout: float | None = None, *, raise_on_failure: bool = False) -> Job:
        """Wait until the job is finished (completed, failed, dead, cancelled, expired, dismissed).

        Blocks on the type's event stream, so it reacts within milliseconds without polling.
        Raises WaitTimeout after `timeout` seconds, JobFailed when asked and the job did not complete.
        """
        name = await self.broker.job_type(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = keys.events_key(name)
        try:
            last = cast(_Entries, await self.broker.redis.xrevrange(stream, count=1))
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
            block_ms = max(int(min(left, 1.0) * 1000), 1)
            rows = cast(list[tuple[str, _Entries]],
                        await self.broker.redis.xread({stream: last_id}, count=1000, block=block_ms))
            for _stream, entries in rows:
                if entries:
                    last_id = entries[-1][0]



def replicated(kind: Any) -> bool:
    """Whether a type (what `Pipeline.learn` gave) is published with `durability = "replicated"`."""
    policy = getattr(kind, "policy", None)
    return policy is not None and policy.durability == "replicated"


class SyncClient:
    """The blocking twin of `Client`, for code without an event loop (web views, scripts).

    Runs a private event loop in a daemon thread, started by the first call that needs it; safe
    to share between threads. `enqueue` and `submit` skip that thread: they use a blocking connection
    of their own, which polls for Redis's reply for up to `reply_spin_us` before it sleeps, when that
    slows nobody down (see `supervisor.engine.wire.SyncWire`; 0 turns it off).
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
        # quiet_threads=2: the caller and this client's loop thread. A Sentinel group's master or a
        # Redis Cluster: the blocking wire that finds them (supervisor.engine.topology).
        lean = None if params is not None else sync_transport_for(redis, reply_spin_us, 2)
        if params is None and lean is None:
            params = params_of(self._async_client().broker.redis)
        self._transport: SyncScriptTransport = (
            lean if lean is not None else SyncWire(params, reply_spin_us, quiet_threads=2) if params is not None
            else LoopTransport(self._async_client().broker.transport, self._call))  # TLS: redis-py on the loop
        self._pipeline = Pipeline(self.tracing, allow_unknown)

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

    def enqueue(self, name: str, payload: Any = None, **options: Unpack[EnqueueOptions]) -> JobRef:
        """Queue one job (see `Client.enqueue`)."""
        if options.get("depends_on") or options.get("batch"):  # more than one script: the asyncio client's
            return self._call(self._async_client().enqueue(name, payload, **options))
        if (fast := self._pipeline.fast(name, payload, options)) is not None:
            self._transport.evalsha_packed(ENQUEUE, fast[1])
            return JobRef(fast[0], name)  # the hot path: no outcome object
        return ref_or_raise(self._submit(name, payload, options))

    def submit(self, name: str, payload: Any = None, **options: Unpack[EnqueueOptions]) -> SubmitOutcome:
        """See `Client.submit`."""
        if options.get("depends_on") or options.get("batch"):
            return self._call(self._async_client().submit(name, payload, **options))
        if (fast := self._pipeline.fast(name, payload, options)) is not None:
            self._transport.evalsha_packed(ENQUEUE, fast[1])
            return SubmitOutcome("accepted", fast[0], name)
        return self._submit(name, payload, options)

    def _submit(self, name: str, payload: Any, options: EnqueueOptions) -> SubmitOutcome:
        """`Client._submit`, blocking."""
        req, allow_unknown = request_of(name, payload, options)
        kind = self._resolve(name, allow_unknown)
        if replicated(kind):  # acknowledged once a replica has it: through the client that waits for one
            return self._call(self._async_client()._submit(name, payload, options))  # noqa: SLF001
        with EnqueueSpan(self.tracing, name, req.context) as tracked:
            new = self._pipeline.prepare(req, kind, tracked.span)
            (done,) = parse_enqueued(self._transport.evalsha(ENQUEUE, *enqueue_call(name, [new])))
            return tracked.done(name, new, done)

    def _resolve(self, name: str, allow_unknown: bool | None) -> Any:
        """`Client._resolve`, blocking."""
        known, kind = self._pipeline.known(name, allow_unknown)
        if known:
            return kind
        kind, unlisted = self._pipeline.learn(name, allow_unknown, *type_state_sync(self._transport, name))
        if unlisted:
            self._transport.call("SADD", keys.TYPES_KEY, name)
        return kind

    def key_status(self, name: str, key: str) -> dict[str, Any]:
        return self._call(self._async_client().key_status(name, key))

    def enqueue_many(self, requests: Sequence[EnqueueRequest | tuple[str, Any]], **options: Any) -> list[JobRef]:
        return self._call(self._async_client().enqueue_many(requests, **options))

    def get(self, job_id: str) -> Job:
        return self._call(self._async_client().get(job_id))

    def workflow(self, graph: workflows.Step | workflows.Graph, **options: Any) -> workflows.WorkflowRef:
        return self._call(self._async_client().workflow(graph, **options))

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return self._call(self._async_client().get_workflow(workflow_id))

    def list_workflows(self, limit: int = 50) -> builtins.list[dict[str, Any]]:
        return self._call(self._async_client().list_workflows(limit))

    def cancel_workflow(self, workflow_id: str, reason: str = "workflow cancelled", **options: Any) -> dict[str, str]:
        return self._call(self._async_client().cancel_workflow(workflow_id, reason, **options))

    def batch(self, **options: Any) -> str:
        return self._call(self._async_client().batch(**options))

    def close_batch(self, batch_id: str) -> None:
        self._call(self._async_client().close_batch(batch_id))

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        return self._call(self._async_client().batch_status(batch_id))

    def list(self, name: str | None = None, state: State | str | None = None, limit: int = 100) -> list[Job]:
        return self._call(self._async_client().list(name, state, limit))

    def wait(self, job_id: str, timeout: float | None = None, *, raise_on_failure: bool = False) -> Job:
        return self._call(self._async_client().wait(job_id, timeout, raise_on_failure=raise_on_failure))

    def logs(self, job_id: str, last: int = 1000) -> builtins.list[str]:  # `list` is a method here
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

    def pause(self, name: str, *, allow_unknown: bool | None = None, source: str = "client",
              by: str = "") -> PauseState:
        """See `Client.pause`."""
        return self._call(self._async_client().pause(name, allow_unknown=allow_unknown, source=source, by=by))

    def resume(self, name: str, *, allow_unknown: bool | None = None, source: str = "client",
               by: str = "") -> PauseState:
        """See `Client.resume`."""
        return self._call(self._async_client().resume(name, allow_unknown=allow_unknown, source=source, by=by))

    def bulk(self, action: str, flt: BulkFilter | None = None, *, dry_run: bool = False,
             source: str = "client", by: str = "") -> BulkReport:
        """See `Client.bulk`."""
        return self._call(self._async_client().bulk(action, flt, dry_run=dry_run, source=source, by=by))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, loop, thread = self._client, self._loop, self._thread
        self._transport.close()
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

"""Admin API routes. Reads go to Redis through `supervisor.operators.admin` and `Broker`; writes go through `Client`.

Authentication and the body cap are enforced by `app.Guard` before routing; the
`Security(bearer)` dependency here only declares the scheme in the OpenAPI document.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, Security
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from supervisor.daemon.presence import list_workers
from supervisor.engine.control import BulkFilter, BulkRequestError
from supervisor.engine.states import State
from supervisor.errors import CorruptRecord
from supervisor.operators import admin, history, listing
from supervisor.operators.api.errors import ApiError, error_body
from supervisor.operators.api.schemas import (
    ActionOut,
    BulkAction,
    BulkIn,
    BulkOut,
    ErrorResponse,
    ExecutionsOut,
    HealthOut,
    HistoryAllOut,
    HistoryOut,
    JobOut,
    JobPage,
    LogsOut,
    PauseOut,
    ScheduleOut,
    TriggerIn,
    TriggerOut,
    TypeOut,
    WorkerOut,
    job_out,
)
from supervisor.producers.client import new_trace_context
from supervisor.producers.enqueue import ref_or_raise

bearer = HTTPBearer(auto_error=False, description="The API token (setting api_token).")
router = APIRouter()
guarded = APIRouter(dependencies=[Security(bearer)])


def _state(request: Request) -> Any:
    return request.app.state.api


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {404: "No such job or type", 409: "Wrong state for this action", 413: "Body too large",
            422: "Invalid request (the `field` names what)", 501: "Not implemented yet",
            503: "Redis unreachable"}
    return {c: {"model": ErrorResponse, "description": text.get(c, "Error")} for c in codes}


JobId = Annotated[str, Path(description="Job id, e.g. 3fa9c1-9b1f0e2d4c6a8e0f", max_length=200)]

# --- health ------------------------------------------------------------------------------


@router.get("/health", response_model=HealthOut, tags=["ops"], responses=_errors(503))
async def health(request: Request) -> Any:
    """Redis reachable (PING), how many instances publish presence, and `problems`: jobs queued for
    a type no live instance serves make `status` `degraded` (still HTTP 200: the API itself works;
    503 only when Redis is unreachable). No token needed."""
    try:
        return await admin.health(_state(request).redis)
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
        return JSONResponse({"status": "unavailable", "redis": f"error: {exc}"}, status_code=503)


# --- jobs --------------------------------------------------------------------------------


@guarded.get("/jobs", response_model=JobPage, tags=["jobs"], responses=_errors(422))
async def list_jobs(
    request: Request,
    type_: Annotated[str | None, Query(alias="type", max_length=200, description="Job type name.")] = None,
    state: Annotated[State | None, Query(description="Only jobs in this state.")] = None,
    key: Annotated[str | None, Query(max_length=1000, description=(
        "Only jobs with this concurrency key: the record's `ckey` (or `key`) field, else "
        "`context.concurrency_key`."))] = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO-8601; naive = UTC).")] = None,
    until: Annotated[datetime | None, Query(description="Created before (ISO-8601; naive = UTC).")] = None,
    error: Annotated[str | None, Query(min_length=1, max_length=1000, description=(
        "Only jobs whose error contains this text (ASCII letters in any case): what a bulk action's "
        "`error` filter takes."))] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000, description="`next_cursor` of the previous page.")] = None,
) -> Any:
    """Jobs one page at a time: live jobs first (active, then pending and retrying in the order they
    will run, then delayed, then waiting), then finished jobs, the most recently finished first.
    The cursor names the last entry of a page, so jobs created meanwhile never shift later pages;
    a request walks at most 5,000 index entries, so with a selective filter a page may hold fewer
    than `limit` jobs and still have a `next_cursor` (go on with it)."""
    corrupt: list[CorruptRecord] = []
    try:
        jobs, next_cursor = await listing.list_jobs(
            _state(request).broker, name=type_, state=state, key=key, since=since, until=until, error=error,
            limit=limit, cursor=cursor, corrupt=corrupt)
    except ValueError as exc:
        raise ApiError("invalid_request", f"cursor: {exc}", "cursor") from None
    return {"jobs": [job_out(j) for j in jobs], "next_cursor": next_cursor,
            "corrupt": [{"code": e.code, "message": str(e), "key": e.key} for e in corrupt]}


@guarded.post("/jobs/bulk/{action}", response_model=BulkOut, tags=["jobs"], responses=_errors(422))
async def bulk_action(request: Request, action: Annotated[BulkAction, Path()], body: BulkIn) -> Any:
    """Act on every job that matches the filter (the fields given must all match), or with
    `dry_run` count them first. Runs in script calls that each scan at most 500 index entries (act on 100),
    so a filter over millions of records never holds Redis for long; each job's history records
    the action (delete and purge remove the record). Which states each action takes: see BulkIn.
    Registered before /jobs/{job_id}/...: `bulk` is never a job id."""
    flt = BulkFilter(type=body.type, state=body.state, key=body.key, since=body.since, until=body.until,
                     error=body.error, limit=body.limit)
    try:
        report = await _state(request).client.bulk(action, flt, dry_run=body.dry_run, **_actor(request))
    except BulkRequestError as exc:
        raise ApiError("invalid_request", str(exc), exc.field) from None
    return report.to_dict()


@guarded.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=_errors(404))
async def get_job(request: Request, job_id: JobId) -> Any:
    """One job: state, payload, result or error, progress, context and every attempt."""
    return job_out(await _state(request).client.get(job_id))


@guarded.get("/jobs/{job_id}/logs", response_model=LogsOut, tags=["jobs"], responses=_errors(404))
async def job_logs(request: Request, job_id: JobId,
                   last: Annotated[int, Query(ge=1, le=1000, description="Newest lines to return.")] = 1000) -> Any:
    """The job's output lines (a task's stdout/stderr), oldest first."""
    client = _state(request).client
    await client.get(job_id)  # 404 for an unknown id
    return {"id": job_id, "lines": await client.logs(job_id, last)}


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("cancelled by operator (API)", min_length=1, max_length=1000)


def _actor(request: Request) -> dict[str, str]:
    """Who acts, for the job's history: the API, and the name of the bearer token it was given."""
    return {"source": "api", "by": getattr(request.state, "token_name", "") or ""}


async def _action(request: Request, job_id: str, action: str, result: str) -> dict[str, Any]:
    job = await _state(request).client.get(job_id)
    return {"id": job_id, "action": action, "result": result, "state": str(job.state), "job": job_out(job)}


@guarded.post("/jobs/{job_id}/cancel", response_model=ActionOut, tags=["jobs"], responses=_errors(404, 409, 422))
async def cancel_job(request: Request, job_id: JobId, body: CancelIn | None = None) -> Any:
    """Cancel: at once for pending/retry jobs (`cancelled`); an active job is told (`requested`)."""
    reason = body.reason if body else "cancelled by operator (API)"
    result = await _state(request).client.cancel(job_id, reason, **_actor(request))
    return await _action(request, job_id, "cancel", result)


@guarded.post("/jobs/{job_id}/retry", response_model=ActionOut, tags=["jobs"], responses=_errors(404, 409))
async def retry_job(request: Request, job_id: JobId) -> Any:
    """failed -> pending."""
    await _state(request).client.retry(job_id, **_actor(request))
    return await _action(request, job_id, "retry", "ok")


@guarded.post("/jobs/{job_id}/replay", response_model=ActionOut, tags=["jobs"], responses=_errors(404, 409))
async def replay_job(request: Request, job_id: JobId) -> Any:
    """dead -> pending."""
    await _state(request).client.replay(job_id, **_actor(request))
    return await _action(request, job_id, "replay", "ok")


@guarded.post("/jobs/{job_id}/dismiss", response_model=ActionOut, tags=["jobs"], responses=_errors(404, 409))
async def dismiss_job(request: Request, job_id: JobId) -> Any:
    """dead -> dismissed."""
    await _state(request).client.dismiss(job_id, **_actor(request))
    return await _action(request, job_id, "dismiss", "ok")


# --- types -------------------------------------------------------------------------------


@guarded.get("/types", response_model=list[TypeOut], response_model_by_alias=True, tags=["types"])
async def list_types(request: Request) -> Any:
    """Job types published by instances: schema, policy, source, counts per index, whether a live
    instance serves each (`served`, `served_by`), which one last did and when (`last_served`), and
    the load errors instances report for a file of that name."""
    return await admin.type_rows(_state(request).broker)


AllowUnknown = Annotated[bool, Query(description="Also a type no instance has served yet (else 404).")]


@guarded.post("/types/{name}/pause", response_model=PauseOut, tags=["types"], responses=_errors(404))
async def pause_type(request: Request, name: Annotated[str, Path(max_length=200)],
                     allow_unknown: AllowUnknown = False) -> Any:
    """Pause the type on every instance: enqueues are still accepted, no instance claims its jobs
    (running ones finish) until resumed; the flag is kept in Redis, so it outlasts restarts.
    Idempotent: `changed` is false when it was paused already."""
    client = _state(request).client
    return (await client.pause(name, allow_unknown=allow_unknown, **_actor(request))).to_dict()


@guarded.post("/types/{name}/resume", response_model=PauseOut, tags=["types"], responses=_errors(404))
async def resume_type(request: Request, name: Annotated[str, Path(max_length=200)],
                      allow_unknown: AllowUnknown = False) -> Any:
    """Resume a paused type: its idle instances are woken and claim at once."""
    client = _state(request).client
    return (await client.resume(name, allow_unknown=allow_unknown, **_actor(request))).to_dict()


Minutes = Annotated[int, Query(ge=1, le=history.MAX_MINUTES, description="How many minutes, ending now.")]


@guarded.get("/types/{name}/history", response_model=HistoryOut, tags=["types"])
async def type_history(request: Request, name: Annotated[str, Path(max_length=200)], minutes: Minutes = 60) -> Any:
    """Per-minute counts (enqueued, completed, failed, dead, retried) and run-time and queue-wait
    percentiles of one type, oldest first, one point per minute (kept 24 h)."""
    return await history.type_history(_state(request).redis, name, minutes)


@guarded.get("/history", response_model=HistoryAllOut, tags=["types"])
async def all_history(request: Request, minutes: Minutes = 60) -> Any:
    """Every published type's per-minute points, and their totals (percentiles of the merged buckets)."""
    state = _state(request)
    return await history.all_history(state.redis, await state.broker.type_names(), minutes)


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


@guarded.post("/types/{name}/trigger", response_model=TriggerOut, status_code=201, tags=["types"],
              responses={200: {"model": TriggerOut, "description": "idempotency_key matched an existing job"},
                         **_errors(404, 409, 413, 422)})
async def trigger(
    request: Request,
    response: Response,
    name: Annotated[str, Path(max_length=200)],
    body: TriggerIn,
    x_request_id: Annotated[str | None, Header(max_length=200)] = None,
    traceparent: Annotated[str | None, Header(max_length=200)] = None,
) -> Any:
    """Enqueue a job of type `name`, with every option `submit` takes, and answer with the submit
    outcome (201 accepted or replaced, 200 coalesced). The payload is validated against the type's
    published schema (422 naming the field, e.g. `payload.items.0.sku`); a type no live instance
    serves is 404 (the message names the instance that served it last and any load error) unless
    `allow_unknown` is true.
    A concurrency key's queue policy may refuse it (409 `rejected`, with the key and the live job).
    `X-Request-ID` and a W3C `traceparent` header are carried into the job's context."""
    context = new_trace_context(x_request_id)
    if traceparent and (m := _TRACEPARENT.match(traceparent.strip().lower())):
        context["trace_id"], context["traceparent"] = m.group(1), traceparent.strip().lower()
    payload = body.payload
    if isinstance(payload, str):  # Client reads a str as JSON text; a JSON string payload must stay a string
        payload = json.dumps(payload)
    done = await _state(request).client.submit(
        name, payload, delay=body.delay, run_at=body.run_at, priority=body.priority,
        idempotency_key=body.idempotency_key, deadline=body.deadline, concurrency_key=body.concurrency_key,
        context=context, allow_unknown=body.allow_unknown, depends_on=body.depends_on,
        on_dependency_failure=body.on_dependency_failure)
    ref = ref_or_raise(done)  # a refused key: JobRejected, answered 409 with the key and the live job
    if ref.existing:
        response.status_code = 200
    return {"id": ref.id, "name": ref.name, "outcome": done.outcome, "existing": ref.existing,
            "key": done.key, "replaced": done.existing if done.outcome == "replaced" else None,
            "reason": done.reason}


# --- workers, schedules, keys, executions ------------------------------------------------


@guarded.get("/workers", response_model=list[WorkerOut], tags=["ops"])
async def workers(request: Request) -> Any:
    """Instances seen in the last hour: live ones with their presence heartbeat, others as stale."""
    return await list_workers(_state(request).redis)


@guarded.get("/schedules", response_model=list[ScheduleOut], tags=["ops"])
async def schedules(request: Request, count: Annotated[int, Query(ge=1, le=100)] = 3) -> Any:
    """Every published cron schedule: `status` (firing, not served, inactive), the last tick really
    fired and, when firing, the next `count` fire times. Every time is ISO-8601 in UTC."""
    return await admin.schedule_rows(_state(request).redis, count)


@guarded.get("/keys/{type_name}/{key}", tags=["ops"])
async def key_status(request: Request, type_name: Annotated[str, Path(max_length=200)],
                     key: Annotated[str, Path(max_length=1000)]) -> Any:
    """Status of one concurrency key: active jobs (instance, run time, lease expiry), queued depth,
    stale takeovers and the last admission decision with its reason."""
    return await _state(request).client.key_status(type_name, key)


@guarded.get("/executions", response_model=ExecutionsOut, tags=["ops"])
async def executions(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    type_: Annotated[str | None, Query(alias="type", max_length=200, description="Only this job type.")] = None,
) -> Any:
    """Recent attempts, newest first: started, completed, failed, retry, dead and lease-expired events."""
    state = _state(request)
    names = [type_] if type_ else await state.broker.type_names()
    return {"executions": await admin.recent_executions(state.redis, names, limit)}


# --- events (SSE) ------------------------------------------------------------------------


@guarded.get(
    "/events", tags=["ops"], response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "Server-Sent Events: `id:` resume token, `event:` lifecycle event name, "
                                    "`data:` the event as JSON (see EventOut)."},
               **_errors(422)},
)
async def events(
    request: Request,
    type_: Annotated[list[str] | None, Query(alias="type", description="Only these job types (repeatable).")] = None,
    job_id: Annotated[str | None, Query(max_length=200, description="Only this job's events.")] = None,
    last_event_id: Annotated[str | None, Query(max_length=100_000,
                                               description="Resume after this event (as the header).")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID", max_length=100_000)] = None,
) -> Any:
    """Lifecycle events of every type as they happen (Server-Sent Events).

    Each message's `id` encodes the position in every type's stream; reconnect with it in
    `Last-Event-ID` (or `?last_event_id=`) to continue without losing or repeating an event.
    Without one, the stream starts with events from now on. A comment line every 15 s keeps
    idle connections alive.
    """
    state = _state(request)
    start = last_event_id_header or last_event_id
    try:
        follower = admin.EventFollower(state.redis, types=type_, job_id=job_id, start=start,
                                       block_ms=int(min(state.sse_block_s, state.sse_heartbeat_s) * 1000))
    except ValueError as exc:
        field = "Last-Event-ID" if last_event_id_header else "last_event_id"
        raise ApiError("invalid_request", f"{field}: {exc}", field) from None
    await follower.prepare()  # "from now on" = from before the response headers go out
    return StreamingResponse(_sse(follower, state), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(follower: admin.EventFollower, state: Any) -> AsyncIterator[str]:
    yield "retry: 2000\n: connected\n\n"
    last_write = time.monotonic()
    try:
        async for item in follower.events(stop=state.closing):
            if item is None:
                if time.monotonic() - last_write >= state.sse_heartbeat_s:
                    last_write = time.monotonic()
                    yield ": keepalive\n\n"
                continue
            last_write = time.monotonic()
            data = json.dumps(item.doc, separators=(",", ":"))
            yield f"id: {item.token}\nevent: {item.doc['event']}\ndata: {data}\n\n"
    except (RedisConnectionError, RedisTimeoutError, ConnectionError) as exc:
        # Headers are gone: end the stream; the client reconnects with Last-Event-ID.
        yield f": redis unavailable ({json.dumps(error_body('redis_unavailable', str(exc)))}); reconnect\n\n"


# --- metrics -----------------------------------------------------------------------------


@guarded.get("/metrics", response_class=PlainTextResponse, tags=["ops"],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition of the default registry"}})
async def metrics() -> Response:
    """Prometheus metrics of this process (the `prometheus_client` default registry)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest  # noqa: PLC0415

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


router.include_router(guarded)

"""Request and response models of the admin API (they are also its OpenAPI document).

Queue control and history (issue 19), for the CLI and the dashboard alike:
    POST /types/{name}/pause, POST /types/{name}/resume   -> PauseOut (no body; idempotent)
    POST /jobs/bulk/{action}   body BulkIn                 -> BulkOut  (action: BulkAction)
    GET  /types/{name}/history?minutes=60 (1..1440)       -> HistoryOut
    GET  /history?minutes=60   (1..1440)                   -> HistoryAllOut
    GET  /types                                            -> TypeOut, with `paused` and `paused_info`
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic_core import PydanticCustomError

from supervisor.engine.states import State


class FieldError(BaseModel):
    field: str = Field(description="The JSON path of the value at fault, e.g. payload.items.0.sku.")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable error code (job_not_found, invalid_state, invalid_payload, ...).")
    message: str
    field: str | None = Field(None, description="The request part at fault, e.g. payload.items.0.sku or limit.")
    state: str | None = Field(None, description="On invalid_state: the job's current state.")
    action: str | None = Field(None, description="On invalid_state: the refused action.")
    job_id: str | None = None
    key: str | None = Field(None, description="On rejected: the concurrency key. "
                                               "On record_corrupt: the Redis key holding the bad value.")
    reason: str | None = Field(None, description="On invalid_state: the states the action needs. "
                                                 "On rejected: active-limit or queue-depth.")
    errors: list[FieldError] | None = Field(
        None, description="On invalid_payload: every validation error (at most 20), each with its field; "
                          "`field` is the first one's.")
    more: int | None = Field(None, description="On invalid_payload: errors found beyond those listed.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class AttemptOut(BaseModel):
    attempt: int
    started: str | None = None
    ended: str | None = None
    outcome: str
    instance: str | None = None
    error: str | None = None
    traceback: str | None = Field(None, description="A failed attempt's stack trace (a task's: its last stderr "
                                                    "lines), at most 16 KiB; kept for the newest 3 failures.")


class JobActionOut(BaseModel):
    """An operator's action on the job, from its history."""

    action: str = Field(description="cancel, retry, replay or dismiss.")
    at: str | None = None
    source: str = Field(description="Where it came from: cli, api or client.")
    by: str | None = Field(None, description="The API token's name (api_tokens), or the CLI's local user.")


class JobOut(BaseModel):
    """A job's record with every attempt (times are ISO-8601, UTC)."""

    id: str
    name: str
    state: str
    payload: JsonValue = None
    priority: int = 0
    created: str | None = None
    run_at: str | None = None
    deadline: str | None = None
    started: str | None = None
    finished: str | None = None
    deliveries: int = 0
    result: JsonValue = None
    error: str | None = None
    progress: dict[str, JsonValue] | None = None
    context: dict[str, JsonValue] = Field(default_factory=dict)
    parent: str | None = None
    idempotency_key: str | None = None
    instance: str | None = None
    cancel_requested: str | None = None
    attempts: list[AttemptOut] = Field(default_factory=list)
    actions: list[JobActionOut] = Field(default_factory=list)


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last.")
    corrupt: list[ErrorDetail] = Field(
        default_factory=list, description="Records skipped because job-supervisor did not write them "
                                          "(code record_corrupt, the Redis key named); the page lists the rest.")


class LogsOut(BaseModel):
    id: str
    lines: list[str]


class ActionOut(BaseModel):
    id: str
    action: str
    result: str = Field(description="cancel: 'cancelled' or 'requested' (active job, told cooperatively); else 'ok'.")
    state: str = Field(description="The job's state after the action.")
    job: JobOut


class LastServedOut(BaseModel):
    instance: str
    at: str = Field(description="ISO-8601, UTC: the instance's last heartbeat, or when it stopped serving.")


class LoadErrorOut(BaseModel):
    instance: str
    error: str


class PauseInfo(BaseModel):
    at: str = Field(description="ISO-8601, UTC: when the type was paused.")
    source: str = Field(description="cli, api or client.")
    by: str | None = Field(None, description="The API token's name, or the CLI's local user.")


class TypeOut(BaseModel):
    name: str
    source: str | None = None
    schema_: dict[str, JsonValue] = Field(default_factory=dict, alias="schema")
    policy: dict[str, JsonValue] = Field(default_factory=dict)
    instance: str | None = Field(None, description="The instance that last published the type.")
    updated: str | None = None
    counts: dict[str, int] = Field(description="Index sizes: waiting (on dependencies), ready, sched, active "
                                              "and each finished state.")
    error: str | None = Field(None, description="Set (code record_corrupt) when the type's registry entry or "
                                                "metadata was not written by job-supervisor.")
    served: bool = Field(False, description="A live instance serves the type now (else enqueue refuses it "
                                            "unless allow_unknown).")
    served_by: list[str] = Field(default_factory=list, description="The live instances that serve it.")
    last_served: LastServedOut | None = Field(None, description="The last instance that served it, and when.")
    load_errors: list[LoadErrorOut] = Field(default_factory=list,
                                            description="Load errors instances report for a file of this name.")
    paused: bool = Field(False, description="Paused: enqueues are accepted, no instance claims its jobs.")
    paused_info: PauseInfo | None = Field(None, description="When and by whom it was paused (null: not paused).")

    model_config = ConfigDict(populate_by_name=True)


class PauseOut(BaseModel):
    """The type's paused flag after `POST /types/{name}/pause` or `/resume`."""

    name: str
    paused: bool
    changed: bool = Field(description="False when the type already was in that state (the call is idempotent).")
    paused_info: PauseInfo | None = None


BulkAction = Literal["retry", "replay", "dismiss", "cancel", "delete", "purge"]


class BulkIn(BaseModel):
    """The filter of a bulk action (every field optional; given fields must all match) and whether to act.

    Which states an action takes: retry: failed; replay and dismiss: dead; cancel: waiting, pending,
    retry (at once) and active (cancellation requested); delete: every state but active; purge:
    finished states only (completed, failed, dead, cancelled, expired, dismissed) of one `type`.
    A `state` outside the action's states is a 422."""

    model_config = ConfigDict(extra="forbid")

    type: str | None = Field(None, max_length=200, description="Job type (default: every type; purge needs one).")
    state: State | None = Field(None, description="Only jobs in this state (default: every state the action takes).")
    key: str | None = Field(None, max_length=1000, description="Only jobs with this concurrency key.")
    since: AwareDatetime | None = Field(None, description="Created at or after (ISO-8601 with a zone).")
    until: AwareDatetime | None = Field(None, description="Created before (ISO-8601 with a zone).")
    error: str | None = Field(None, min_length=1, max_length=1000,
                              description="Only jobs whose error contains this text (case-insensitive).")
    limit: int | None = Field(None, ge=1, description="Act on at most this many matching jobs.")
    dry_run: bool = Field(False, description="Count the matching jobs, change nothing.")


class BulkOut(BaseModel):
    """What a bulk action did (or, on a dry run, would do)."""

    action: str
    dry_run: bool
    matched: int = Field(description="Jobs that match the filter, in a state the action takes.")
    done: int = Field(description="Jobs acted on (0 on a dry run).")
    skipped: int = Field(description="Matched jobs whose state changed before the action reached them.")
    by_state: dict[str, int] = Field(default_factory=dict, description="Matched jobs by state.")
    batches: int = Field(description="Script calls made (each scans at most 500 index entries, 100 when acting).")
    longest_call_ms: float = Field(description="The longest single script call, in ms (what Redis was blocked).")
    elapsed_ms: float


class Percentiles(BaseModel):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class HistoryPoint(BaseModel):
    """One minute of a type (or of all types), from the counters the transition scripts keep."""

    minute: str = Field(description="ISO-8601, UTC: the start of the minute.")
    enqueued: int = 0
    completed: int = 0
    failed: int = Field(0, description="Jobs that ended failed (permanent failure, or stale under a key).")
    dead: int = Field(0, description="Jobs that ended dead (max_deliver reached).")
    retried: int = Field(0, description="Failed attempts (or lapsed leases) scheduled for another attempt.")
    run_ms: Percentiles = Field(default_factory=Percentiles,
                                description="Run time of the attempts that ended in the minute (ms).")
    wait_ms: Percentiles = Field(default_factory=Percentiles,
                                 description="Queue wait of the jobs first claimed in the minute (ms, from "
                                             "creation or run_at to the first start).")


class HistoryOut(BaseModel):
    """Per-minute points, oldest first, one per minute (empty minutes have zero counts)."""

    type: str | None = Field(None, description="The type; null for the totals of every type.")
    minutes: int
    points: list[HistoryPoint]


class HistoryAllOut(BaseModel):
    """The totals across every type, and each type's own points (GET /history)."""

    minutes: int
    totals: list[HistoryPoint]
    types: dict[str, list[HistoryPoint]]


class TriggerIn(BaseModel):
    """Enqueue one job of the type named in the path (validated against its published schema)."""

    model_config = ConfigDict(extra="forbid")

    payload: JsonValue = Field(None, description="JSON payload ({} when omitted).")
    delay: float | None = Field(None, ge=0, le=366 * 86_400, description="Seconds before it may run.")
    priority: int | None = Field(None, ge=-4000, le=4000, description="Higher runs first (default: the type's).")
    idempotency_key: str | None = Field(None, min_length=1, max_length=512,
                                        description="A second trigger with this key returns the first job.")
    deadline: float | None = Field(None, gt=0, le=366 * 86_400,
                                   description="Seconds from now after which the job expires.")
    run_at: AwareDatetime | None = Field(None, description="When it may run (ISO 8601 with a zone); "
                                                           "not together with `delay`.")
    concurrency_key: str | None = Field(None, min_length=1, max_length=512,
                                        description="Keyed concurrency and queue policy for this job, "
                                                    "instead of the key the type derives.")
    allow_unknown: bool = Field(False, description="Queue it even if no live instance serves the type "
                                                   "(it waits for one); otherwise that is a 404.")
    depends_on: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=1000, description="Job ids it waits for (state `waiting`) until they settle.")
    on_dependency_failure: Literal["cancel", "run", "wait"] | None = Field(
        None, description="What a failed, dead, cancelled or expired dependency does to it (default cancel).")

    @model_validator(mode="after")
    def _one_start_time(self) -> TriggerIn:
        if self.delay is not None and self.run_at is not None:
            raise PydanticCustomError("one_start_time", "give `delay` or `run_at`, not both")
        return self


class TriggerOut(BaseModel):
    """What the trigger did: the submit outcome (201 for a new job, 200 when it folded into one)."""

    id: str = Field(description="The job created, or the one it folded into.")
    name: str
    outcome: Literal["accepted", "coalesced", "replaced"] = Field(
        description="accepted: a new job; coalesced: an existing job stands (idempotency key or the "
                    "key's queue policy); replaced: a new job took the place of the key's oldest queued one.")
    existing: bool = Field(description="True when no new job was created (coalesced).")
    key: str | None = Field(None, description="The job's concurrency key, if any.")
    replaced: str | None = Field(None, description="The queued job this one replaced (outcome replaced).")
    reason: str | None = Field(None, description="Why it coalesced or replaced (idempotency-key, "
                                                 "active-limit, queue-depth).")


class WorkerProcess(BaseModel):
    model_config = ConfigDict(extra="allow")

    pid: int | None = None
    rss: int | None = None
    cpu_percent: float | None = None


class WorkerOut(BaseModel):
    """One instance's presence heartbeat (fields beyond these are passed through)."""

    model_config = ConfigDict(extra="allow")

    instance: str
    status: str = Field(description="alive (heartbeat key present) or stale.")
    age_s: float
    host: str | None = None
    pid: int | None = None
    workers: list[WorkerProcess] = Field(default_factory=list)


class ScheduleOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    job: str
    cron: str
    timezone: str | None = None
    misfire: str | None = None
    payload: JsonValue = None
    source: str | None = None
    last_fired: str | None = Field(None, description="The last tick really enqueued (ISO-8601, UTC); None: never.")
    next: list[str] = Field(default_factory=list, description="Next fire times (ISO-8601, UTC), when firing.")
    status: str | None = Field(None, description="firing | not served (no live instance serves its type) | "
                                                 "inactive (no live instance has this schedule)")
    served: bool | None = None
    error: str | None = None


class EventOut(BaseModel):
    """One lifecycle event (also the `data:` of each SSE message on /events)."""

    model_config = ConfigDict(extra="allow")

    type: str
    event: str
    job_id: str
    state: str
    attempt: int
    time: str
    stream_id: str


class ExecutionsOut(BaseModel):
    executions: list[EventOut]


class HealthProblemOut(BaseModel):
    """Something an operator must act on (`status` is then `degraded`)."""

    problem: str = Field(description="unserved_jobs: jobs queued for a type no live instance serves.")
    type: str | None = None
    queued: int | None = None
    last_served: LastServedOut | None = None
    load_errors: list[str] = Field(default_factory=list)
    message: str


class HealthOut(BaseModel):
    status: str
    redis: str
    redis_ping_ms: float | None = None
    instances: int | None = Field(None, description="Instances with a live presence heartbeat.")
    instances_stale: int | None = None
    problems: list[HealthProblemOut] = Field(default_factory=list)


def job_out(job: Any) -> dict[str, Any]:
    """A `records.Job` as the JSON of `JobOut`."""
    doc: dict[str, Any] = job.to_dict()
    doc["state"] = str(job.state)
    return doc

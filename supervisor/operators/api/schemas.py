"""Request and response models of the admin API (they are also its OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic_core import PydanticCustomError


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


class TypeOut(BaseModel):
    name: str
    source: str | None = None
    schema_: dict[str, JsonValue] = Field(default_factory=dict, alias="schema")
    policy: dict[str, JsonValue] = Field(default_factory=dict)
    instance: str | None = Field(None, description="The instance that last published the type.")
    updated: str | None = None
    counts: dict[str, int] = Field(description="Index sizes: ready, sched, active and each finished state.")
    error: str | None = Field(None, description="Set (code record_corrupt) when the type's registry entry or "
                                                "metadata was not written by job-supervisor.")
    served: bool = Field(False, description="A live instance serves the type now (else enqueue refuses it "
                                            "unless allow_unknown).")
    served_by: list[str] = Field(default_factory=list, description="The live instances that serve it.")
    last_served: LastServedOut | None = Field(None, description="The last instance that served it, and when.")
    load_errors: list[LoadErrorOut] = Field(default_factory=list,
                                            description="Load errors instances report for a file of this name.")

    model_config = ConfigDict(populate_by_name=True)


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

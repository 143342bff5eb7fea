"""Every error job-supervisor raises on purpose, with a stable `code` each.

The codes are stable: they appear in API bodies, logs, CLI output and
metrics. This module imports nothing from the project.
"""

from __future__ import annotations

from typing import Any, ClassVar

#: CLI exit codes (the only place they are defined).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # click's own code for a bad command line
EXIT_NOT_FOUND = 3
EXIT_CONFIG = 78  # sysexits EX_CONFIG; systemd's RestartPreventExitStatus
EXIT_SIGNAL = 128  # + the signal's number: `bench` stopped by SIGINT (130) or SIGTERM (143), as shells report


class SupervisorError(Exception):
    """Base for every error we raise on purpose."""

    code: ClassVar[str] = "internal"


class ConfigError(SupervisorError):
    """Raised when settings are invalid; the daemon stops before it starts."""

    code = "config_invalid"


class RedisUnsafe(ConfigError):
    """Raised when the Redis server is configured in a way that loses jobs."""

    code = "redis_unsafe"


class EmbeddedRedisError(SupervisorError):
    """Raised when the private Redis cannot be started."""

    code = "embedded_redis_failed"


class UnknownJobType(SupervisorError):
    """Raised when enqueueing a job type that no live instance serves (never published, its file
    removed, or it failed to load), unless `allow_unknown` was given.

    `last_instance` / `last_served` (ISO-8601 UTC) say which instance served it last and when;
    `load_errors` are the load errors instances report for a file of that name.
    """

    code = "unknown_job_type"

    def __init__(self, name: str, *, last_instance: str | None = None, last_served: str | None = None,
                 load_errors: tuple[str, ...] = ()) -> None:
        text = f"unknown job type {name!r}: no live instance serves it"
        if last_instance:
            text += f" (last served by instance {last_instance} at {last_served})"
        text += "."
        for error in load_errors:
            text += f" It failed to load: {error.rstrip('. ')}."
        text += (" Start a daemon whose jobs/ or tasks/ declares it (or fix its file), or pass "
                 "allow_unknown=True (CLI: --allow-unknown) to queue it anyway; it waits until an "
                 "instance serves it.")
        super().__init__(text)
        self.name = name
        self.last_instance = last_instance
        self.last_served = last_served
        self.load_errors = load_errors


class InvalidPayload(SupervisorError):
    """Raised when a payload does not match its job type's schema.

    `problems` lists every validation error as (JSON path, message), the path written
    `payload.items.0.sku`; `detail` joins them (`payload.email: ...; payload.age: ...`).
    A problem that is not about one field (not JSON, priority) has a detail and no problems.
    """

    code = "invalid_payload"

    def __init__(self, name: str, detail: str = "", *, problems: tuple[tuple[str, str], ...] = (),
                 more: int = 0) -> None:
        if not detail:
            detail = "; ".join(f"{path}: {message}" for path, message in problems)
            if more:
                detail += f"; (and {more} more)"
        super().__init__(f"invalid payload for {name!r}: {detail}")
        self.name = name
        self.detail = detail
        self.problems = problems
        self.more = more  # problems found beyond those listed (a payload with thousands of bad items)


class JobNotFound(SupervisorError):
    """Raised when a job id names no retained job."""

    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (never existed, or trimmed by retention)")
        self.job_id = job_id


class CorruptRecord(SupervisorError):
    """Raised when a value read from one of job-supervisor's Redis keys is not one it wrote
    (binary bytes, truncated or mistyped JSON, a forged field or name): HTTP 409, the key named."""

    code = "record_corrupt"

    def __init__(self, key: str, detail: str) -> None:
        key, detail = printable(key)[:300], printable(detail)[:300]  # a forged value may be huge
        super().__init__(
            f"corrupt record at Redis key {key!r}: {detail}. job-supervisor did not write this value; "
            "inspect the key (redis-cli --raw TYPE / HGETALL / GET) and delete or repair it"
        )
        self.key = key
        self.detail = detail


def printable(text: str) -> str:
    """`text` safe to log or send as JSON: bytes that were not UTF-8 (kept as lone surrogates
    by `surrogateescape` decoding) become backslash escapes."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


class InvalidTransition(SupervisorError):
    """Raised when an operation needs a state the job is not in (HTTP 409)."""

    code = "invalid_state"

    def __init__(self, job_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id!r}: it is {state}")
        self.job_id = job_id
        self.state = state
        self.action = action


class HandlerImportError(SupervisorError):
    """Raised (and reported, never fatal) when a handler file fails to load."""

    code = "handler_import_failed"

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause


class ToolchainMissing(HandlerImportError):
    """Raised (and reported, never fatal) when a task needs a program that is not installed
    (bash, pwsh, dotnet, mono): the file is fine, the host lacks what runs it."""

    code = "toolchain_missing"


class DuplicateJobType(HandlerImportError):
    """Raised when two handler files declare the same job type name."""

    code = "duplicate_job_type"


class JobRejected(SupervisorError):
    """Raised by `enqueue` when a key's queue policy refuses the job (`submit` returns it instead)."""

    code = "rejected"

    def __init__(self, name: str, key: str, reason: str, existing: str | None) -> None:
        what = "its active limit" if reason == "active-limit" else "its queue depth"
        super().__init__(
            f"job of {name!r} rejected: key {key!r} is at {what} (live job {existing}); "
            "use submit() to get the outcome without an exception, or a queue policy that "
            "coalesces or replaces"
        )
        self.name = name
        self.key = key
        self.reason = reason
        self.existing = existing


class InvalidWorkflow(SupervisorError):
    """Raised when a workflow, a batch or a job's `depends_on` cannot be accepted: a cycle, a step
    that names no step, a dependency that is no job, a batch that no longer takes jobs."""

    code = "invalid_workflow"


class WorkflowNotFound(SupervisorError):
    """Raised when a workflow or batch id names none that is retained."""

    code = "workflow_not_found"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"no {kind} {ident!r} (never created, or trimmed by retention)")
        self.ident = ident


class TypeNotFound(SupervisorError):
    """Raised when an operator's action names a job type that no instance ever published (a typo,
    most often), unless `allow_unknown` was given."""

    code = "type_not_found"

    def __init__(self, name: str, action: str) -> None:
        super().__init__(
            f"no job type {name!r}: no instance has ever served it (`job-supervisor types` lists them); "
            f"to {action} it before its first instance starts, pass allow_unknown=True (CLI: --allow-unknown)")
        self.name = name


class WaitTimeout(SupervisorError):
    """Raised when `wait` gives up before the job finishes."""

    code = "wait_timeout"


class JobFailed(SupervisorError):
    """Raised by `wait(..., raise_on_failure=True)` when a job ends other than completed."""

    code = "job_failed"

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} ended {job.state}: {job.error}")
        self.job = job


# --- control flow raised by handlers -------------------------------------------------


class PermanentError(Exception):
    """Raise in a handler to fail the job permanently: it ends `failed`, no retry."""


class Retry(Exception):
    """Raise in a handler to ask for a retry after `delay` seconds (counts as a delivery)."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay

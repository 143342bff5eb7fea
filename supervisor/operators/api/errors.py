"""Error code -> HTTP status, in one table, and the JSON error body every route returns.

Body: `{"error": {"code": "...", "message": "...", "field"?: "...", "state"?: "...", "action"?: "..."}}`.
`code` is the stable `SupervisorError.code` (or one of the API's own codes below);
`field` names the request part at fault (`payload.items.0.sku`, `limit`, `cursor`);
a 422 `invalid_payload` lists every validation error in `errors` (`[{"field", "message"}]`,
at most 20, `more` counting the rest), `field` being the first one's;
a 409 `invalid_state` carries the job's current `state`, the refused `action` and a
`reason` naming the states that action needs; a 409
`rejected` (keyed concurrency) the `key`, the `reason` and the live `job_id` holding it;
a 409 `record_corrupt` the Redis `key` whose value job-supervisor did not write.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor.errors import CorruptRecord, InvalidPayload, InvalidTransition, SupervisorError

#: The one table: error code -> HTTP status. Unknown codes are 500.
STATUS_BY_CODE: dict[str, int] = {
    "job_not_found": 404,
    "workflow_not_found": 404,
    "type_not_found": 404,
    "invalid_workflow": 422,  # a bad depends_on, a cycle, a batch that takes no more jobs
    "unknown_job_type": 404,  # the path names the type (/types/{name}/trigger): no such resource
    "not_found": 404,
    "invalid_state": 409,
    "rejected": 409,  # a concurrency key's queue policy refused the job (JobRejected)
    # A stored value job-supervisor did not write (CorruptRecord): the request is fine, the
    # resource's state in Redis is not (409, as for a state conflict), never a 500.
    "record_corrupt": 409,
    "invalid_payload": 422,
    "invalid_request": 422,
    "unauthorized": 401,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "not_implemented": 501,
    "redis_unavailable": 503,
    "wait_timeout": 504,
    "internal": 500,
}
#: The states each operator action accepts (SPEC §3), for the `reason` of a 409.
_NEEDS = {"cancel": "pending, retry or active", "retry": "failed", "replay": "dead", "dismiss": "dead"}
_CODE_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large",
                   422: "invalid_request", 501: "not_implemented", 503: "redis_unavailable"}


class ApiError(Exception):
    """Raised by routes for API-level failures that are not `SupervisorError`s (bad cursor, 501)."""

    def __init__(self, code: str, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        err["field"] = field
    err.update({k: v for k, v in extra.items() if v is not None})
    return {"error": err}


def error_response(code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, field, **extra), status_code=STATUS_BY_CODE.get(code, 500),
                        headers=headers)


def _loc_field(loc: Any) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


async def _supervisor_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SupervisorError)
    if isinstance(exc, InvalidTransition):
        needs = _NEEDS.get(exc.action)
        reason = f"{exc.action} needs a job that is {needs}; this one is {exc.state}" if needs else str(exc)
        return error_response(exc.code, str(exc), state=exc.state, action=exc.action, reason=reason,
                              job_id=exc.job_id)
    if isinstance(exc, InvalidPayload):  # every problem, each with its path; `field` is the first's
        problems = [{"field": path, "message": message} for path, message in exc.problems]
        return error_response(exc.code, str(exc), field=problems[0]["field"] if problems else "payload",
                              errors=problems or None, more=exc.more or None)
    if isinstance(exc, CorruptRecord):  # the Redis key holding the bad value
        return error_response(exc.code, str(exc), key=exc.key)
    if exc.code == "rejected":  # JobRejected: which key, why, and the live job that holds it
        return error_response(exc.code, str(exc), key=getattr(exc, "key", None),
                              reason=getattr(exc, "reason", None), job_id=getattr(exc, "existing", None))
    return error_response(exc.code, str(exc))


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.code, exc.message, exc.field, **exc.extra)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = _loc_field(first.get("loc", ()))
    message = "; ".join(f"{_loc_field(e.get('loc', ()))}: {e.get('msg')}" for e in errors) or "invalid request"
    return error_response("invalid_request", message, field)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # an undecodable body (FastAPI): same answer as any invalid request
        return error_response("invalid_request", f"body: {exc.detail}", "body")
    code = _CODE_BY_STATUS.get(exc.status_code, "internal" if exc.status_code >= 500 else "invalid_request")
    body = error_body(code, str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _redis_down(_request: Request, exc: Exception) -> JSONResponse:
    return error_response("redis_unavailable", f"Redis is unreachable: {exc}", headers={"Retry-After": "1"})


async def _internal(_request: Request, exc: Exception) -> JSONResponse:
    import structlog  # noqa: PLC0415

    structlog.get_logger(__name__).error("api.internal_error", error=repr(exc), exc_info=exc)
    return error_response("internal", "internal error (logged by the server)")


HANDLERS: dict[type[Exception] | int, Any] = {
    SupervisorError: _supervisor_error,
    ApiError: _api_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    RedisConnectionError: _redis_down,
    RedisTimeoutError: _redis_down,
    ConnectionError: _redis_down,
    Exception: _internal,
}

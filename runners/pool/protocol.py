"""The messages between the daemon and its pool workers, and their JSON codec (both sides use it).

JSON text only crosses the pipe (no pickled user objects, in either direction):
one message per line, several lines per write when they are ready together.

Protocol (one JSON array per line, its first item names the message):

    daemon -> worker   run job_id name attempt payload_json context deadline lanes
                       cancel job_id | reclaim [job_id...] | stop
                       enqueued req ok value|error
    worker -> daemon   ready pid types errors async_types
                       started job_id
                       result job_id status result error retry_delay_s rss busy [traceback]
                         (busy: a sync run's share of its wall time on or waiting for a CPU)
                       dropped job_id (a cancelled queued job: never started)
                       returned [job_id...] (queued jobs handed back: never started)
                       progress job_id percent message step | heartbeat job_id
                       enqueue job_id req name payload options submit
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import structlog
from pydantic import BaseModel

import supervisor.errors
from supervisor.errors import SupervisorError
from supervisor.producers.client import JobRef

log = structlog.get_logger(__name__)


def _encode_extra(value: Any) -> Any:
    """`json.dumps(default=)` for what handlers pass to `ctx.enqueue` beyond plain JSON."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


_encode = json.JSONEncoder(separators=(",", ":")).encode
_encode_with_extra = json.JSONEncoder(separators=(",", ":"), default=_encode_extra).encode


def pack_enqueue(job_id: str, req: int, name: str, payload: Any, options: dict[str, Any], submit: bool) -> bytes:
    """A worker's `enqueue` message (what handlers pass beyond plain JSON included, see `revive`)."""
    return (_encode_with_extra(["enqueue", job_id, req, name, payload, options, submit]) + "\n").encode()


def pack(msg: list[Any]) -> bytes:
    """One message as one line (JSON text never holds a raw newline)."""
    return (_encode(msg) + "\n").encode()


def unpack(chunk: bytes) -> list[Any]:
    """The messages in `chunk`: complete lines, without the last newline."""
    try:
        # One parse for the whole burst: lines are JSON values, so commas make them one array.
        messages: list[Any] = json.loads(b"[" + chunk.replace(b"\n", b",") + b"]")
    except ValueError:
        messages = []
        for line in chunk.split(b"\n"):  # find the bad line; keep the others
            try:
                messages.append(json.loads(line))
            except ValueError as exc:
                log.error("pool.bad_message", error=f"{type(exc).__name__}: {exc}", size=len(line))
    return messages


def revive(value: Any) -> Any:
    """The daemon-side twin of `_encode_extra`: datetimes come back as datetimes."""
    if isinstance(value, dict):
        if len(value) == 1 and "$datetime" in value:
            return datetime.fromisoformat(value["$datetime"])
        return {k: revive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [revive(v) for v in value]
    return value


def encode_enqueue_value(value: Any) -> Any:
    """What `child_enqueue` returned, as JSON (a JobRef travels as its fields)."""
    if isinstance(value, JobRef):
        return {"$jobref": {"id": value.id, "name": value.name, "existing": value.existing}}
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def encode_error(exc: BaseException) -> dict[str, Any]:
    """An exception raised by `child_enqueue`, as JSON the worker can rebuild."""
    attrs = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc), "attrs": attrs}


def _rebuild_error(err: dict[str, Any]) -> Exception:
    """The worker-side twin of `encode_error`: our own error classes come back as themselves."""
    cls = getattr(supervisor.errors, err["type"], None) if err.get("module") == "supervisor.errors" else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        # Skip the class's own __init__ (its arguments differ per class); restore its fields instead.
        exc: Exception = cls.__new__(cls)
        Exception.__init__(exc, err["message"])
        exc.__dict__.update(err.get("attrs") or {})
        return exc
    return SupervisorError(f"enqueue failed in the daemon: {err['type']}: {err['message']}")


def decode_reply(reply: list[Any]) -> Any:
    """An `enqueued` message: the value `ctx.enqueue` returns, or the error it raises."""
    _, _, ok, value = reply
    if not ok:
        raise _rebuild_error(value)
    if isinstance(value, dict) and "$jobref" in value:
        return JobRef(**value["$jobref"])
    return value


#: The `stop` message (the same bytes every time).
STOP = pack(["stop"])

"""`Job`: a job's record as read from Redis, in Python types.

A record is read as hostile: a value job-supervisor did not write (bytes that are not UTF-8,
truncated or mistyped JSON, a missing `state` or `name`, a forged history) raises
`CorruptRecord` naming the key, never a bare ValueError or UnicodeError. Fields this version
does not know are ignored (a newer version may add some).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from supervisor.engine.keys import job_key, tag_for
from supervisor.engine.states import FINISHED, State
from supervisor.errors import CorruptRecord

#: What a value that does not parse raises (json's and Unicode's errors are ValueErrors).
PARSE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, OSError)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def indexed_job_key(job_id: str, bad: list[CorruptRecord]) -> str | None:
    """The record key of an index member; None, with what is wrong added to `bad`, when the member
    is not a job id (another program wrote it)."""
    try:
        return job_key(job_id)
    except ValueError as exc:
        bad.append(CorruptRecord(job_id, f"an index holds {str(exc).replace(repr(job_id), 'it')}"))
        return None


def hash_reply(flat: Any) -> dict[str, str]:
    """An HGETALL reply as a dict of str: a flat list (the wire, RESP2) or a mapping (redis-py)."""
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def check_text(value: str) -> str:
    """`value` when it is text (UTF-8 in Redis); ValueError for bytes that were not (decoded to
    lone surrogates by the readers' `surrogateescape`)."""
    if not value.isascii():
        value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    return value


def loads(value: str) -> Any:
    """JSON text as read from Redis; ValueError for anything else, including a JSON string
    escape of a lone surrogate (it would fail every JSON answer later)."""
    doc = _DECODE(check_text(value))
    if "\\u" in value and _SURROGATE_ESCAPE.search(value):  # rare: only then the deep check
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN/Infinity; no JSON answer can hold them


# One decoder for every read: `json.loads` with an option builds a new decoder per call.
_DECODE = json.JSONDecoder(parse_constant=_no_constant).decode


def _ms(value: str | None) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _json(value: str | None) -> Any:
    if value in (None, ""):
        return None
    return loads(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return check_text(value)


def _typed(kind: type, what: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"expected {what}, got {type(value).__name__}")
        return value
    return check


def parsed(key: str, what: str, parse: Callable[[Any], Any], value: Any) -> Any:
    """`parse(value)`, or CorruptRecord naming `key` and `what` (a field) when it fails."""
    try:
        return parse(value)
    except PARSE_ERRORS as exc:
        raise CorruptRecord(key, f"field {what!r}: {type(exc).__name__}: {exc}") from None


@dataclass(slots=True)
class Attempt:
    """One delivery of a job: when it ran, where, and how it ended."""

    attempt: int
    started: datetime | None
    ended: datetime | None
    outcome: str
    instance: str | None
    error: str | None = None
    traceback: str | None = None  # the failure's stack trace (tasks: last stderr lines); newest attempts only

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Attempt:
        """One entry of a record's history (raises TypeError/ValueError when it is not one)."""
        if not isinstance(raw, dict):
            raise TypeError(f"a history entry is {type(raw).__name__}, not an object")
        return cls(
            attempt=int(raw.get("attempt") or 0),
            started=_ms(raw.get("started")),
            ended=_ms(raw.get("ended")),
            outcome=str(raw.get("outcome")),
            instance=_text(raw.get("instance")),
            error=_text(raw.get("error")),
            traceback=_text(raw.get("traceback")),
        )


@dataclass(slots=True)
class Action:
    """An operator's action on a job (cancel, retry, replay, dismiss), as its history records it."""

    action: str
    at: datetime | None
    source: str  # cli | api | client
    by: str | None = None  # the API token's name, or the local user of the CLI

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Action:
        return cls(action=str(_text(raw.get("action"))), at=_ms(raw.get("at")),
                   source=str(_text(raw.get("source")) or ""), by=_text(raw.get("by")))


def _history(value: str | None) -> tuple[list[Attempt], list[Action]]:
    """A record's history: its attempts and, apart, the operators' actions (entries with "action")."""
    attempts, actions = [], []
    for entry in _typed(list, "a list")(_json(value)) or []:
        if isinstance(entry, dict) and "action" in entry:
            actions.append(Action.from_dict(entry))
        else:
            attempts.append(Attempt.from_dict(entry))
    return attempts, actions


def _with_completing_attempt(attempts: list[Attempt], f: Callable[[str, Callable[[Any], Any]], Any]) -> list[Attempt]:
    """A completed record's attempts with the one that completed it: complete.lua does not append
    it to the history (the record's `deliveries`, `started`, `finished` and `worker` are that
    attempt). A history that has it already (written before that change) is left as it is; a
    released attempt (handed back on shutdown) shares its number with the next one, so only a
    completed entry counts."""
    number = f("deliveries", lambda v: int(v or 0))
    if any(a.attempt == number and a.outcome == "completed" for a in attempts):
        return attempts
    return [*attempts, Attempt(attempt=number, started=f("started", _ms), ended=f("finished", _ms),
                               outcome="completed", instance=f("worker", _text))]


@dataclass(slots=True)
class Job:
    """A job's record: its state, payload, outcome and every attempt so far."""

    id: str
    name: str
    state: State
    payload: Any
    priority: int = 0
    created: datetime | None = None
    run_at: datetime | None = None
    deadline: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    deliveries: int = 0
    result: Any = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    context: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    instance: str | None = None
    cancel_requested: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)

    @property
    def finished_running(self) -> bool:
        """True once the job is in a finished state (terminal, failed or dead)."""
        return self.state in FINISHED

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str], key: str | None = None) -> Job:
        """Build a Job from the Redis hash of its record (`key`, for errors: the record's key).

        Raises CorruptRecord, naming the key and the field, for a value it cannot read.
        """
        key = key or f"job {job_id}"

        def f(name: str, parse: Callable[[Any], Any] = _text) -> Any:
            return parsed(key, name, parse, raw.get(name))

        for required in ("name", "state"):
            if not raw.get(required):
                raise CorruptRecord(key, f"no {required!r} field (fields: {', '.join(sorted(raw)[:20])})")
        parsed(key, "id", check_text, job_id)
        name = f("name")
        if tag_for(name) != job_id.partition("-")[0]:  # a job's id starts with its type's tag
            raise CorruptRecord(key, f"field 'name': {name!r} is not the type of job {job_id}")
        attempts, actions = f("history", _history)
        state = f("state", State)
        if state is State.COMPLETED:
            attempts = _with_completing_attempt(attempts, f)
        return cls(
            id=job_id,
            name=name,
            state=state,
            payload=f("payload", _json),
            priority=f("priority", lambda v: int(v or 0)),
            created=f("created", _ms),
            run_at=f("run_at", _ms),
            deadline=f("deadline", _ms),
            started=f("started", _ms),
            finished=f("finished", _ms),
            deliveries=f("deliveries", lambda v: int(v or 0)),
            result=f("result", _json),
            error=f("error"),
            progress=f("progress", lambda v: _typed(dict, "an object")(_json(v))),
            context=f("ctx", lambda v: _typed(dict, "an object")(_json(v))) or {},
            parent=f("parent"),
            idempotency_key=f("idem"),
            concurrency_key=f("ckey"),
            instance=f("worker"),
            cancel_requested=f("cancel"),
            attempts=attempts,
            actions=actions,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (datetimes as ISO-8601 strings)."""

        def conv(value: Any) -> Any:
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, list):
                return [conv(v) for v in value]
            if isinstance(value, dict):
                return {k: conv(v) for k, v in value.items()}
            return value

        return cast(dict[str, Any], conv(asdict(self)))

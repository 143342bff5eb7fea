"""`Job`: a job's record as read from Redis, in Python types."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from supervisor.states import FINISHED, State


def _ms(value: str | None) -> datetime | None:
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _json(value: str | None) -> Any:
    if value in (None, ""):
        return None
    return json.loads(value)


@dataclass(slots=True)
class Attempt:
    """One delivery of a job: when it ran, where, and how it ended."""

    attempt: int
    started: datetime | None
    ended: datetime | None
    outcome: str
    instance: str | None
    error: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Attempt:
        return cls(
            attempt=int(raw.get("attempt") or 0),
            started=_ms(raw.get("started")),
            ended=_ms(raw.get("ended")),
            outcome=str(raw.get("outcome")),
            instance=raw.get("instance"),
            error=raw.get("error"),
        )


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

    @property
    def finished_running(self) -> bool:
        """True once the job is in a finished state (terminal, failed or dead)."""
        return self.state in FINISHED

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str]) -> Job:
        """Build a Job from the Redis hash of its record."""
        return cls(
            id=job_id,
            name=raw.get("name", ""),
            state=State(raw.get("state", "pending")),
            payload=_json(raw.get("payload")),
            priority=int(raw.get("priority") or 0),
            created=_ms(raw.get("created")),
            run_at=_ms(raw.get("run_at")),
            deadline=_ms(raw.get("deadline")),
            started=_ms(raw.get("started")),
            finished=_ms(raw.get("finished")),
            deliveries=int(raw.get("deliveries") or 0),
            result=_json(raw.get("result")),
            error=raw.get("error"),
            progress=_json(raw.get("progress")),
            context=_json(raw.get("ctx")) or {},
            parent=raw.get("parent"),
            idempotency_key=raw.get("idem"),
            concurrency_key=raw.get("ckey"),
            instance=raw.get("worker"),
            cancel_requested=raw.get("cancel"),
            attempts=[Attempt.from_dict(a) for a in (_json(raw.get("history")) or [])],
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

        return conv(asdict(self))

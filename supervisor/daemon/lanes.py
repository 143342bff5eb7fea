"""What the dispatcher keeps of each served type and each running job.

`ServedType` is the view of a type's resolved `TypePolicy` read on every claim, run and settle;
`InFlight` is one running job; `Lane` is one type's state (jobs in flight, its fetch loop, the
outcomes waiting to be written). Plain data: the dispatcher (`dispatcher.py`) and its liveness
loops (`liveness.py`) change it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from supervisor.engine.broker import ClaimedJob
from supervisor.policy import TypePolicy


class ServedType:
    """A view of one job type's resolved `TypePolicy`: what this instance reads of it on every
    claim, run and settle, computed once when the type is (re)loaded."""

    __slots__ = ("ack_wait_ms", "ack_wait_s", "backoff", "concurrency", "max_deliver", "name", "policy",
                 "rate", "rate_period_ms", "retention_s", "runtime", "source", "timeout_s")

    def __init__(self, policy: TypePolicy, source: str) -> None:
        p = self.policy = policy
        if (p.runtime is None or p.concurrency is None or p.ack_wait is None or p.max_deliver is None
                or p.retention is None or p.backoff is None):
            raise ValueError(f"{p.name}: the policy is not resolved against the settings (TypePolicy.resolve)")
        self.name, self.source, self.runtime, self.concurrency = p.name, source, p.runtime, p.concurrency
        self.ack_wait_s, self.ack_wait_ms = p.ack_wait, int(p.ack_wait * 1000)
        self.max_deliver, self.backoff, self.timeout_s = p.max_deliver, p.backoff, p.timeout
        self.retention_s = p.retention
        # jobs per rate_period_ms across all instances (0: no limit)
        self.rate, self.rate_period_ms = (p.rate_limit.count, p.rate_limit.period_ms) if p.rate_limit else (0, 0)


@dataclass(slots=True)
class InFlight:
    """A job this instance is running."""

    job: ClaimedJob
    served: ServedType
    cancel: asyncio.Event
    started: float
    task: asyncio.Task[None] | None = None
    progress: str | None = None
    trace_id: str | None = None
    request_id: str | None = None  # telemetry: on every line logged for the job (job.output, run.finished)
    log_lines: list[str] = field(default_factory=list)
    lease_lost: bool = False
    outcome: str = "running"  # or "releasing": stopped by the drain timeout, handed back to the queue

    @property
    def fate(self) -> str:
        """What became of the job, for the shutdown report: finished, released, cancelled, or
        left (still running when the daemon stopped, or its release failed: its lease lapses)."""
        if self.outcome in ("released", "cancelled"):
            return self.outcome
        if self.outcome in ("running", "releasing") or self.outcome.startswith("fenced"):
            return "left"
        return "finished"


@dataclass(slots=True)
class Lane:
    """Per-type state: in-flight jobs, the fetch loop, and outcomes waiting to be written."""

    served: ServedType
    inflight: dict[str, InFlight] = field(default_factory=dict)
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    fetch: asyncio.Task[None] | None = None
    waiting: bool = False
    retired: bool = False  # removed by a reload: claims nothing more, finishes what it runs
    halt_token: str = ""  # names the claims sent behind this lane's waits (Broker.wait_then_claim)
    completes: list[tuple[str, str, str, str]] = field(default_factory=list)
    fails: list[tuple[str, str, str, str, int, str, str]] = field(default_factory=list)
    cancels: list[tuple[str, str, str]] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    unsettled: int = 0

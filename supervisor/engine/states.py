"""Job states and the legal transitions between them (SPEC §3).

This module is the single source of the state table. The Lua scripts that
perform transitions in Redis receive the table from here (see
`supervisor.engine.scripts`), so Python and Redis can never disagree about what is
legal. It imports nothing from the project.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a job is in its life."""

    WAITING = "waiting"  # on its dependencies (depends_on, a workflow): pending once they settle
    PENDING = "pending"
    ACTIVE = "active"
    RETRY = "retry"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DISMISSED = "dismissed"


#: Legal transitions: state -> states it may move to.
TRANSITIONS: dict[State, frozenset[State]] = {
    # Released (lua/deps.lua) once every dependency settled as its on_dependency_failure allows;
    # cancelled by a failed dependency (policy "cancel") or a request; expired at its deadline.
    State.WAITING: frozenset({State.PENDING, State.CANCELLED, State.EXPIRED}),
    State.PENDING: frozenset({State.ACTIVE, State.CANCELLED, State.EXPIRED}),
    State.ACTIVE: frozenset(
        {
            State.COMPLETED,
            State.RETRY,
            State.FAILED,
            State.DEAD,
            State.CANCELLED,
            State.EXPIRED,
            # Released on shutdown: the lease is handed back without counting
            # a failed attempt, so another instance takes it at once.
            State.PENDING,
        }
    ),
    State.RETRY: frozenset({State.ACTIVE, State.CANCELLED, State.DEAD, State.EXPIRED}),
    State.COMPLETED: frozenset(),
    State.FAILED: frozenset({State.PENDING}),  # operator `retry`
    State.DEAD: frozenset({State.PENDING, State.DISMISSED}),  # `replay` / `dismiss`
    State.CANCELLED: frozenset(),
    State.EXPIRED: frozenset(),
    State.DISMISSED: frozenset(),
}

#: States a job never leaves (retention trims them).
TERMINAL: frozenset[State] = frozenset(
    {State.COMPLETED, State.CANCELLED, State.EXPIRED, State.DISMISSED}
)
#: States where the job is finished running but an operator may still act.
PARKED: frozenset[State] = frozenset({State.FAILED, State.DEAD})
#: States where the job still waits to run or is running.
LIVE: frozenset[State] = frozenset({State.WAITING, State.PENDING, State.ACTIVE, State.RETRY})
#: States kept in a per-state index sorted by finish time.
FINISHED: frozenset[State] = TERMINAL | PARKED


def can_transition(source: State, target: State) -> bool:
    """True when SPEC §3 allows moving a job from `source` to `target`."""
    return target in TRANSITIONS[source]


class Outcome(StrEnum):
    """How one attempt (a Run) ended, as recorded in the job's history."""

    COMPLETED = "completed"
    FAILED = "failed"  # retryable failure (exception, Retry)
    PERMANENT = "permanent"  # PermanentError or invalid payload
    LEASE_EXPIRED = "lease-expired"  # the worker vanished; lease lapsed
    RELEASED = "released"  # handed back on shutdown; not a failed attempt
    CANCELLED = "cancelled"
    EXPIRED = "expired"

"""A job's record read as a `Job` (supervisor/engine/records.py): the attempt that completed a job
is read from the record's own fields (complete.lua does not repeat it in the history)."""

from __future__ import annotations

import json

from supervisor.engine.keys import new_job_id
from supervisor.engine.records import Job

NAME = "orders.charge-payment"


def record(**fields: str) -> dict[str, str]:
    return {"name": NAME, "payload": "{}", "created": "1733470000000", **fields}


def test_the_completing_attempt_comes_from_the_record() -> None:
    failed = {"attempt": 1, "started": 1733470000100, "ended": 1733470000200, "outcome": "failed",
              "instance": "a", "error": "boom"}
    raw = record(state="completed", deliveries="2", started="1733470001000", finished="1733470001500",
                 worker="b", result="42", history=json.dumps([failed, {"action": "retry", "at": 1, "source": "cli"}]))
    job = Job.from_hash(new_job_id(NAME), raw)
    assert [(a.attempt, a.outcome, a.instance) for a in job.attempts] == [(1, "failed", "a"), (2, "completed", "b")]
    last = job.attempts[-1]
    assert last.started == job.started and last.ended == job.finished and last.error is None
    assert [a.action for a in job.actions] == ["retry"]


def test_a_history_that_has_the_completing_attempt_is_kept_as_it_is() -> None:
    done = {"attempt": 1, "started": 1733470000100, "ended": 1733470000200, "outcome": "completed", "instance": "a"}
    raw = record(state="completed", deliveries="1", started="1733470000100", finished="1733470000200",
                 worker="a", history=json.dumps([done]))
    job = Job.from_hash(new_job_id(NAME), raw)
    assert len(job.attempts) == 1 and job.attempts[0].outcome == "completed"


def test_only_completed_records_get_an_attempt_from_their_fields() -> None:
    raw = record(state="active", deliveries="1", started="1733470000100", worker="a")
    assert Job.from_hash(new_job_id(NAME), raw).attempts == []


def test_a_released_attempt_does_not_hide_the_completing_one() -> None:
    # release.lua hands the attempt back (deliveries - 1), so the next delivery has its number again
    released = {"attempt": 1, "started": 1733470000100, "ended": 1733470000200, "outcome": "released", "instance": "a"}
    raw = record(state="completed", deliveries="1", started="1733470001000", finished="1733470001500",
                 worker="b", history=json.dumps([released]))
    job = Job.from_hash(new_job_id(NAME), raw)
    assert [(a.attempt, a.outcome, a.instance) for a in job.attempts] == [(1, "released", "a"), (1, "completed", "b")]

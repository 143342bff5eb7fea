"""A pool worker's states: the transition table and the one `transition` that enforces it."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import types
from collections.abc import Iterator

import pytest

from runners.pool.pipe import Outbox
from runners.pool.worker import TRANSITIONS, IllegalWorkerTransition, Worker, WorkerState, can_transition

S = WorkerState


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A Worker over a real socket pair, with a stand-in for its process (no process is started)."""
    loop = asyncio.new_event_loop()
    ours, theirs = multiprocessing.Pipe(duplex=True)
    w = Worker(types.SimpleNamespace(pid=4242), ours, 0, Outbox(loop))  # type: ignore[arg-type]
    yield w
    ours.close()
    theirs.close()
    loop.close()


def test_the_table_follows_a_workers_life() -> None:
    assert set(TRANSITIONS) == set(WorkerState)
    assert TRANSITIONS[S.DEAD] == frozenset()  # final
    assert not any(S.STARTING in targets for targets in TRANSITIONS.values())  # nothing starts again
    assert all(S.DEAD in TRANSITIONS[s] for s in WorkerState if s is not S.DEAD)  # any live worker can die
    assert not can_transition(S.RETIRING, S.READY)  # out of service is for good


def test_legal_path_and_death_closes_the_pipe(worker: Worker) -> None:
    assert worker.state is S.STARTING and worker.open
    worker.transition(S.READY)
    worker.retire()
    worker.retire()  # already retiring: no change, no error
    assert worker.state is S.RETIRING
    worker.transition(S.DEAD)
    assert worker.state is S.DEAD and not worker.open
    worker.post(b'["stop"]\n')  # nothing is queued for a dead worker
    assert worker.out == [] and worker.outbox.dirty == []
    worker.retire()  # a dead worker stays dead
    assert worker.state is S.DEAD


@pytest.mark.parametrize(("source", "target"), [
    (s, t) for s, t in itertools.product(WorkerState, WorkerState) if t not in TRANSITIONS[s]])
def test_illegal_transitions_are_refused(worker: Worker, source: WorkerState, target: WorkerState) -> None:
    worker.state = source  # put it there directly: only the move under test goes through the check
    with pytest.raises(IllegalWorkerTransition, match=f"{source} -> {target}"):
        worker.transition(target)
    assert worker.state is source

"""job-supervisor: a Redis-backed job daemon.

Handlers import what they need from here; this module's exports are the
public API (SPEC §1). They are loaded on first use (PEP 562), so a handler
file that only needs `job` does not pay for the Redis client: that keeps a
`runtime="subprocess"` Python job, a fresh interpreter per run, quick to start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "producers.client", "EnqueueRequest": "producers.client", "JobRef": "producers.client",
    "SyncClient": "producers.client",
    "Context": "context",
    "InvalidPayload": "errors", "InvalidTransition": "errors", "JobFailed": "errors", "JobNotFound": "errors",
    "JobRejected": "errors", "PermanentError": "errors", "Retry": "errors", "SupervisorError": "errors",
    "UnknownJobType": "errors", "WaitTimeout": "errors",
    "SubmitOutcome": "flow",
    "Backoff": "policy", "Failure": "handler", "job": "handler",
    "Attempt": "engine.records", "Job": "engine.records",
    "ShutdownManager": "daemon.shutdown", "ShutdownReport": "daemon.shutdown",
    "State": "engine.states",
    "Step": "producers.workflows", "chain": "producers.workflows", "group": "producers.workflows",
    "chord": "producers.workflows", "dag": "producers.workflows", "Callback": "producers.workflows",
    "Graph": "producers.workflows",
    "InvalidWorkflow": "errors", "WorkflowNotFound": "errors",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605  (computed from _EXPORTS, the one list of the API)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"supervisor.{module}"), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly (`X as X`: re-exported)
    from supervisor.context import Context as Context
    from supervisor.daemon.shutdown import ShutdownManager as ShutdownManager, ShutdownReport as ShutdownReport
    from supervisor.engine.records import Attempt as Attempt, Job as Job
    from supervisor.engine.states import State as State
    from supervisor.errors import (
        InvalidPayload as InvalidPayload,
        InvalidTransition as InvalidTransition,
        InvalidWorkflow as InvalidWorkflow,
        JobFailed as JobFailed,
        JobNotFound as JobNotFound,
        JobRejected as JobRejected,
        PermanentError as PermanentError,
        Retry as Retry,
        SupervisorError as SupervisorError,
        UnknownJobType as UnknownJobType,
        WaitTimeout as WaitTimeout,
        WorkflowNotFound as WorkflowNotFound,
    )
    from supervisor.flow import SubmitOutcome as SubmitOutcome
    from supervisor.handler import Failure as Failure, job as job
    from supervisor.policy import Backoff as Backoff
    from supervisor.producers.client import (
        Client as Client,
        EnqueueRequest as EnqueueRequest,
        JobRef as JobRef,
        SyncClient as SyncClient,
    )
    from supervisor.producers.workflows import (
        Callback as Callback,
        Graph as Graph,
        Step as Step,
        chain as chain,
        chord as chord,
        dag as dag,
        group as group,
    )

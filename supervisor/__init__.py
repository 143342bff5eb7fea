"""job-supervisor: a Redis-backed job daemon.

Handlers import what they need from here; this module's exports are the
public API (SPEC §1).
"""

from supervisor.client import Client, EnqueueRequest, JobRef, SyncClient
from supervisor.context import Context
from supervisor.errors import (
    InvalidPayload,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    JobRejected,
    PermanentError,
    Retry,
    SupervisorError,
    UnknownJobType,
    WaitTimeout,
)
from supervisor.flow import SubmitOutcome
from supervisor.handler import Backoff, Failure, job
from supervisor.records import Attempt, Job
from supervisor.shutdown import ShutdownManager, ShutdownReport
from supervisor.states import State

__version__ = "0.1.0"

__all__ = [
    "Attempt", "Backoff", "Client", "Context", "EnqueueRequest", "Failure", "InvalidPayload",
    "InvalidTransition", "Job", "JobFailed", "JobNotFound", "JobRef", "JobRejected", "PermanentError", "Retry",
    "ShutdownManager", "ShutdownReport", "State", "SubmitOutcome", "SupervisorError", "SyncClient", "UnknownJobType",
    "WaitTimeout", "job",
]

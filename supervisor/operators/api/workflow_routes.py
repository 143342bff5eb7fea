"""The admin API's routes for workflows and batches (`supervisor.producers.workflows`): the same
reads and cancel the CLI's `workflows` and `batches` commands make, through the API's `Client`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Security

from supervisor.operators.api.routes import CancelIn, _actor, _state, bearer
from supervisor.operators.api.schemas import ErrorResponse
from supervisor.operators.job_links import job_links as read_links

router = APIRouter(dependencies=[Security(bearer)], tags=["workflows"])
_404: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "No such workflow or batch"}}
WorkflowId = Annotated[str, Path(description="Workflow id, e.g. wf-9b1f0e2d4c6a8e0f", max_length=200)]


def _client(request: Request) -> Any:
    return _state(request).client


@router.get("/workflows")
async def list_workflows(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """The newest workflows: id, name, created (ms), state (derived from their jobs), jobs per state."""
    return {"workflows": await _client(request).list_workflows(limit)}


@router.get("/workflows/{workflow_id}", responses=_404)
async def get_workflow(request: Request, workflow_id: WorkflowId) -> dict[str, Any]:
    """One workflow: its state and its graph, each step with its type, job id, state and what it waits for."""
    result: dict[str, Any] = await _client(request).get_workflow(workflow_id)
    return result


@router.post("/workflows/{workflow_id}/cancel", responses=_404)
async def cancel_workflow(request: Request, workflow_id: WorkflowId,
                          body: CancelIn | None = None) -> dict[str, Any]:
    """Cancel every job of the workflow not finished yet: waiting and pending ones at once, running
    ones asked to stop. What the cancel did to each step's job."""
    reason = body.reason if body else "workflow cancelled through the API"
    done = await _client(request).cancel_workflow(workflow_id, reason, **_actor(request))
    return {"id": workflow_id, "jobs": done}


@router.get("/jobs/{job_id}/links", responses=_404)
async def job_links(request: Request,
                    job_id: Annotated[str, Path(description="Job id, e.g. 3fa9c1-9b1f0e2d4c6a8e0f", max_length=200)],
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """A job's place in the graph: its workflow (id and step key) and batch, its dependencies (each
    with its state, and how it ended as this job heard it), how many are still awaited, and the jobs
    that wait on it. Lists hold at most `limit` entries (`truncated` says when there were more)."""
    return await read_links(_client(request).broker, job_id, limit)


@router.get("/batches/{batch_id}", responses=_404)
async def get_batch(request: Request,
                    batch_id: Annotated[str, Path(description="Batch id, e.g. b-9b1f0e2d4c6a8e0f",
                                                  max_length=200)]) -> dict[str, Any]:
    """A batch's state and counts: total, settled, pending, completed, failed; its callbacks (type,
    whether it fired, its job)."""
    result: dict[str, Any] = await _client(request).batch_status(batch_id)
    return result


__all__ = ["router"]

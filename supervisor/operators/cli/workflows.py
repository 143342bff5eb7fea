"""Commands about workflows and batches: `workflows list|get|cancel`, `batches get`
(`supervisor.producers.workflows`; docs/workflows.md)."""

from __future__ import annotations

from typing import Any

import click

from supervisor.operators.cli.app import local_user, print_json, redis_url, run_async, settings_of
from supervisor.operators.cli.tables import print_table, wide_option


async def _with_client(ctx: click.Context, act: Any) -> Any:
    from supervisor.producers.client import Client  # noqa: PLC0415

    async with Client(redis_url(settings_of(ctx)), allow_unknown=True) as client:
        return await act(client)


@click.group()
def workflows() -> None:
    """Inspect and cancel workflows (graphs of jobs made with Client.workflow)."""


@workflows.command("list")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@run_async
async def workflows_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """The newest workflows, each with its state (derived from its jobs) and its jobs' states."""
    found = await _with_client(ctx, lambda c: c.list_workflows(limit))
    if as_json:
        print_json({"workflows": found})
        return
    print_table([("id", True), ("name", True), ("state", True), ("jobs", False)],
                [[w["id"], w["name"], w["state"], ", ".join(f"{n} {s}" for s, n in sorted(w["jobs"].items()))]
                 for w in found])


@workflows.command("get")
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@run_async
async def workflows_get(ctx: click.Context, workflow_id: str, as_json: bool) -> None:
    """One workflow: its state and the graph, each step with its job and the job's state."""
    doc = await _with_client(ctx, lambda c: c.get_workflow(workflow_id))
    if as_json:
        print_json(doc)
        return
    print_table([("step", True), ("type", True), ("job", True), ("state", True), ("after", False)],
                [[key, s["name"], s["id"], s["state"], ", ".join(s["after"])] for key, s in doc["steps"].items()],
                title=f"workflow {doc['id']} {doc['name']}: {doc['state']}")


@workflows.command("cancel")
@click.argument("workflow_id")
@click.option("--reason", default="workflow cancelled by an operator", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def workflows_cancel(ctx: click.Context, workflow_id: str, reason: str, as_json: bool) -> None:
    """Cancel every job of the workflow not finished yet (running ones are asked to stop)."""
    done = await _with_client(ctx, lambda c: c.cancel_workflow(workflow_id, reason, source="cli", by=local_user()))
    if as_json:
        print_json({"id": workflow_id, "jobs": done})
        return
    print_table([("step", True), ("cancel", True)], [[k, v] for k, v in done.items()])


@click.group()
def batches() -> None:
    """Inspect batches (open sets of jobs with callbacks, made with Client.batch)."""


@batches.command("get")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def batches_get(ctx: click.Context, batch_id: str, as_json: bool) -> None:
    """A batch's state and counts: total, pending, completed, failed; its callbacks and whether they fired."""
    doc = await _with_client(ctx, lambda c: c.batch_status(batch_id))
    if as_json:
        print_json(doc)
        return
    rows = [[k, str(v)] for k, v in doc.items() if k != "callbacks"]
    rows += [[cb["which"], f"{cb['name']}: " + (f"fired, job {cb['job']}" if cb["fired"] else
                                                  "not fired" if cb["fired"] is False else "not yet due")]
             for cb in doc.get("callbacks", [])]
    print_table([("field", True), ("value", False)], rows, keyvalue=True)


__all__ = ["batches", "workflows"]

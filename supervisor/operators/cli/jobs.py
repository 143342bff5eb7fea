"""Commands about jobs: `enqueue`, and the `jobs` group (get, list, cancel, retry, replay, dismiss, bulk,
logs, wait)."""

from __future__ import annotations

import json
import sys
from typing import Any, ClassVar

import click

from supervisor import errors
from supervisor.engine.states import State
from supervisor.operators.cli.app import (
    broker_of,
    console,
    err_console,
    local_user,
    print_json,
    read_model,
    redis_url,
    reported,
    run_async,
    settings_of,
    waited_exit,
)
from supervisor.operators.cli.tables import Cell, print_table, wide_option


@click.command()
@click.argument("name")
@click.argument("payload", default="{}")
@click.option("--wait", "wait", is_flag=True, help="Wait for the job to finish and print its record.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--delay", type=float, default=None, help="Seconds before it may run.")
@click.option("--priority", type=int, default=None, help="Higher runs first.")
@click.option("--idempotency-key", default=None, help="A second enqueue with this key returns the first job.")
@click.option("--deadline", type=float, default=None, help="Seconds from now after which it expires.")
@click.option("--allow-unknown", is_flag=True, help="Queue even if no running instance serves NAME.")
@click.option("--concurrency-key", default=None, help="Key for keyed concurrency (default: from the type's policy).")
@click.option("--depends-on", "depends_on", multiple=True, metavar="JOB_ID",
              help="Wait (state waiting) until this job completes; repeat for several.")
@click.option("--on-dependency-failure", type=click.Choice(["cancel", "run", "wait"]), default=None,
              help="What a failed, dead, cancelled or expired dependency does to it (default: cancel).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@wide_option
@click.pass_context
@reported
def enqueue(ctx: click.Context, name: str, payload: str, wait: bool, timeout: float | None,
            delay: float | None, priority: int | None, idempotency_key: str | None,
            deadline: float | None, allow_unknown: bool, concurrency_key: str | None,
            depends_on: tuple[str, ...], on_dependency_failure: str | None, as_json: bool) -> None:
    """Queue a job of type NAME with a JSON PAYLOAD."""
    # SyncClient: the enqueue goes over its blocking wire; its event loop (and redis-py) only
    # start for --wait
    from supervisor.producers.client import SyncClient  # noqa: PLC0415

    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise errors.InvalidPayload(name, f"PAYLOAD is not JSON ({exc}); quote it, e.g. '{{\"a\": 1}}'") from None
    settings = settings_of(ctx)
    with SyncClient(redis_url(settings), allow_unknown=allow_unknown) as client:
        ref = client.enqueue(name, data, delay=delay, priority=priority, idempotency_key=idempotency_key,
                             deadline=deadline, concurrency_key=concurrency_key, depends_on=list(depends_on) or None,
                             on_dependency_failure=on_dependency_failure)
        if not wait:
            if as_json:
                print_json({"id": ref.id, "name": ref.name, "existing": ref.existing})
            else:
                console.print(f"{'existing' if ref.existing else 'queued'} {ref.id}", highlight=False)
            return
        if as_json:
            job = client.wait(ref.id, timeout)
        else:
            with console.status(f"waiting for {ref.id} ({name})"):
                job = client.wait(ref.id, timeout)
    _show_job(job, as_json)
    sys.exit(waited_exit(job))


@click.group()
def jobs() -> None:
    """Inspect and steer jobs."""


@jobs.command("get")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@reported
def jobs_get(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job: state, payload, result or error, and every attempt."""
    from supervisor.engine.broker import read_job  # noqa: PLC0415 (a read: no need for the producer Client)

    _show_job(read_model(redis_url(settings_of(ctx)), lambda redis: read_job(redis, job_id)), as_json)


@jobs.command("links")
@click.argument("job_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Entries per list.")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@run_async
async def jobs_links(ctx: click.Context, job_id: str, limit: int, as_json: bool) -> None:
    """A job's place in the graph: its workflow and batch, its dependencies (with their states) and
    the jobs that wait on it (docs/workflows.md)."""
    from supervisor.operators.job_links import job_links  # noqa: PLC0415

    async with broker_of(ctx) as broker:
        doc = await job_links(broker, job_id, limit)
    if as_json:
        print_json(doc)
        return
    wf = doc["workflow"]
    rows = [[role, d["id"], d["name"] or "", d["state"]] for role, items in
            (("dependency", doc["dependencies"]), ("dependent", doc["dependents"])) for d in items]
    print_table([("link", True), ("job", True), ("type", True), ("state", True)], rows,
                title=f"job {job_id}: workflow {wf['id'] + ' step ' + wf['step'] if wf else '-'}, "
                      f"batch {doc['batch'] or '-'}, dependencies still awaited: {doc['unsettled']}"
                      + (" (lists cut at --limit)" if doc["truncated"] else ""))


class _Since(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click; we support 8.1
    """`--since`: an age back from now (90s, 10m, 2h, 7d) or an ISO-8601 time (naive = UTC)."""

    name = "WHEN"
    _UNITS: ClassVar[dict[str, int]] = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from datetime import UTC, datetime, timedelta  # noqa: PLC0415

        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        number, unit = text[:-1], text[-1:].lower()
        if unit in self._UNITS and number.replace(".", "", 1).isdigit():
            return datetime.now(UTC) - timedelta(seconds=float(number) * self._UNITS[unit])
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is neither an age (90s, 10m, 2h, 7d) nor an ISO time (2025-01-31T08:00:00Z)",
                      param, ctx)
        return at if at.tzinfo else at.replace(tzinfo=UTC)


@jobs.command("list")
@click.option("--state", type=click.Choice([s.value for s in State]), default=None)
@click.option("--type", "type_", default=None, help="Job type name.")
@click.option("--key", default=None, help="Only jobs with this concurrency key.")
@click.option("--since", type=_Since(), default=None,
              help="Only jobs created since WHEN: an age (90s, 10m, 2h, 7d) or an ISO time (naive = UTC).")
@click.option("--until", type=_Since(), default=None, help="Only jobs created before WHEN (an age or an ISO time).")
@click.option("--error", "error_text", default=None, help="Only jobs whose error contains TEXT (any case).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Jobs per page.")
@click.option("--cursor", default=None, help="The next page: the cursor the previous page printed.")
@click.option("--json", "as_json", is_flag=True, help='{"jobs": [...], "next_cursor": ...} (null on the last page).')
@wide_option
@click.pass_context
@run_async
async def jobs_list(ctx: click.Context, state: str | None, type_: str | None, key: str | None, since: Any,
                    until: Any, error_text: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """List jobs one page at a time: live ones first (active, pending in run order, delayed), then
    finished ones, most recently finished first (the next page's cursor goes to stderr)."""
    from supervisor.operators.listing import list_jobs  # noqa: PLC0415

    try:
        async with broker_of(ctx) as broker:
            found, next_cursor = await list_jobs(broker, name=type_, state=State(state) if state else None,
                                                 key=key, since=since, until=until, error=error_text,
                                                 limit=limit, cursor=cursor)
    except ValueError:
        raise click.BadParameter("not a cursor printed by `jobs list` (or next_cursor from the API)",
                                 param_hint="'--cursor'") from None
    if as_json:
        print_json({"jobs": [j.to_dict() for j in found], "next_cursor": next_cursor})
        return
    print_table([("id", True), ("type", True), ("state", True), ("key", False, 24), ("deliveries", True),
                 ("created", False), ("error", False, 60)],
                [[j.id, j.name, j.state.value, j.concurrency_key, str(j.deliveries),
                  j.created.isoformat(timespec="seconds") if j.created else "", j.error] for j in found])
    if next_cursor:
        err_console.print(f"more: --cursor {next_cursor}", highlight=False, markup=False)


def _job_action(action: str, help_text: str) -> None:
    @jobs.command(action, help=help_text)
    @click.argument("job_id")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @run_async
    async def command(ctx: click.Context, job_id: str, as_json: bool) -> None:
        from supervisor.producers.client import Client  # noqa: PLC0415

        async with Client(redis_url(settings_of(ctx))) as client:
            # recorded in the job's history: from the CLI, by the local user who ran it
            result = await getattr(client, action)(job_id, source="cli", by=local_user())
            job = await client.get(job_id)
        if as_json:
            print_json({"id": job_id, "action": action, "result": result, "state": job.state.value})
        else:
            console.print(f"{action}: {job_id} is now {job.state.value}"
                          + (" (cancellation requested; the handler is told)" if result == "requested" else ""))


_job_action("cancel", "Cancel a job (pending/retry at once; active cooperatively).")
_job_action("retry", "Move a failed job back to pending.")
_job_action("replay", "Move a dead job back to pending.")
_job_action("dismiss", "Give up on a dead job (dismissed).")


_BULK_ACTIONS = ("retry", "replay", "dismiss", "cancel", "delete", "purge")  # supervisor.engine.control


@jobs.command("bulk")
@click.argument("action", type=click.Choice(_BULK_ACTIONS))
@click.option("--type", "type_", default=None, help="Job type name (default: every type; purge needs one).")
@click.option("--state", type=click.Choice([s.value for s in State]), default=None,
              help="Only jobs in this state (default: every state ACTION takes).")
@click.option("--key", default=None, help="Only jobs with this concurrency key.")
@click.option("--since", type=_Since(), default=None, help="Created since WHEN: an age (10m, 2h, 7d) or an ISO time.")
@click.option("--until", type=_Since(), default=None, help="Created before WHEN: an age or an ISO time.")
@click.option("--error", "error_text", default=None, help="Only jobs whose error contains TEXT (any case).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Act on at most this many jobs.")
@click.option("--dry-run", is_flag=True, help="Count the matching jobs, change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (the API's BulkOut).")
@click.pass_context
@run_async
async def jobs_bulk(ctx: click.Context, action: str, type_: str | None, state: str | None, key: str | None,
                    since: Any, until: Any, error_text: str | None, limit: int | None, dry_run: bool, yes: bool,
                    as_json: bool) -> None:
    """Run ACTION on every job matching the filter: retry (failed), replay or dismiss (dead), cancel
    (waiting, pending, retry; active ones are told), delete (any state but active) or purge (the
    finished records of one --type). Counts first and asks before acting (unless --yes); runs in
    batches (a Redis call scans at most 500 index entries, acts on at most 100); each job's history
    records the action."""
    from supervisor.engine.control import BulkFilter, BulkRequestError  # noqa: PLC0415
    from supervisor.producers.client import Client  # noqa: PLC0415

    flt = BulkFilter(type=type_, state=State(state) if state else None, key=key, since=since, until=until,
                     error=error_text, limit=limit)
    async with Client(redis_url(settings_of(ctx))) as client:
        try:
            # the count is for the question: with --yes the run itself counts (a dry run scans every
            # matching entry, whatever --limit says)
            report = await client.bulk(action, flt, dry_run=dry_run or not yes, source="cli", by=local_user())
            if not dry_run and not yes and report.matched:
                n = min(report.matched, limit or report.matched)
                if not (sys.stdin.isatty() and click.confirm(f"{action} {n} job(s)?", err=True)):
                    raise click.UsageError(f"{n} job(s) match; nothing done: confirm, or pass --yes")
                report = await client.bulk(action, flt, source="cli", by=local_user())
        except BulkRequestError as exc:
            hint = "ACTION" if exc.field == "action" else f"'--{exc.field}'"
            raise click.BadParameter(str(exc), param_hint=hint) from None
    if as_json:
        print_json(report.to_dict())
        return
    states = ", ".join(f"{n} {st}" for st, n in sorted(report.by_state.items()))
    verb = "would " + action if report.dry_run else action
    console.print(f"{report.matched} job(s) match{f' ({states})' if states else ''}; {verb}: "
                  f"{report.matched if report.dry_run else report.done}"
                  + (f", {report.skipped} skipped (state changed meanwhile)" if report.skipped else "")
                  + f"; {report.batches} batch(es), longest Redis call {report.longest_call_ms:g} ms",
                  highlight=False, soft_wrap=True)


@jobs.command("logs")
@click.argument("job_id")
@click.option("--last", type=int, default=200, show_default=True, help="How many of the newest lines.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def jobs_logs(ctx: click.Context, job_id: str, last: int, as_json: bool) -> None:
    """Print a job's output lines (a task's stdout and stderr), oldest first."""
    from supervisor.producers.client import Client  # noqa: PLC0415

    async with Client(redis_url(settings_of(ctx))) as client:
        await client.get(job_id)  # JobNotFound for an unknown id
        lines = await client.logs(job_id, last)
    if as_json:
        print_json(lines)
    else:
        for line in lines:
            click.echo(line)


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@run_async
async def jobs_wait(ctx: click.Context, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job finishes and show it; exit 0 only when it completed (as `enqueue --wait`)."""
    from supervisor.producers.client import Client  # noqa: PLC0415

    async with Client(redis_url(settings_of(ctx))) as client:
        if as_json:
            job = await client.wait(job_id, timeout)
        else:
            with console.status(f"waiting for {job_id}"):
                job = await client.wait(job_id, timeout)
    _show_job(job, as_json)
    sys.exit(waited_exit(job))


def _show_job(job: Any, as_json: bool) -> None:
    """One job's record: its fields, attempts, operator actions and the newest stack trace."""
    if as_json:
        print_json(job.to_dict())
        return
    rows: list[list[Cell]] = [
        ["id", job.id], ["type", job.name], ["state", job.state.value], ["deliveries", str(job.deliveries)],
        ["created", str(job.created)], ["finished", str(job.finished or "")],
        ["payload", json.dumps(job.payload)], ["result", json.dumps(job.result) if job.result is not None else ""],
        ["error", job.error], ["progress", json.dumps(job.progress) if job.progress else ""],
        ["request id", job.context.get("request_id")], ["trace id", job.context.get("trace_id")]]
    print_table([("field", True), ("value", False)], rows, keyvalue=True)
    if job.attempts:
        print_table([("attempt", True), ("started", False), ("ended", False), ("outcome", True),
                     ("instance", False), ("error", False, 80)],
                    [[str(a.attempt), str(a.started or ""), str(a.ended or ""), a.outcome, a.instance, a.error]
                     for a in job.attempts], title="attempts")
    if job.actions:
        print_table([("action", True), ("at", False), ("source", True), ("by", False)],
                    [[act.action, str(act.at or ""), act.source, act.by] for act in job.actions],
                    title="operator actions")
    if job.attempts:
        last = next((a for a in reversed(job.attempts) if a.traceback), None)
        if last is not None:  # the newest failure's stack trace, as Python (or the task's stderr) wrote it
            from rich.text import Text  # noqa: PLC0415 (LazyConsole)

            console.print()  # a section of its own: in a pipe, the TSV tables above end at the empty line
            console.print(Text(f"stack trace (attempt {last.attempt}):", style="bold"))
            console.print(Text(last.traceback), soft_wrap=True, highlight=False)

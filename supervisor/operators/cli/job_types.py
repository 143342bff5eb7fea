"""Commands about job types: `types` (served or not, counts), `keys` (one concurrency key), `schedules`."""

from __future__ import annotations

import click

from supervisor.operators.cli.app import (
    broker_of,
    console,
    err_console,
    local_user,
    print_json,
    redis_url,
    run_async,
    settings_of,
)
from supervisor.operators.cli.tables import print_table, utc, wide_option


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
def types(ctx: click.Context, as_json: bool) -> None:
    """Job types published by instances: whether a live one serves each (and which one last did,
    when), whether it is paused, runtime, queue counts and source file. Times are UTC.
    Subcommands pause, resume and history act on one type."""
    if ctx.invoked_subcommand is None:
        run_async(_types_list)(ctx, as_json)


async def _types_list(ctx: click.Context, as_json: bool) -> None:
    from supervisor.daemon.presence import list_workers  # noqa: PLC0415
    from supervisor.operators.admin import type_rows  # noqa: PLC0415

    async with broker_of(ctx) as broker:
        rows = await type_rows(broker)
        errors = {(w["instance"], path): error for w in await list_workers(broker.redis)
                  for path, error in (w.get("load_errors") or {}).items()}
    if as_json:
        print_json({"types": rows, "load_errors": [{"instance": i, "path": p, "error": e}
                                                    for (i, p), e in sorted(errors.items())]})
        return
    print_table([("type", True), ("served by", False), ("paused", True), ("last served (UTC)", True),
                 ("runtime", True), ("waiting", True), ("ready", True), ("scheduled", True), ("active", True),
                 ("dead", True), ("source", False)],
                [[r["name"], ", ".join(r.get("served_by") or ()) or ("yes" if r["served"] else "NO"),
                  "PAUSED" if r.get("paused") else "",
                  utc(r["last_served"]["at"]) if r["last_served"] else "never",
                  str(r["policy"].get("runtime")), str(r["counts"].get("waiting", 0)), str(r["counts"]["ready"]),
                  str(r["counts"]["sched"]), str(r["counts"]["active"]), str(r["counts"]["dead"]), str(r["source"])]
                 for r in rows])
    if errors:
        err_console.print("Files that failed to load (the last good version, if any, keeps serving):")
        print_table([("file", False), ("instance", True), ("error", False)],
                    [[path, instance, error] for (instance, path), error in sorted(errors.items())], stderr=True)


def _pause_command(paused: bool) -> None:
    verb = "pause" if paused else "resume"

    @types.command(verb, help=("Pause job type NAME on every instance: enqueues are accepted, no job of it is "
                               "claimed (running ones finish) until `types resume`; the flag outlasts restarts."
                               if paused else "Resume a paused job type NAME: its instances claim at once."))
    @click.argument("name")
    @click.option("--allow-unknown", is_flag=True, help="Also a type no instance has served yet.")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @run_async
    async def command(ctx: click.Context, name: str, allow_unknown: bool, as_json: bool) -> None:
        from supervisor.producers.client import Client  # noqa: PLC0415

        async with Client(redis_url(settings_of(ctx))) as client:
            method = client.pause if paused else client.resume
            done = await method(name, allow_unknown=allow_unknown, source="cli", by=local_user())
        if as_json:
            print_json(done.to_dict())
            return
        state = "paused" if done.paused else "resumed"
        console.print(f"{name}: {state}" + ("" if done.changed else f" (it already was {state})"), highlight=False)


_pause_command(True)
_pause_command(False)


@types.command("history")
@click.argument("name")
@click.option("--minutes", type=click.IntRange(1, 1440), default=30, show_default=True,
              help="How many minutes, ending now.")
@click.option("--json", "as_json", is_flag=True, help='{"type", "minutes", "points": [...]} (the API\'s shape).')
@wide_option
@click.pass_context
@run_async
async def history(ctx: click.Context, name: str, minutes: int, as_json: bool) -> None:
    """Per-minute history of job type NAME: enqueued, completed, failed, dead, retried, and run-time
    and queue-wait percentiles in ms (from the counters the scripts keep for 24 h). Times are UTC."""
    from supervisor.operators.history import type_history  # noqa: PLC0415

    async with broker_of(ctx) as broker:
        doc = await type_history(broker.redis, name, minutes)
    if as_json:
        print_json(doc)
        return

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    print_table([("minute (UTC)", True), ("enqueued", True), ("completed", True), ("failed", True), ("dead", True),
                 ("retried", True), ("run p50/p95/p99 ms", True), ("wait p50/p95/p99 ms", True)],
                [[utc(p["minute"]), str(p["enqueued"]), str(p["completed"]), str(p["failed"]), str(p["dead"]),
                  str(p["retried"]), " / ".join(ms(p["run_ms"][q]) for q in ("p50", "p95", "p99")),
                  " / ".join(ms(p["wait_ms"][q]) for q in ("p50", "p95", "p99"))] for p in doc["points"]])


@click.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@run_async
async def keys(ctx: click.Context, type_name: str, key: str, as_json: bool) -> None:
    """Status of one concurrency KEY of TYPE: active jobs, queue depth, last decision, stale takeovers."""
    from supervisor.producers.client import Client  # noqa: PLC0415

    async with Client(redis_url(settings_of(ctx))) as client:
        status = await client.key_status(type_name, key)
    if as_json:
        print_json(status)
        return
    print_table([("field", True), ("value", False)],
                [[field, str(status[field])] for field in ("type", "key", "queued", "waiting_for_slot",
                                                          "stale_takeovers", "last_decision", "last_reason")])
    print_table([("active job", True), ("instance", True), ("attempt", True), ("running s", True),
                 ("lease expires in s", True)],
                [[a["id"], str(a["instance"]), str(a["attempt"]), str(a["running_s"]), str(a["lease_expires_in_s"])]
                 for a in status["active"]], title="active")


@click.command()
@click.option("--count", type=int, default=3, show_default=True, help="How many next fire times to show.")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@run_async
async def schedules(ctx: click.Context, count: int, as_json: bool) -> None:
    """Every published cron schedule: whether it fires, its timezone and source, the last tick it
    really fired and (when firing) its next fire times. Times are UTC, whatever the timezone."""
    from supervisor.operators.admin import schedule_rows  # noqa: PLC0415

    async with broker_of(ctx) as broker:
        rows = await schedule_rows(broker.redis, count)
    if as_json:
        print_json(rows)
        return
    print_table([("schedule", True), ("status", True), ("timezone", True), ("last fired (UTC)", True),
                 ("next (UTC)", False), ("source", False)],
                [[r["id"], r["status"], r["timezone"], utc(r["last_fired"]) if r["last_fired"] else "never",
                  [utc(t) for t in r["next"]], r["source"]] for r in rows])

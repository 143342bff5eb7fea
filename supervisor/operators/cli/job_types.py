"""Commands about job types: `types` (served or not, counts), `keys` (one concurrency key), `schedules`."""

from __future__ import annotations

import click

from supervisor.operators.cli.app import err_console, print_json, redis_url, run_async, settings_of
from supervisor.operators.cli.tables import print_table, utc, wide_option


@click.command()
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
@run_async
async def types(ctx: click.Context, as_json: bool) -> None:
    """Job types published by instances: whether a live one serves each (and which one last did,
    when), runtime, queue counts and source file. Times are UTC."""
    from supervisor.daemon.presence import list_workers  # noqa: PLC0415
    from supervisor.engine.broker import Broker, connect  # noqa: PLC0415
    from supervisor.operators.admin import type_rows  # noqa: PLC0415

    broker = Broker(connect(redis_url(settings_of(ctx))))
    try:
        rows = await type_rows(broker)
        errors = {(w["instance"], path): error for w in await list_workers(broker.redis)
                  for path, error in (w.get("load_errors") or {}).items()}
    finally:
        await broker.close()
    if as_json:
        print_json({"types": rows, "load_errors": [{"instance": i, "path": p, "error": e}
                                                    for (i, p), e in sorted(errors.items())]})
        return
    print_table([("type", True), ("served by", False), ("last served (UTC)", True), ("runtime", True),
                 ("ready", True), ("scheduled", True), ("active", True), ("dead", True), ("source", False)],
                [[r["name"], ", ".join(r.get("served_by") or ()) or ("yes" if r["served"] else "NO"),
                  utc(r["last_served"]["at"]) if r["last_served"] else "never",
                  str(r["policy"].get("runtime")), str(r["counts"]["ready"]), str(r["counts"]["sched"]),
                  str(r["counts"]["active"]), str(r["counts"]["dead"]), str(r["source"])] for r in rows])
    if errors:
        err_console.print("Files that failed to load (the last good version, if any, keeps serving):")
        print_table([("file", False), ("instance", True), ("error", False)],
                    [[path, instance, error] for (instance, path), error in sorted(errors.items())], stderr=True)


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
    from supervisor.engine.broker import connect  # noqa: PLC0415
    from supervisor.operators.admin import schedule_rows  # noqa: PLC0415

    redis = connect(redis_url(settings_of(ctx)))
    try:
        rows = await schedule_rows(redis, count)
    finally:
        await redis.aclose()
    if as_json:
        print_json(rows)
        return
    print_table([("schedule", True), ("status", True), ("timezone", True), ("last fired (UTC)", True),
                 ("next (UTC)", False), ("source", False)],
                [[r["id"], r["status"], r["timezone"], utc(r["last_fired"]) if r["last_fired"] else "never",
                  [utc(t) for t in r["next"]], r["source"]] for r in rows])

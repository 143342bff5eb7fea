"""Instances dedicated to types (issue 18, item 4): `run --types` / `--exclude-types` split the
types of one jobs/ folder between two daemons; `workers` and `types` say who serves what."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from supervisor.producers.client import Client
from tests.conftest import DaemonProcess, cli_env, run_cli

DEDICATED = "t.echo,t.sync-*"


async def test_each_type_runs_only_on_the_instances_that_serve_it(
        daemon: Callable[..., DaemonProcess], use_handlers: Callable[..., Path], redis_url: str,
        tmp_path: Path) -> None:
    # Given one jobs/ folder, and two instances: one dedicated to two types, one for the rest
    use_handlers("basic")
    dedicated = daemon(args=["--types", DEDICATED])
    rest = daemon(args=["--exclude-types", DEDICATED])
    # When jobs of a dedicated type and of another type are queued
    async with Client(redis_url) as client:
        refs = [await client.enqueue(name, {"value": str(i)})
                for i in range(20) for name in ("t.echo", "t.sync-echo", "t.progress")]
        jobs = [await client.wait(ref.id, timeout=20) for ref in refs]
    # Then each ran on the instance that serves its type, and nowhere else
    ran_on = {(job.name, (job.instance or "").split(":")[0]) for job in jobs}
    assert all(job.state.value == "completed" for job in jobs)
    assert ran_on == {("t.echo", "d0"), ("t.sync-echo", "d0"), ("t.progress", "d1")}
    # And `workers` says what each instance was told to serve, `types` which instances serve each type
    env = cli_env(REDIS_URL=redis_url)
    workers = {w["instance"].split(":")[0]: w for w in json.loads(run_cli("workers", "--json", env=env,
                                                                          cwd=tmp_path).stdout)}
    assert workers["d0"]["serve_types"] == ["t.echo", "t.sync-*"]
    assert sorted(workers["d0"]["types"]) == ["t.echo", "t.sync-echo"]
    assert workers["d1"]["exclude_types"] == ["t.echo", "t.sync-*"] and "t.echo" not in workers["d1"]["types"]
    listed = run_cli("types", "--json", env=env, cwd=tmp_path)
    served_by = {row["name"]: [i.split(":")[0] for i in row["served_by"]] for row in json.loads(listed.stdout)["types"]}
    assert served_by["t.echo"] == ["d0"] and served_by["t.progress"] == ["d1"]
    table = run_cli("workers", env=env, cwd=tmp_path).stdout
    assert "--types t.echo,t.sync-*" in table
    for d in (dedicated, rest):
        assert d.stop() == 0

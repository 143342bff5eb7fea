"""Commands about this installation's settings: `config show` and `systemd-unit`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from supervisor.errors import ConfigError
from supervisor.operators.cli.app import fail, print_json, settings_of
from supervisor.operators.cli.tables import print_table, wide_option


@click.group("config")
def config_group() -> None:
    """Settings."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True)
@wide_option
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    try:
        values = settings_of(ctx).masked()
    except ConfigError as exc:
        fail(exc)
        return
    if as_json:
        print_json(values)
        return
    print_table([("setting", True), ("value", False)], [[k, str(v)] for k, v in values.items()])


@click.command("systemd-unit")
@click.option("--user", default=None, help="User= for the unit (default: the shipped job-supervisor).")
@click.pass_context
def systemd_unit(ctx: click.Context, user: str | None) -> None:
    """Print a systemd unit for this installation (redirect it to /etc/systemd/system/)."""
    import shutil  # noqa: PLC0415

    from supervisor.daemon.systemd_unit import (  # noqa: PLC0415
        default_exec_start,
        install_paths,
        paths_hidden_by_protect_home,
        render_unit,
    )

    try:
        settings = settings_of(ctx)
    except ConfigError as exc:
        fail(exc)
        return
    binary = shutil.which("job-supervisor") or str(Path(sys.executable).with_name("job-supervisor"))
    root = ctx.find_root().obj or {}
    config = root.get("config")
    # The interpreter, the venv, our packages and the install must stay readable.
    hidden = paths_hidden_by_protect_home(*install_paths(
        str(Path.cwd()), str(Path(settings.jobs_dir).resolve()), str(Path(settings.tasks_dir).resolve())))
    click.echo(render_unit(
        default_exec_start(binary, str(Path(config).resolve()) if config else None),
        working_dir=str(Path.cwd()), state_dir="/var/lib/job-supervisor", user=user, group=user,
        read_only_paths=hidden,
    ), nl=False)

"""`job-supervisor` command line: `main`, the group, with every command added here, in one place.

`supervisor.operators.cli.app` holds the group and what commands share (settings, Redis, errors,
exit codes), `supervisor.operators.cli.tables` how they print; each family of commands is a
module of its own, which imports those two and nothing of its siblings.
Human tables by default, `--json` for scripts.
"""

from __future__ import annotations

from supervisor.operators.cli import bench, config, job_types, jobs, ops, run, workflows
from supervisor.operators.cli.app import main

main.add_command(run.run)
main.add_command(jobs.enqueue)
main.add_command(jobs.jobs)
main.add_command(workflows.workflows)
main.add_command(workflows.batches)
main.add_command(job_types.types)
main.add_command(job_types.keys)
main.add_command(job_types.schedules)
main.add_command(config.config_group)
main.add_command(config.systemd_unit)
main.add_command(ops.workers)
main.add_command(ops.events)
main.add_command(ops.health)
main.add_command(ops.api)
main.add_command(bench.bench)

__all__ = ["main"]

"""The no-op handlers, cancel handlers and shell task the bench writes into its temporary folder."""

from __future__ import annotations

from pathlib import Path

from supervisor_bench.options import INPROCESS, PROCESS, SUBPROCESS_PY, BenchOptions

HANDLERS_HEADER = '''"""No-op handlers of `job-supervisor bench` (written by the bench; safe to delete)."""
import time  # noqa: PLC0415

from supervisor import job
'''

HANDLER_SOURCE = {
    INPROCESS: '''

@job("bench.inprocess", runtime="inprocess", concurrency={concurrency}, max_deliver=1000)
async def noop_inprocess(payload, ctx):
    return time.time()
''',
    PROCESS: '''

@job("bench.process", runtime="process", concurrency={process_concurrency}, max_deliver=1000)
def noop_process(payload, ctx):
    return time.time()
''',
    SUBPROCESS_PY: '''

@job("bench.subprocess-py", runtime="subprocess", concurrency={subprocess_concurrency}, max_deliver=1000)
def noop_subprocess(payload, ctx):
    return time.time()
''',
}

CANCEL_SOURCE = '''"""Handlers of `job-supervisor bench`'s cancel latency (written by the bench; safe to delete)."""
import time  # noqa: PLC0415

from supervisor import job


def _note(path, job_id, what):
    with open(path, "a") as f:  # one short append per line: lines never interleave
        f.write(f"{job_id} {what} {time.time()!r}\\n")


@job("bench.cancel-inprocess", runtime="inprocess", ack_wait=300, max_deliver=1000)
async def cancel_inprocess(payload, ctx):
    _note(payload["out"], ctx.job_id, "started")
    await ctx.cancel_event.wait()
    _note(payload["out"], ctx.job_id, "saw")


@job("bench.cancel-process", runtime="process", ack_wait=300, max_deliver=1000)
def cancel_process(payload, ctx):
    _note(payload["out"], ctx.job_id, "started")
    ctx.cancel_event.wait()
    _note(payload["out"], ctx.job_id, "saw")
'''

SHELL_TASK = "#!/bin/sh\n# job-supervisor bench: a no-op shell task.\ncat >/dev/null\n"
SHELL_SIDECAR = 'name = "bench.shell"\nconcurrency = {subprocess_concurrency}\nmax_deliver = 1000\n'


def write_handlers(root: Path, o: BenchOptions) -> None:
    """The folders the bench's daemons serve: jobs-<runtime>, jobs-all, tasks-shell, jobs-cancel (and empty ones)."""
    fmt = {"concurrency": o.concurrency, "process_concurrency": o.process_type_concurrency,
           "subprocess_concurrency": o.subprocess_concurrency}
    (root / "tasks-none").mkdir()
    (root / "jobs-none-py").mkdir()
    groups = {"inprocess": [INPROCESS], "process": [PROCESS], "subprocess": [SUBPROCESS_PY],
              "all": [t for t in (INPROCESS, PROCESS, SUBPROCESS_PY) if o.serves(t)]}
    for label, types in groups.items():
        d = root / f"jobs-{label}"
        d.mkdir()
        text = HANDLERS_HEADER + "".join(HANDLER_SOURCE[t].format(**fmt) for t in types)
        (d / "bench_jobs.py").write_text(text)
    tasks = root / "tasks-shell"
    tasks.mkdir()
    script = tasks / "noop.sh"
    script.write_text(SHELL_TASK)
    script.chmod(0o755)
    (tasks / "noop.toml").write_text(SHELL_SIDECAR.format(**fmt))
    (root / "jobs-cancel").mkdir()
    (root / "jobs-cancel" / "bench_cancel.py").write_text(CANCEL_SOURCE)

"""The no-op and round-trip handlers, cancel handlers and shell task the bench writes into its temporary folder."""

from __future__ import annotations

from pathlib import Path

from supervisor.engine import keys
from supervisor_bench.options import INPROCESS, PROCESS, SUBPROCESS_PY, BenchOptions

HANDLERS_HEADER = '''"""No-op handlers of `job-supervisor bench` (written by the bench; safe to delete)."""
import time  # noqa: PLC0415

from supervisor import job
'''

HANDLER_SOURCE = {
    INPROCESS: '''

@job("bench.inprocess", runtime="inprocess",{concurrency} max_deliver=1000)
async def noop_inprocess(payload, ctx):
    return time.time()
''',
    PROCESS: '''

@job("bench.process", runtime="process",{process_concurrency} max_deliver=1000)
def noop_process(payload, ctx):
    return time.time()
''',
    SUBPROCESS_PY: '''

@job("bench.subprocess-py", runtime="subprocess", concurrency={subprocess_concurrency}, max_deliver=1000)
def noop_subprocess(payload, ctx):
    return time.time()
''',
}

#: `--handler redis-roundtrip`: each job makes one Redis round trip with the natural client of its
#: handler (redis.asyncio in the async one, the blocking client in the sync one, one client per
#: process made on first use), an INCR of its type's counter (`roundtrip_key`), against the
#: bench's Redis. The handler returns the time it started, as the no-ops do (latency).
ROUNDTRIP_SOURCE = {
    INPROCESS: '''

_aredis = None


@job("bench.inprocess", runtime="inprocess",{concurrency} max_deliver=1000)
async def roundtrip_inprocess(payload, ctx):
    global _aredis
    started = time.time()
    if _aredis is None:
        import redis.asyncio
        _aredis = redis.asyncio.Redis.from_url(REDIS_URL)
    await _aredis.incr({inprocess_key!r})
    return started
''',
    PROCESS: '''

_redis = None


@job("bench.process", runtime="process",{process_concurrency} max_deliver=1000)
def roundtrip_process(payload, ctx):
    global _redis
    started = time.time()
    if _redis is None:
        import redis
        _redis = redis.Redis.from_url(REDIS_URL)
    _redis.incr({process_key!r})
    return started
''',
}


def roundtrip_key(name: str) -> str:
    """The counter a round-trip handler of type `name` increments (under the type's hash tag,
    so the bench's reset removes it with the type's other keys)."""
    return keys.queue_prefix(name) + "roundtrip"


def _concurrency(value: int) -> str:
    """The `concurrency=` option of a handler's @job (0: left out, the settings' default)."""
    return f" concurrency={value}," if value else ""


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


def write_handlers(root: Path, o: BenchOptions, redis_url: str) -> None:
    """The folders the bench's daemons serve: jobs-<runtime>, jobs-all, tasks-shell, jobs-cancel (and empty ones).

    The round-trip handlers get the bench's Redis URL in their source (the folder is the
    bench's own temporary one, mode 0700), not through the daemon's environment."""
    fmt = {"concurrency": _concurrency(o.concurrency), "process_concurrency": _concurrency(o.process_type_concurrency),
           "subprocess_concurrency": o.subprocess_concurrency,
           "inprocess_key": roundtrip_key(INPROCESS), "process_key": roundtrip_key(PROCESS)}
    sources = dict(HANDLER_SOURCE)
    header = HANDLERS_HEADER
    if o.handler == "redis-roundtrip":
        sources.update(ROUNDTRIP_SOURCE)
        header += f"\nREDIS_URL = {redis_url!r}\n"
    (root / "tasks-none").mkdir()
    (root / "jobs-none-py").mkdir()
    groups = {"inprocess": [INPROCESS], "process": [PROCESS], "subprocess": [SUBPROCESS_PY],
              "all": [t for t in (INPROCESS, PROCESS, SUBPROCESS_PY) if o.serves(t)]}
    for label, types in groups.items():
        d = root / f"jobs-{label}"
        d.mkdir()
        text = header + "".join(sources[t].format(**fmt) for t in types)
        (d / "bench_jobs.py").write_text(text)
    tasks = root / "tasks-shell"
    tasks.mkdir()
    script = tasks / "noop.sh"
    script.write_text(SHELL_TASK)
    script.chmod(0o755)
    (tasks / "noop.toml").write_text(SHELL_SIDECAR.format(**fmt))
    (root / "jobs-cancel").mkdir()
    (root / "jobs-cancel" / "bench_cancel.py").write_text(CANCEL_SOURCE)

"""A daemon imports what its settings and types use (issue 17, item 3): no admin API (FastAPI,
uvicorn) unless enabled, no process pool until a served type needs one, then at once; no cyclic
collection during the start, and the collector on again from READY; pool workers start with the
libraries their handlers import, never with the handler folder's own modules."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from supervisor import Client, State
from supervisor.daemon.redis_server import RedisServer, free_port
from tests.conftest import HANDLERS, ROOT, await_until

_until = functools.partial(await_until, timeout=15.0)

# What `job-supervisor run` imports before its settings say whether it needs them.
_PROBE = """
import json, sys
from supervisor.operators.cli import main
import supervisor.daemon.app, supervisor.daemon.daemon
print(json.dumps(sorted(m for m in sys.modules)))
"""


def test_the_daemon_imports_no_admin_api_and_no_pool_up_front() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT,
                         check=True, timeout=60).stdout
    modules = set(json.loads(out))
    assert "supervisor.daemon.daemon" in modules  # the probe imported the composition root
    for heavy in ("fastapi", "uvicorn", "starlette", "supervisor.operators.api", "runners.pool", "prometheus_client"):
        assert heavy not in modules, f"{heavy} is imported before a setting or a type asks for it"


async def test_a_reload_that_adds_a_process_type_starts_the_pool(redis_url: str, use_handlers: Any,
                                                                 daemon: Any, jobs_dir: Path) -> None:
    # Given a daemon that serves no `process` type (its pool not even made)
    use_handlers("basic")
    d = daemon()
    # When a file with one arrives (hot reload)
    shutil.copy(HANDLERS / "runtimes.py", jobs_dir / "runtimes.py")
    await _until(lambda: any("t.pid-process" in e["types"] for e in d.events("reload.done")), what="reloaded")
    # Then its jobs run in a pool worker
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.pid-process", {})).id, timeout=30)
    assert job.state is State.COMPLETED and job.result["pid"] != d.pid


_GC_PROBE = '''
import gc

from supervisor import job


@job("t.gc-state")
async def gc_state(payload: dict[str, object]) -> dict[str, object]:
    return {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
'''


async def test_the_collector_runs_again_once_the_daemon_is_ready(redis_url: str, daemon: Any,
                                                                 jobs_dir: Path) -> None:
    # `run` switches the cyclic collector off while it starts; from READY on, garbage must be collected
    (jobs_dir / "gc_state.py").write_text(_GC_PROBE)
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.gc-state", {})).id, timeout=30)
    assert job.state is State.COMPLETED
    assert job.result["enabled"] is True and job.result["frozen"] > 10_000  # start-up objects frozen


async def test_a_daemon_started_before_redis_waits_collects_and_serves(daemon: Any, jobs_dir: Path,
                                                                        tmp_path: Path) -> None:
    # Given a daemon started while its Redis is not up yet
    (jobs_dir / "gc_state.py").write_text(_GC_PROBE)
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    d = daemon(url=url, wait=False)
    await _until(lambda: any(e.get("op") == "connect" for e in d.events("redis.unavailable")), what="its retries")
    # When Redis comes up, then it reaches READY and runs jobs, with the collector on
    server = RedisServer(tmp_path / "late-redis", port=port).start()
    try:
        d.wait_ready()
        async with Client(url) as client:
            job = await client.wait((await client.enqueue("t.gc-state", {})).id, timeout=30)
        assert job.state is State.COMPLETED and job.result["enabled"] is True
    finally:
        d.stop()
        server.stop()


_LIBRARY_PROBE = '''
import sys

from supervisor import job


@job("t.preloaded", runtime="process")
def preloaded(payload: dict[str, object]) -> dict[str, bool]:
    seen = {name: name in sys.modules for name in ("colorsys", "jobs._lib_helper")}
    import colorsys  # noqa: F401 (a library: the fork server imported it for every worker)
    from jobs import _lib_helper  # noqa: F401 (the folder's own module: hot reload's, never preloaded)
    return seen
'''


async def test_pool_workers_start_with_the_handlers_libraries_not_the_folders_modules(
        redis_url: str, daemon: Any, jobs_dir: Path) -> None:
    # Given a process handler that imports a library and a helper of its own folder, both in the function
    (jobs_dir / "preloaded.py").write_text(_LIBRARY_PROBE)
    (jobs_dir / "_lib_helper.py").write_text("VALUE = 1\n")
    daemon()
    # When its first job runs
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.preloaded", {})).id, timeout=30)
    # Then the library was already loaded in the worker, and the folder's module was not
    assert job.state is State.COMPLETED, job.error
    assert job.result == {"colorsys": True, "jobs._lib_helper": False}

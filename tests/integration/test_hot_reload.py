"""Hot reload: handler files added, changed, broken and removed while the daemon runs; SIGHUP."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from supervisor import Client, State
from tests.conftest import await_until

V1 = '''
from supervisor import job

@job("t.hot", schedule=None)
def hot(payload: dict) -> str:
    return "v1"
'''
V2 = V1.replace('"v1"', '"v2"')
BROKEN = V1.replace("def hot(payload: dict) -> str:", "def hot(payload: dict) -> str")


_until = functools.partial(await_until, timeout=15.0)  # a condition, with a deadline



async def _result(client: Client, name: str) -> Any:
    ref = await client.enqueue(name, {}, allow_unknown=True)
    return (await client.wait(ref.id, timeout=10)).result


def _reloads(d: Any) -> int:
    return len(d.events("reload.done"))


async def test_add_change_break_remove_a_handler_file(redis_url: str, use_handlers: Any, daemon: Any,
                                                      jobs_dir: Path) -> None:
    use_handlers("basic")
    d = daemon()
    async with Client(redis_url) as client:
        # A new file serves within seconds, without a restart
        (jobs_dir / "hot.py").write_text(V1)
        await _until(lambda: _known(client, "t.hot"), what="t.hot published")
        assert await _result(client, "t.hot") == "v1"
        # A changed file serves its new version
        seen = _reloads(d)
        (jobs_dir / "hot.py").write_text(V2)
        await _until(lambda: _bool(_reloads(d) > seen), what="reload after change")
        assert await _result(client, "t.hot") == "v2"
        # A policy-only change reaches producers: the type is published again
        seen = _reloads(d)
        (jobs_dir / "hot.py").write_text(V2.replace('"t.hot", schedule=None', '"t.hot", schedule=None, priority=7'))
        await _until(lambda: _bool(_reloads(d) > seen), what="reload after a policy change")
        assert json.loads((await client.broker.type_meta("t.hot"))["policy"])["priority"] == 7
        # A broken edit is reported, and the last good version keeps serving
        seen = _reloads(d)
        (jobs_dir / "hot.py").write_text(BROKEN)
        await _until(lambda: _bool(_reloads(d) > seen), what="reload after broken edit")
        last = d.events("reload.done")[-1]
        assert any(p.endswith("hot.py") and "SyntaxError" in e for p, e in last["load_errors"].items())
        assert d.events("jobs.kept_last_good")
        assert await _result(client, "t.hot") == "v2"
        assert (await _result(client, "t.echo"))["value"] == ""
        # A removed file's type stops being consumed; its queued jobs stay queued
        seen = _reloads(d)
        (jobs_dir / "hot.py").unlink()
        await _until(lambda: _bool(_reloads(d) > seen), what="reload after removal")
        assert "t.hot" in d.events("reload.done")[-1]["removed"]
        ref = await client.enqueue("t.hot", {}, allow_unknown=True)
        await asyncio.sleep(1.0)  # give a (wrong) consumer every chance to take it
        assert (await client.get(ref.id)).state is State.PENDING
        # And when the file comes back, the queued job runs
        (jobs_dir / "hot.py").write_text(V1)
        job = await client.wait(ref.id, timeout=15)
        assert job.result == "v1"
    assert d.proc.poll() is None


async def test_a_file_caught_empty_mid_write_keeps_serving_its_last_good_version(
        redis_url: str, daemon: Any, jobs_dir: Path) -> None:
    # Given a daemon serving t.hot from hot.py
    hot = jobs_dir / "hot.py"
    hot.write_text(V1)
    d = daemon()
    async with Client(redis_url) as client:
        assert await _result(client, "t.hot") == "v1"
        # When a reload sees the file empty (an in-place rewrite caught between truncate and
        # write), then it reports the file and t.hot keeps serving, without --allow-unknown
        seen = _reloads(d)
        hot.write_text("")
        await _until(lambda: _bool(_reloads(d) > seen), what="reload of the emptied file")
        errors = d.events("reload.done")[-1]["load_errors"]
        assert any(p.endswith("hot.py") and "the file is empty" in e for p, e in errors.items()), errors
        ref = await client.enqueue("t.hot", {})
        assert (await client.wait(ref.id, timeout=10)).result == "v1"
        # and a next version that fails to load still leaves the last good one serving
        seen = _reloads(d)
        hot.write_text(BROKEN)
        await _until(lambda: _bool(_reloads(d) > seen), what="reload of the broken file")
        ref = await client.enqueue("t.hot", {})
        assert (await client.wait(ref.id, timeout=10)).result == "v1"
        # and a good one serves
        seen = _reloads(d)
        hot.write_text(V2)
        await _until(lambda: _bool(_reloads(d) > seen), what="reload of the new version")
        assert await _result(client, "t.hot") == "v2"
    assert d.proc.poll() is None


async def test_sighup_reloads_settings_and_a_bad_edit_keeps_the_old(
        redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    use_handlers("basic")
    config = tmp_path / "s.toml"
    config.write_text("default_concurrency = 10\n")
    d = daemon(args=["--config", str(config)])
    # When a schedule is added to the settings file and the daemon gets SIGHUP
    config.write_text('default_concurrency = 10\n[schedules.hourly-echo]\njob = "t.echo"\ncron = "@hourly"\n')
    d.signal(signal.SIGHUP)
    async with Client(redis_url) as client:
        await _until(lambda: _bool(_reloads(d) >= 1), what="reload after SIGHUP")
        done = d.events("reload.done")[-1]
        assert done["reason"] == "SIGHUP" and "hourly-echo" in done["schedules"]
        # A broken settings file on SIGHUP is reported and the previous settings stay
        config.write_text("default_concurrency = -1\n")
        d.signal(signal.SIGHUP)
        await _until(lambda: _bool(_reloads(d) >= 2), what="second reload")
        assert d.events("reload.settings_invalid")
        assert "hourly-echo" in d.events("reload.done")[-1]["schedules"]
        assert (await _result(client, "t.echo"))["value"] == ""
    assert d.proc.poll() is None


async def _known(client: Client, name: str) -> bool:
    return bool(await client.broker.type_meta(name))


async def _bool(value: bool) -> bool:
    return value


async def test_types_command_shows_load_errors(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    import json
    import os
    import subprocess
    import sys

    use_handlers("basic", "broken")
    daemon()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env["REDIS_URL"] = redis_url
    done = subprocess.run([sys.executable, "-m", "supervisor", "types", "--json"], capture_output=True, text=True,
                          env=env, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert "t.echo" in {t["name"] for t in shown["types"]}
    assert any(e["path"].endswith("broken.py") and "SyntaxError" in e["error"] for e in shown["load_errors"])


RUNTIME_V1 = '''
from supervisor import job
from jobs import _hotver  # a helper: workers must import the accepted one too

@job("t.hot-rt", runtime="{runtime}", concurrency=4)
def hot(payload: dict) -> str:
    return "v1/" + _hotver.TAG
'''
HELPER = 'TAG = "h1"\n'


@pytest.mark.parametrize("runtime", ["inprocess", "process", "subprocess"])
async def test_a_broken_edit_keeps_the_last_good_version_in_every_runtime(
        redis_url: str, daemon: Any, jobs_dir: Path, runtime: str) -> None:
    v1 = RUNTIME_V1.format(runtime=runtime)
    hot, helper = jobs_dir / "hot_rt.py", jobs_dir / "_hotver.py"
    helper.write_text(HELPER)
    hot.write_text(v1)
    # Workers replaced every 4 jobs: the ones started after a broken edit must load the last good version too
    d = daemon(env={"WORKERS_CONCURRENCY": "2", "JOB_SUPERVISOR_MAX_JOBS_PER_WORKER": "4"})
    async with Client(redis_url) as client:
        assert await _result(client, "t.hot-rt") == "v1/h1"
        recycles = len(d.events("pool.recycle"))

        async def loaded(condition: Callable[[str], bool], what: str) -> None:
            """Wait for a reload whose outcome for hot_rt.py (its load error, or "") meets `condition`."""
            def error() -> str:
                return next((e for p, e in d.events("reload.done")[-1]["load_errors"].items()
                             if p.endswith("hot_rt.py")), "")
            await _until(lambda: _bool(_reloads(d) > 0 and condition(error())), what=what)

        async def all_return(n: int, expected: str) -> None:
            refs = [await client.enqueue("t.hot-rt", {"i": i}) for i in range(n)]
            jobs = await asyncio.gather(*(client.wait(r.id, timeout=30) for r in refs))
            assert [(j.state, j.result) for j in jobs] == [(State.COMPLETED, expected)] * n, \
                [(j.state, j.result, j.error) for j in jobs]

        # A syntax error saved into the file: every job still runs the last good version
        hot.write_text(v1.replace("-> str:", "-> str"))
        await loaded(lambda e: "SyntaxError" in e and "_hotver" not in e, "reload of the broken handler")
        await all_return(20, "v1/h1")
        if runtime == "process":
            assert any(e["reason"] == "max_jobs" for e in d.events("pool.worker_recycled"))
        # A good handler edit whose helper (imported by name) is broken: still the last good pair
        helper.write_text("TAG = (\n")
        hot.write_text(v1.replace('"v1/"', '"v2/"'))
        await loaded(lambda e: "SyntaxError" in e and "_hotver" in e, "reload of the broken helper")
        await all_return(3, "v1/h1")
        # Nothing new was accepted, so the pool was never recycled for it (only replaced after 4 jobs)
        assert len(d.events("pool.recycle")) == recycles
        # The helper fixed: every job after the reload runs the new version, in every runtime
        helper.write_text('TAG = "h2"\n')
        await loaded(lambda e: e == "", "reload after the fix")
        await all_return(3, "v2/h2")
    assert d.proc.poll() is None

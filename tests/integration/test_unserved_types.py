"""Types no live instance serves: a removed file or a task that cannot load (real daemon, real CLI).

`types` and `schedules` say the type is not served and who served it last; an enqueue of it is
refused (naming that instance, and the load error when there is one) unless allowed; `health`
reports its queued jobs as a problem.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor.engine.states import State
from supervisor.errors import UnknownJobType
from supervisor.operators.api.app import create_app
from supervisor.producers.client import SyncClient
from tests.conftest import wait_until

GONE = '''
from supervisor import Context, job


@job("t.gone", schedule="0 3 * * *", timezone="Europe/Berlin")
def gone(payload: dict, ctx: Context) -> str:
    return "ran"
'''
TOKEN = "test-token-unserved"


def _cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_"))}
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True, text=True,
                          env={**env, "REDIS_URL": redis_url}, timeout=60, check=False)


def _json(redis_url: str, *args: str) -> Any:
    done = _cli(redis_url, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _types(redis_url: str) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in _json(redis_url, "types")["types"]}


def _schedule_of(redis_url: str, job: str) -> dict[str, Any]:
    (row,) = [r for r in _json(redis_url, "schedules") if r["job"] == job]
    return row


def _refused(client: SyncClient, name: str, accepted: list[str]) -> UnknownJobType | None:
    try:
        accepted.append(client.enqueue(name, {}).id)
    except UnknownJobType as exc:
        return exc
    return None


async def _api(redis_url: str) -> dict[str, Any]:
    app = create_app(redis_url, TOKEN, max_body_bytes=64 * 1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api",
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20) as api:
        out = {"types": (await api.get("/types")).json(), "schedules": (await api.get("/schedules")).json(),
               "health": await api.get("/health"), "refused": await api.post("/types/t.gone/trigger", json={}),
               "allowed": await api.post("/types/t.gone/trigger", json={"allow_unknown": True})}
    await app.state.api.aclose()
    return out


@pytest.mark.slow
def test_a_removed_file_is_unserved_refused_and_unhealthy(
        redis_url: str, jobs_dir: Path, use_handlers: Any, daemon: Any) -> None:
    # Given a daemon serving t.gone (with a schedule) from one file and t.echo from another
    use_handlers("basic")
    (jobs_dir / "gone.py").write_text(GONE)
    d = daemon()
    instance = d.events("daemon.ready")[0]["instance"]
    served = _types(redis_url)["t.gone"]
    assert served["served"] and served["served_by"] == [instance]
    firing = _schedule_of(redis_url, "t.gone")
    assert firing["status"] == "firing" and len(firing["next"]) == 3 and firing["last_fired"] is None
    assert all(t.endswith("+00:00") and ("T01:00:00" in t or "T02:00:00" in t) for t in firing["next"])
    with SyncClient(redis_url) as producer:
        ran = producer.wait(producer.enqueue("t.gone", {}).id, timeout=15)
        assert ran.result == "ran"  # the producer now holds t.gone's metadata in its cache

        # When the file is deleted
        (jobs_dir / "gone.py").unlink()
        wait_until(lambda: any("t.gone" in e["removed"] for e in d.events("reload.done")), 15, what="reload")

        # Then the long-lived producer is refused once its cached read lapses (5 s), naming the instance
        meanwhile: list[str] = []  # accepted from the cached read: they wait, queued
        refusal = wait_until(lambda: _refused(producer, "t.gone", meanwhile), 10, interval=0.2, what="a refusal")
        assert refusal.last_instance == instance and instance in str(refusal)
    # And `types` shows it unserved, with the instance and time that served it last
    types = _types(redis_url)
    gone = types["t.gone"]
    assert not gone["served"] and gone["served_by"] == []
    assert gone["last_served"]["instance"] == instance and gone["last_served"]["at"].endswith("+00:00")
    assert types["t.echo"]["served"]
    # And `schedules` does not list its schedule as firing
    stopped = _schedule_of(redis_url, "t.gone")
    assert stopped["status"] == "not served" and stopped["next"] == [] and not stopped["served"]
    # And the CLI refuses an enqueue of it, naming the last instance, unless --allow-unknown
    refused = _cli(redis_url, "enqueue", "t.gone", "{}")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "unknown_job_type" in refused.stderr and f"last served by instance {instance}" in refused.stderr
    allowed = _cli(redis_url, "enqueue", "t.gone", "{}", "--allow-unknown")
    assert allowed.returncode == 0 and allowed.stdout.startswith("queued "), allowed.stderr
    with SyncClient(redis_url, allow_unknown=True) as producer:  # and one waiting on that job
        after = producer.enqueue("t.gone", {}, depends_on=[allowed.stdout.split()[1]])
        assert producer.get(after.id).state is State.WAITING
    # And `health` reports the queued and waiting jobs of an unserved type: non-zero exit
    health = _cli(redis_url, "health")
    assert health.returncode == 1 and "t.gone" in health.stderr and "no live instance serves it" in health.stderr
    report = json.loads(_cli(redis_url, "health", "--json").stdout)
    assert report["status"] == "degraded"
    assert [(p["type"], p["queued"]) for p in report["problems"]] == [("t.gone", len(meanwhile) + 2)]
    # And the API says the same
    api = asyncio.run(_api(redis_url))
    served_now = {t["name"]: t["served"] for t in api["types"]}
    assert served_now["t.gone"] is False and served_now["t.echo"] is True
    assert [s["status"] for s in api["schedules"] if s["job"] == "t.gone"] == ["not served"]
    assert api["health"].status_code == 200 and api["health"].json()["status"] == "degraded"
    assert api["refused"].status_code == 404
    assert api["refused"].json()["error"]["code"] == "unknown_job_type"
    assert instance in api["refused"].json()["error"]["message"]
    assert api["allowed"].status_code == 201, api["allowed"].text
    # And once its file is back, the type serves again and its queued jobs run: health is ok
    (jobs_dir / "gone.py").write_text(GONE)
    wait_until(lambda: _types(redis_url)["t.gone"]["served"], 15, interval=0.3, what="served again")
    with SyncClient(redis_url) as producer:
        wait_until(lambda: not producer.list("t.gone", "pending"), 15, what="the queued jobs ran")
    assert _cli(redis_url, "health").returncode == 0


def test_a_task_whose_toolchain_is_missing_is_refused_with_its_load_error(
        redis_url: str, daemon: Any, tmp_path: Path) -> None:
    # Given a .dll task on a daemon whose PATH has no `dotnet`
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "report.dll").write_bytes(b"MZ")
    empty = tmp_path / "no-tools"
    empty.mkdir()
    d = daemon(env={"PATH": str(empty)})
    assert any("report.dll" in path for path in d.events("daemon.ready")[0]["load_errors"])
    # When a producer enqueues it
    refused = _cli(redis_url, "enqueue", "report", "{}")
    with SyncClient(redis_url) as producer, pytest.raises(UnknownJobType) as raised:
        producer.enqueue("report", {})
    # Then the refusal carries the load error: the file, the missing program and the fix
    assert refused.returncode != 0
    for text in (refused.stderr, str(raised.value)):
        assert "report.dll" in text and "`dotnet`" in text and "not on PATH" in text, text
    assert raised.value.load_errors and raised.value.last_instance is None

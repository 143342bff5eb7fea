"""Operator commands as a user runs them: workers, health, events, api (real processes, real Redis)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from supervisor.producers.client import SyncClient
from tests.conftest import wait_until

# `supervisor/operators/cli/__init__.py` adds these commands (supervisor.operators.cli.ops) to `main`.
CLI = [sys.executable, "-c", "from supervisor.operators.cli import main; main(prog_name='job-supervisor')"]


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL", "WORKERS_"))}
    return {**base, "JOB_SUPERVISOR_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **extra}


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60, check=False)


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


def test_workers_and_health_json(redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    use_handlers("basic")
    d = daemon()
    env = _env(REDIS_URL=redis_url)
    wait_until(lambda: json.loads(_cli("workers", "--json", env=env, cwd=tmp_path).stdout or "[]"), 15,
               what="presence")
    done = _cli("workers", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (worker,) = json.loads(done.stdout)
    assert worker["status"] == "alive" and worker["pid"] == d.pid and "t.echo" in worker["types"]
    assert worker["workers"][0]["rss"] > 0
    human = _cli("workers", env=env, cwd=tmp_path)
    assert human.returncode == 0 and worker["instance"] in human.stdout and "alive" in human.stdout
    health = _cli("health", "--json", env=env, cwd=tmp_path)
    assert health.returncode == 0, health.stderr
    report = json.loads(health.stdout)
    assert report["status"] == "ok" and report["instances"] == 1
    down = _cli("health", "--json", env=_env(REDIS_URL="redis://127.0.0.1:1/0"), cwd=tmp_path)
    assert down.returncode == 1 and json.loads(down.stdout)["status"] == "unavailable"
    down_human = _cli("health", env=_env(REDIS_URL="redis://127.0.0.1:1/0"), cwd=tmp_path)
    assert down_human.returncode == 1 and "unavailable" in down_human.stderr


def test_events_follows_the_live_stream(redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path) -> None:
    use_handlers("basic")
    daemon()
    proc = subprocess.Popen([*CLI, "events", "--json", "--type", "t.echo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(REDIS_URL=redis_url), cwd=tmp_path)
    lines = _lines(proc)
    got: list[dict[str, Any]] = []
    try:
        with SyncClient(redis_url) as client:
            # The follower starts "from now": keep producing until it has seen whole jobs.
            for _ in range(100):
                ref = client.enqueue("t.echo", {"value": "e"})
                client.enqueue("t.sleep", {"seconds": 0})  # another type: filtered out
                client.wait(ref.id, 10)
                try:
                    while True:
                        got.append(json.loads(lines.get(timeout=0.2)))
                except queue.Empty:
                    pass
                if sum(1 for e in got if e["event"] == "completed") >= 2:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert {e["type"] for e in got} == {"t.echo"}
    assert {"enqueued", "started", "completed"} <= {e["event"] for e in got}
    assert all(e["job_id"] and e["time"] and e["stream_id"] for e in got)


def test_api_refuses_a_public_address_without_a_token(redis_url: str, tmp_path: Path) -> None:
    refused = _cli("api", "--host", "0.0.0.0", env=_env(REDIS_URL=redis_url), cwd=tmp_path)  # noqa: S104  (refused: the test)
    assert refused.returncode == 78, refused.stderr
    assert "without a token" in refused.stderr and "JOB_SUPERVISOR_API_TOKEN" in refused.stderr


def test_api_serves_with_a_token_and_stops_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    env = _env(REDIS_URL=redis_url, JOB_SUPERVISOR_API_TOKEN="e2e-token")
    proc = subprocess.Popen([*CLI, "api", "--host", "127.0.0.1", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    lines = _lines(proc)
    try:
        listening: dict[str, Any] = {}

        def ready() -> bool:
            try:
                while True:
                    line = json.loads(lines.get_nowait())
                    if line.get("event") == "api.listening":
                        listening.update(line)
            except (queue.Empty, ValueError):
                pass
            if proc.poll() is not None:
                raise AssertionError(f"api exited with {proc.returncode}")
            return bool(listening)

        wait_until(ready, 15, what="api.listening")
        base = f"http://127.0.0.1:{listening['port']}"
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        assert httpx.get(f"{base}/jobs").status_code == 401
        jobs = httpx.get(f"{base}/jobs", headers={"Authorization": "Bearer e2e-token"})
        assert jobs.status_code == 200 and jobs.json() == {"jobs": [], "next_cursor": None, "corrupt": []}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0


def test_daemon_refuses_public_api_without_token(redis_url: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env.update({"REDIS_URL": redis_url, "JOB_SUPERVISOR_API_ENABLED": "true",
                "JOB_SUPERVISOR_API_HOST": "0.0.0.0",  # noqa: S104  (the refusal of a public bind is the test)
                "JOB_SUPERVISOR_JOBS_DIR": str(tmp_path), "JOB_SUPERVISOR_TASKS_DIR": str(tmp_path)})
    done = subprocess.run([sys.executable, "-m", "supervisor", "run"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60, check=False)
    assert done.returncode == 78, done.stdout + done.stderr
    assert "api_token" in done.stderr

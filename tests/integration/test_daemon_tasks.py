"""Tasks in tasks/ and Python jobs with runtime="subprocess", run by the daemon end to end."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor import Client, InvalidPayload, State
from tests.conftest import shipped_tasks


async def test_shell_and_csharp_tasks_results_and_logs(redis_url: str, daemon: Any, tmp_path: Path) -> None:
    # Given a fresh tasks/ folder with a shell task and a C# task
    shipped_tasks(tmp_path, "hello.sh", "Hello.cs", "Hello.toml")
    daemon()
    async with Client(redis_url) as client:
        # When each is enqueued
        sh = await client.wait((await client.enqueue("hello", {"name": "Ada"})).id, timeout=30)
        cs = await client.wait((await client.enqueue("csharp.hello", {"name": "Grace"})).id, timeout=90)
        sh_logs = await client.logs(sh.id)
    # Then both completed with their results; progress and output lines reached the record
    assert sh.state is State.COMPLETED, sh.error
    assert "Ada" in json.dumps(sh.result)
    assert sh.progress and sh.progress["percent"] == 50
    assert cs.state is State.COMPLETED, cs.error
    assert "Grace" in json.dumps(cs.result)
    assert sh_logs, "other output lines become the job's log"
    # And the CLI shows the same logs
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env["REDIS_URL"] = redis_url
    shown = subprocess.run([sys.executable, "-m", "supervisor", "jobs", "logs", sh.id], capture_output=True,
                           text=True, env=env, timeout=30, check=False)
    assert shown.returncode == 0 and shown.stdout.splitlines() == sh_logs


async def test_task_payload_schema_is_enforced_at_enqueue(redis_url: str, daemon: Any, tmp_path: Path) -> None:
    shipped_tasks(tmp_path, "validate_payload.sh", "validate_payload.toml")
    daemon()
    async with Client(redis_url) as client:
        try:
            await client.enqueue("validate-payload", {"unexpected": True})
        except InvalidPayload as exc:
            assert "validate-payload" in str(exc)
        else:
            raise AssertionError("a payload against the task's JSON Schema must be refused")


async def test_pid_per_runtime_and_no_secret_leak(redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("runtimes")
    d = daemon(env={"SECRET_TOKEN": "do-not-leak"})
    async with Client(redis_url) as client:
        inproc = [await client.wait((await client.enqueue("t.pid-inprocess", {})).id, timeout=20) for _ in range(2)]
        sub = [await client.wait((await client.enqueue("t.pid-subprocess", {})).id, timeout=30) for _ in range(2)]
        sub_logs = await client.logs(sub[0].id)
    assert {j.result["pid"] for j in inproc} == {d.pid}
    sub_pids = {j.result["pid"] for j in sub}
    assert len(sub_pids) == 2 and d.pid not in sub_pids, "subprocess: a fresh process per job"
    assert all(j.state is State.COMPLETED for j in inproc + sub)
    assert inproc[0].result["secret_visible"] is True
    assert sub[0].result["secret_visible"] is False, "the daemon's secrets never reach a subprocess"
    assert sub[0].progress == {"percent": 50.0, "message": "half way", "step": None}
    assert any("running t.pid-subprocess" in line for line in sub_logs)


async def test_process_runtime_reuses_pool_workers_and_caps_concurrency(
        redis_url: str, use_handlers: Any, daemon: Any) -> None:
    use_handlers("runtimes")
    d = daemon(env={"WORKERS_CONCURRENCY": "3"})
    async with Client(redis_url) as client:
        refs = [await client.enqueue("t.pid-process", {"sleep": 0.3}) for _ in range(12)]
        jobs = [await client.wait(r.id, timeout=30) for r in refs]
    assert all(j.state is State.COMPLETED for j in jobs)
    pids = collections.Counter(j.result["pid"] for j in jobs)
    assert d.pid not in pids and len(pids) <= 3 and max(pids.values()) >= 2, "long-lived workers are reused"
    # Never more than the type's concurrency (10) running at once, from the recorded start/end
    # times: sync jobs that mostly wait share a worker's lanes, so 3 workers may run more than 3
    edges = sorted([(j.result["started"], 1) for j in jobs] + [(j.result["ended"], -1) for j in jobs])
    running, peak = 0, 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak <= 10


@pytest.mark.parametrize("how", ["kill", "exit"])
async def test_pool_worker_dying_mid_job_is_replaced_and_job_redelivered(
        redis_url: str, use_handlers: Any, daemon: Any, how: str) -> None:
    use_handlers("runtimes")
    daemon(env={"WORKERS_CONCURRENCY": "2"})
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("t.crash-once", {"how": how})).id, timeout=30)
        after = [await client.wait((await client.enqueue("t.pid-process", {})).id, timeout=30) for _ in range(3)]
    assert job.state is State.COMPLETED and job.result["attempt"] == 2
    assert job.attempts[0].outcome == "failed" and "died" in (job.attempts[0].error or "")
    assert all(j.state is State.COMPLETED for j in after)


async def test_a_task_takes_the_options_of_job(redis_url: str, daemon: Any, tmp_path: Path) -> None:
    # Given a task whose sidecar sets the options tasks once lacked
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "keyed.sh").write_text("sleep 30\n")
    (tasks / "keyed.toml").write_text(
        'name = "t.keyed-task"\ndeadline = 2\nretention = 600\nrate_limit = "50/s"\n'
        'key_concurrency = { key = ["tenant", "/k"] }\nqueue = { max_queued_per_key = 0 }\n')
    daemon()
    async with Client(redis_url) as client:
        # Then its published policy shows them
        meta = await client.broker.type_meta("t.keyed-task")
        policy = json.loads(meta["policy"])
        assert (policy["deadline"], policy["retention"], policy["rate_limit"]) == (2, 600, "50/1s")
        assert policy["key_concurrency"]["key"] == ["tenant", "/k"] and policy["queue"]["max_queued_per_key"] == 0
        assert meta["retention_ms"] == "600000"
        # And a second job of the same key is refused while the first is live
        first = await client.submit("t.keyed-task", {"k": "a"})
        second = await client.submit("t.keyed-task", {"k": "a"})
        assert first.outcome == "accepted" and first.key == "tenant:a"
        assert second.outcome == "rejected" and second.existing == first.job_id
        # And a job that cannot start before the type's deadline expires
        late = await client.enqueue("t.keyed-task", {"k": "b"}, delay=4)
        job = await client.wait(late.id, timeout=30)
    assert job.state is State.EXPIRED and "deadline" in (job.error or "")

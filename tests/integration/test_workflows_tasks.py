"""Child jobs from tasks: `::enqueue` from a shell task and a C# task, created once although the
task is re-delivered; the reply pipe's answers; a refused line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runners.task_children import parse_line
from supervisor import Client, State
from tests.conftest import shipped_tasks


@pytest.mark.parametrize(("task", "timeout"), [("spawn-child", 30), ("csharp.spawn-child", 120)])
async def test_a_task_creates_a_child_once_through_retries(task: str, timeout: float, redis_url: str, daemon: Any,
                                                           tmp_path: Path) -> None:
    # Given the shipped shell and C# examples (each enqueues a `hello` child) and the hello task
    shipped_tasks(tmp_path, "spawn_child.sh", "spawn_child.toml", "SpawnChild.cs", "SpawnChild.toml", "hello.sh")
    daemon()
    async with Client(redis_url) as client:
        # When one runs, creates its child, and asks for a retry; the retry prints the same line
        ref = await client.enqueue(task, {"name": "Ada", "retry_first": True})
        job = await client.wait(ref.id, timeout=timeout)
        # Then the second attempt was told the child exists: the same id, and one child in all
        assert job.state is State.COMPLETED, job.error
        assert [a.outcome for a in job.attempts] == ["failed", "completed"]
        assert job.result["status"] == "existing"
        child = await client.wait(job.result["child"], timeout=30)
        children = [j for j in await client.list("hello", limit=1000) if j.parent == ref.id]
    assert [c.id for c in children] == [child.id]
    assert child.state is State.COMPLETED and "Ada" in child.result["greeting"]
    assert child.context["request_id"] == job.context["request_id"], "the child continues the request"
    assert child.idempotency_key == f"{ref.id}:child:1"


async def test_a_refused_enqueue_fails_the_run_and_says_why(redis_url: str, daemon: Any, tmp_path: Path) -> None:
    tasks = shipped_tasks(tmp_path)
    script = tasks / "bad_child.sh"
    script.write_text('#!/usr/bin/env bash\necho "::enqueue no.such-type {}"\nread -r status _ rest <&"$JOB_REPLY_FD"\n'
                      'echo "reply: $status $rest"\necho "::submit also.unknown {} {\\"bogus\\": 1}"\n'
                      'read -r status _ rest <&"$JOB_REPLY_FD"\necho "reply: $status $rest"\n')
    script.chmod(0o755)
    (tasks / "bad_child.toml").write_text('name = "bad-child"\nmax_deliver = 1\n')
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("bad-child", {})).id, timeout=30)
        logs = await client.logs(job.id)
    # Then the task heard each refusal on its pipe, and the refused ::enqueue failed the Run
    assert job.state is State.DEAD and "::enqueue line 1 was refused" in (job.error or "")
    assert any(line.startswith("reply: error") and "unknown job type" in line for line in logs)
    assert any(line.startswith("reply: error") and "unknown option" in line for line in logs)


def test_parse_line() -> None:
    assert parse_line('hello {"a": 1} {"delay": 2}') == ("hello", {"a": 1}, {"delay": 2})
    assert parse_line("hello") == ("hello", {}, {})
    with pytest.raises(ValueError, match="not JSON"):
        parse_line("hello {oops")
    with pytest.raises(ValueError, match="unknown option"):
        parse_line('hello {} {"nope": 1}')


async def test_a_subprocess_python_job_enqueues_through_the_protocol(redis_url: str, use_handlers: Any,
                                                                     daemon: Any) -> None:
    use_handlers("workflow")
    daemon()
    async with Client(redis_url) as client:
        job = await client.wait((await client.enqueue("wf.sub-spawn", {})).id, timeout=30)
        assert job.state is State.COMPLETED, job.error
        child = await client.wait(job.result["child"], timeout=20)
        second = await client.get(job.result["second"])
        later = await client.get(job.result["later"])
    assert child.parent == job.id and child.state is State.COMPLETED
    assert second.idempotency_key == f"{job.id}:again" and job.result["outcome"] == "accepted"
    # run_at reaches the daemon too (as a delay): the child waits its turn
    assert later.state is State.PENDING and later.run_at is not None
    assert 590 < (later.run_at - later.created).total_seconds() <= 600

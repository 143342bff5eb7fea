"""Cancel reaches a running job at once in every runtime, whatever ack_wait is.

Every type here has ack_wait=300, so the daemon renews leases (and so hears of a
cancel through its heartbeat) only every 100 s: a job that ends `cancelled` within
a few seconds of the request was woken by the cancel channel.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import Client, State
from tests.conftest import await_until

#: Far below the 100 s heartbeat; covers the subprocess's 1 s grace and a slow CI machine.
PROMPT_S = 6.0


async def _is(client: Client, job_id: str, state: State) -> bool:
    return (await client.get(job_id)).state is state


def _stubborn_task(tasks: Path) -> None:
    tasks.mkdir(exist_ok=True)
    script = tasks / "ignores-term.sh"
    script.write_text("#!/bin/bash\ntrap '' TERM\necho started\nsleep 60\n")  # the sleep inherits the ignore
    script.chmod(0o755)
    (tasks / "ignores-term.toml").write_text("ack_wait = 300\ngrace = 1\n")


@pytest.mark.parametrize("name", ["t.polls-cancel-async", "t.polls-cancel-process", "ignores-term"])
async def test_cancel_of_a_running_job_ends_it_cancelled_at_once(
    redis_url: str, use_handlers: Any, daemon: Any, tmp_path: Path, name: str,
) -> None:
    # Given a running job of a type whose lease is 300 s (one heartbeat every 100 s)
    use_handlers("prompt_cancel")
    _stubborn_task(tmp_path / "tasks")
    d = daemon()
    async with Client(redis_url) as client:
        ref = await client.enqueue(name, {})
        await await_until(lambda: _is(client, ref.id, State.ACTIVE), timeout=20, what=f"{name} active")
        if name == "ignores-term":  # it ignores SIGTERM from its first line on
            await await_until(lambda: _started(client, ref.id), timeout=10, what="task started")
        # When it is cancelled
        asked = time.monotonic()
        assert await client.cancel(ref.id, "operator stop") == "requested"
        # Then it ends cancelled within seconds, not at the next lease renewal
        await await_until(lambda: _is(client, ref.id, State.CANCELLED), timeout=PROMPT_S,
                          what=f"{name} cancelled without waiting for a heartbeat")
        took = time.monotonic() - asked
        job = await client.get(ref.id)
    assert job.error == "operator stop" and job.attempts[-1].outcome == "cancelled"
    assert next(e for e in d.events("run.cancel_requested") if e["job_id"] == ref.id)["via"] == "channel"
    if name == "ignores-term":
        # the task ignored SIGTERM: its group got SIGKILL after the 1 s grace
        finished = [e for e in d.events("run.finished") if e["job_id"] == ref.id]
        assert took >= 1.0 and "SIGKILL after 1s grace" in finished[0]["error"]
    assert d.proc.poll() is None


async def _started(client: Client, job_id: str) -> bool:
    return "started" in await client.broker.logs(job_id)

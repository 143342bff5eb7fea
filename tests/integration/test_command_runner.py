"""The subprocess runner against real processes: protocol, exit codes, stops, limits, C#.

Every wait is bounded; "no process left" is checked with psutil by identity
(creation time) and by the job's environment, never by sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from runners.base import RunRequest, RunResult, RunStatus
from runners.command import CommandRunner, CommandSpec, ResourceLimits, run_command
from runners.task_output import LOG_TRUNCATED
from supervisor.daemon.tasks import discover_tasks
from supervisor.errors import HandlerImportError

REPO = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Recorder:
    """A RunEvents that keeps everything, and can watch log lines as they arrive."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[float, str | None, str | None]] = []
        self.heartbeats = 0
        self.lines: list[tuple[str, str]] = []
        self.seen: dict[str, asyncio.Event] = {}
        self.on_line: list[Any] = []

    def progress(self, percent: float, message: str | None = None, step: str | None = None) -> None:
        self.progress_calls.append((percent, message, step))

    def heartbeat(self) -> None:
        self.heartbeats += 1

    def log(self, line: str, stream: str = "stdout") -> None:
        self.lines.append((stream, line))
        for hook in self.on_line:
            hook(line)
        for word, event in self.seen.items():
            if word in line:
                event.set()

    def waiter(self, word: str) -> asyncio.Event:
        return self.seen.setdefault(word, asyncio.Event())

    def text(self, stream: str | None = None) -> list[str]:
        return [line for s, line in self.lines if stream in (None, s)]


def request(
    payload: Any = None,
    *,
    timeout_s: float | None = 10.0,
    deadline: float | None = None,
    job_id: str | None = None,
) -> RunRequest:
    payload = {} if payload is None else payload
    return RunRequest(
        job_id=job_id or f"job-{uuid.uuid4().hex[:12]}",
        name="test.task",
        attempt=2,
        payload=payload,
        payload_json=json.dumps(payload),
        context={
            "request_id": "req-42",
            "trace_id": TRACEPARENT[3:35],
            "traceparent": TRACEPARENT,
            "tracestate": "k=v",
        },
        deadline=deadline,
        timeout_s=timeout_s,
    )


async def run_sh(
    script: str,
    *,
    events: Recorder | None = None,
    req: RunRequest | None = None,
    cancel: asyncio.Event | None = None,
    **spec: Any,
) -> tuple[RunResult, Recorder]:
    events = events or Recorder()
    result = await run_command(
        CommandSpec(argv=["bash", "-c", script], **spec),
        req or request(),
        events,
        cancel or asyncio.Event(),
    )
    return result, events


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def processes_of(job_id: str) -> list[psutil.Process]:
    """Live processes whose environment says they belong to `job_id`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("JOB_ID") == job_id and not gone(proc):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_all_gone(procs: list[psutil.Process], job_id: str, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        alive = [p for p in procs if not gone(p)] + processes_of(job_id)
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes survived the run: {alive}")
        time.sleep(0.02)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and not gone(proc):
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def assert_group_gone(pgid: int, within_s: float = 5.0) -> None:
    """The group is empty, or holds only zombies that pid 1 has yet to reap."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        alive = group_members(pgid)
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {pgid} still has {alive}")
        time.sleep(0.02)


def track_pids(events: Recorder, tag: str) -> dict[int, psutil.Process]:
    """Capture (by identity) every pid the script prints as `<tag> <pid>` while it runs."""
    procs: dict[int, psutil.Process] = {}

    def hook(line: str) -> None:
        for match in re.finditer(rf"{tag} (\d+)", line):
            pid = int(match.group(1))
            procs[pid] = psutil.Process(pid)

    events.on_line.append(hook)
    return procs


# --- exit codes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "status", "error"),
    [
        ("exit 0", RunStatus.COMPLETED, None),
        ("echo 'bad input' >&2; exit 65", RunStatus.PERMANENT, "code 65"),
        ("echo 'busy, later' >&2; exit 75", RunStatus.RETRY, "code 75"),
        ("echo one >&2; echo two >&2; exit 3", RunStatus.FAILED, "exited with code 3"),
        ("echo dying >&2; kill -KILL $$", RunStatus.FAILED, "killed by signal SIGKILL (9)"),
        ("kill -TERM $$", RunStatus.FAILED, "killed by signal SIGTERM (15)"),
    ],
)
async def test_exit_code_maps_to_status(script: str, status: RunStatus, error: str | None) -> None:
    result, events = await run_sh(script)

    assert result.status is status
    assert result.retry_delay_s is None  # 75: the type's backoff policy decides
    if error is None:
        assert result.error is None
    else:
        assert result.error is not None and error in result.error
    for line in events.text("stderr"):
        assert line in (result.error or ""), "the last stderr lines are quoted in the error"


async def test_pid_is_the_childs() -> None:
    result, events = await run_sh("echo $$")
    assert result.pid == int(events.text("stdout")[0]) == result.result


async def test_a_program_that_cannot_start_fails_with_its_name() -> None:
    result = await run_command(
        CommandSpec(argv=["/nonexistent/tool"]), request(), Recorder(), asyncio.Event()
    )
    assert result.status is RunStatus.FAILED and "/nonexistent/tool" in (result.error or "")


async def _no_child(name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
    raise AssertionError("no child is asked for")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_run_that_cannot_start_or_is_cancelled_leaves_no_pipe_open() -> None:
    # Given runs whose children would be answered on a reply pipe (a task may ::enqueue)
    before = _open_fds()
    # When one cannot start, and another is cancelled while it runs
    failed = await run_command(CommandSpec(argv=["/nonexistent/tool"]), request(), Recorder(), asyncio.Event(),
                               child_enqueue=_no_child)
    events = Recorder()
    started = events.waiter("up")
    running = asyncio.create_task(run_command(CommandSpec(argv=["bash", "-c", "echo up; sleep 30"]), request(),
                                              events, asyncio.Event(), child_enqueue=_no_child))
    await asyncio.wait_for(started.wait(), 10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # Then neither left a descriptor of ours open
    assert failed.status is RunStatus.FAILED
    assert _open_fds() == before


# --- the protocol ---------------------------------------------------------------------


async def test_commands_on_both_streams_reach_the_events() -> None:
    script = r"""
echo "::progress 10"
echo "::progress 40 resizing the image" >&2
echo "::heartbeat"
echo "::heartbeat" >&2
echo "::progress 250 too far"
echo "::progress abc"
echo "::warning not ours"
echo "plain stderr" >&2
echo '::result {"ok": true, "n": [1, 2]}'
echo '{"not": "the result"}'
"""
    result, events = await run_sh(script)

    assert result.status is RunStatus.COMPLETED
    assert result.result == {"ok": True, "n": [1, 2]}  # ::result beats the last JSON line
    # Two pipes: order holds within a stream, not across them.
    assert sorted(events.progress_calls) == [
        (10.0, None, None),
        (40.0, "resizing the image", None),
        (100.0, "too far", None),
    ]
    assert events.heartbeats == 2
    assert events.text("stdout") == ["::progress abc", "::warning not ours", '{"not": "the result"}']
    assert events.text("stderr") == ["plain stderr"]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("""echo starting; echo '{"rows": 3}'""", {"rows": 3}),
        ("""echo '[1, 2]'; echo""", [1, 2]),  # a trailing blank line does not count
        ("""echo '{"rows": 3}'; echo done""", None),
        ("""echo '{"rows": 3}' >&2""", None),  # stderr never holds the result
        ("""printf '{"no": "newline"}'""", {"no": "newline"}),
    ],
)
async def test_last_stdout_line_that_is_json_is_the_result(script: str, expected: Any) -> None:
    result, _ = await run_sh(script)
    assert result.status is RunStatus.COMPLETED and result.result == expected


async def test_invalid_result_line_fails_the_run() -> None:
    result, events = await run_sh("echo '::result {oops'")
    assert result.status is RunStatus.FAILED and "invalid ::result" in (result.error or "")
    assert events.text() == ["::result {oops"]


async def test_payload_arrives_on_stdin_then_eof() -> None:
    payload = {"name": "Ada", "items": list(range(5))}
    result, _ = await run_sh("cat", req=request(payload))
    assert result.result == payload


async def test_big_payload_and_big_output_do_not_deadlock() -> None:
    payload = {"blob": "x" * (4 * 1024 * 1024)}
    # Writes 2 MiB to stdout before reading stdin: both pipes fill up at once.
    script = "head -c 2097152 /dev/zero | tr '\\0' 'y' | fold -w 1000; echo; wc -c"
    result, events = await run_sh(script, req=request(payload), log_cap_bytes=10_000)

    assert result.status is RunStatus.COMPLETED
    assert result.result == len(json.dumps(payload))
    assert events.text()[-1] == LOG_TRUNCATED


async def test_a_child_that_ignores_stdin_is_fine() -> None:
    result, _ = await run_sh("exit 0", req=request({"blob": "z" * (1024 * 1024)}))
    assert result.status is RunStatus.COMPLETED


async def test_log_is_capped_with_one_truncation_line() -> None:
    script = (
        'for i in $(seq 1 200); do echo "line $i"; echo "err $i" >&2; done; echo \'::result {"done": 1}\''
    )
    result, events = await run_sh(script, log_cap_bytes=100)

    assert result.result == {"done": 1}, "commands still work past the cap"
    assert events.text().count(LOG_TRUNCATED) == 1 and events.text()[-1] == LOG_TRUNCATED
    kept = events.text()[:-1]
    assert kept and sum(len(line) + 1 for line in kept) <= 100
    assert events.lines[0] in (("stdout", "line 1"), ("stderr", "err 1")), "the first lines are kept"


# --- environment ----------------------------------------------------------------------


async def test_environment_is_the_protocol_plus_the_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", "s3cret")
    monkeypatch.setenv("REDIS_URL", "redis://:pw@h")
    monkeypatch.setenv("JOB_SUPERVISOR_ADMIN__TOKEN", "t0ken")
    monkeypatch.setenv("UNRELATED", "nope")
    monkeypatch.setenv("TZ", "Europe/Paris")
    deadline = 4102444800.0  # 2100-01-01T00:00:00Z
    req = request(deadline=deadline, job_id="job-env-1")

    result, events = await run_sh("env", req=req, env={"MODE": "fast", "TZ": "UTC"})

    env = dict(line.split("=", 1) for line in events.text("stdout") if "=" in line)
    assert result.status is RunStatus.COMPLETED
    assert env["JOB_ID"] == "job-env-1" and env["JOB_NAME"] == "test.task" and env["JOB_ATTEMPT"] == "2"
    assert env["JOB_DEADLINE"] == "2100-01-01T00:00:00.000Z"
    assert env["JOB_REQUEST_ID"] == "req-42"
    assert env["TRACEPARENT"] == TRACEPARENT and env["TRACESTATE"] == "k=v"
    assert re.fullmatch(r"[0-9a-f]{32}", env["JOB_RUN_ID"])
    assert env["MODE"] == "fast" and env["TZ"] == "UTC"  # task env beats the inherited value
    assert env["PATH"] == os.environ["PATH"]
    for leaked in ("MY_API_TOKEN", "REDIS_URL", "JOB_SUPERVISOR_ADMIN__TOKEN", "UNRELATED"):
        assert leaked not in env
    assert not any("s3cret" in line or "redis://" in line for line in events.text())


async def test_env_allow_patterns_never_match_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hidden")
    monkeypatch.setenv("MY_API_TOKEN", "s3cret")
    monkeypatch.setenv("REDIS_URL", "redis://:pw@h")

    _, events = await run_sh(
        "env; echo JOB_DEADLINE_IS=[$JOB_DEADLINE]",
        env_allow=("PATH", "AWS_*", "MY_API_TOKEN", "REDIS_URL"),
    )

    env = dict(line.split("=", 1) for line in events.text("stdout") if "=" in line)
    assert env["AWS_REGION"] == "eu-west-3"
    assert "AWS_SECRET_ACCESS_KEY" not in env, "a pattern never lets a secret-looking name through"
    assert env["MY_API_TOKEN"] == "s3cret", "an exact name is an explicit choice"
    assert "REDIS_URL" not in env, "the daemon's own Redis URL never reaches a task"
    assert env["JOB_DEADLINE_IS"] == "[]"


async def test_cwd_is_the_specs(tmp_path: Path) -> None:
    result, _ = await run_sh('printf \'"%s"\\n\' "$PWD"', cwd=str(tmp_path))
    assert result.result == str(tmp_path)


# --- limits ---------------------------------------------------------------------------


async def test_resource_limits_are_visible_in_the_child() -> None:
    limits = ResourceLimits(open_files=77, memory_bytes=2 * 1024**3, cpu_seconds=30)
    result, events = await run_sh("echo $$; ulimit -n; ulimit -Hn; ulimit -v; ulimit -t", limits=limits)

    assert result.status is RunStatus.COMPLETED
    pid, soft_n, hard_n, as_kb, cpu = events.text("stdout")
    assert int(pid) == result.pid, "prlimit execs the program: same pid"
    assert (soft_n, hard_n, as_kb, cpu) == ("77", "77", str(2 * 1024**2), "30")


async def test_cpu_limit_stops_a_busy_loop(tmp_path: Path) -> None:
    # SIGXCPU dumps core by default: no core file, and none in the work tree anyway.
    script = "ulimit -c 0; while :; do :; done"
    result, _ = await run_sh(script, limits=ResourceLimits(cpu_seconds=1), cwd=str(tmp_path))
    assert result.status is RunStatus.FAILED
    assert "SIGXCPU" in (result.error or "") or "SIGKILL" in (result.error or "")


# --- stopping: timeout, cancel, grandchildren -------------------------------------------


ESCAPING_SCRIPT = r"""
sleep 300 & echo "child $!"
sleep 300 & echo "child $!"
setsid sleep 300 &
setsid bash -c 'echo "escaped $$"; exec sleep 300' &
echo started
wait
"""


async def test_timeout_kills_the_whole_tree_even_what_left_the_group() -> None:
    req = request(timeout_s=1.0)
    events = Recorder()
    procs = track_pids(events, "(?:child|escaped)")
    sessions: dict[int, int] = {}
    events.on_line.append(
        lambda line: (
            sessions.update({int(line.split()[1]): os.getsid(int(line.split()[1]))})
            if line.startswith("escaped")
            else None
        )
    )

    started = time.monotonic()
    result, _ = await run_sh(ESCAPING_SCRIPT, events=events, req=req, grace_s=2.0)
    took = time.monotonic() - started

    assert result.status is RunStatus.TIMEOUT
    assert "timed out after 1s" in (result.error or "") and "SIGTERM" in (result.error or "")
    assert 1.0 <= took < 4.0
    assert len(procs) == 3, events.lines
    (escaped,) = sessions
    assert sessions[escaped] == escaped != result.pid, "the escapee ran in a session of its own"
    assert_all_gone(list(procs.values()), req.job_id)


async def test_processes_that_ignore_sigterm_get_sigkill_after_grace() -> None:
    script = r"""
trap '' TERM
bash -c 'trap "" TERM; echo "child $$"; while :; do sleep 0.05; done' &
echo ready
while :; do sleep 0.05; done
"""
    req = request(timeout_s=0.5)
    events = Recorder()
    procs = track_pids(events, "child")

    started = time.monotonic()
    result, _ = await run_sh(script, events=events, req=req, grace_s=0.5)
    took = time.monotonic() - started

    assert result.status is RunStatus.TIMEOUT and "SIGKILL after 0.5s grace" in (result.error or "")
    assert 1.0 <= took < 4.0
    assert procs
    assert_all_gone(list(procs.values()), req.job_id)


async def test_cancel_stops_the_run_and_its_group() -> None:
    req = request(timeout_s=None)
    events = Recorder()
    procs = track_pids(events, "child")
    ready = events.waiter("started")
    cancel = asyncio.Event()

    run = asyncio.create_task(run_sh(ESCAPING_SCRIPT, events=events, req=req, cancel=cancel, grace_s=2.0))
    await asyncio.wait_for(ready.wait(), 5.0)
    cancel.set()
    result, _ = await asyncio.wait_for(run, 10.0)

    assert result.status is RunStatus.CANCELLED and result.pid is not None
    assert_group_gone(result.pid)
    assert_all_gone(list(procs.values()), req.job_id)


async def test_cancel_before_start_starts_nothing() -> None:
    cancel = asyncio.Event()
    cancel.set()
    result, events = await run_sh("echo should-not-run", cancel=cancel)
    assert result.status is RunStatus.CANCELLED and result.pid is None and events.lines == []


async def test_deadline_stops_the_run_like_a_timeout() -> None:
    result, _ = await run_sh("sleep 30", req=request(timeout_s=None, deadline=time.time() + 0.5), grace_s=1.0)
    assert result.status is RunStatus.TIMEOUT and "deadline" in (result.error or "")


async def test_processes_left_behind_after_a_normal_exit_are_stopped() -> None:
    # A double fork that leaves both the group and the session, then exits at once:
    # only the end-of-run sweep (JOB_RUN_ID marker) can find it.
    script = r"""
( setsid bash -c 'echo "escaped $$"; exec sleep 300' & )
sleep 300 & echo "child $!"
sleep 0.2
echo '{"done": true}'
"""
    req = request()
    events = Recorder()
    procs = track_pids(events, "(?:child|escaped)")

    result, _ = await run_sh(script, events=events, req=req, grace_s=1.0)

    assert result.status is RunStatus.COMPLETED and result.result == {"done": True}
    assert len(procs) == 2
    assert_all_gone(list(procs.values()), req.job_id)


async def test_an_outer_task_cancel_kills_the_child_at_once() -> None:
    req = request(timeout_s=None)
    events = Recorder()
    procs = track_pids(events, "child")
    ready = events.waiter("child")

    run = asyncio.create_task(run_sh('sleep 300 & echo "child $!"; wait', events=events, req=req))
    await asyncio.wait_for(ready.wait(), 5.0)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert_all_gone(list(procs.values()), req.job_id)


# --- the Runner -----------------------------------------------------------------------


async def test_command_runner_looks_specs_up_and_close_stops_runs() -> None:
    specs = {"slow": CommandSpec(argv=["bash", "-c", "echo started; sleep 300"], grace_s=1.0)}
    runner = CommandRunner(spec_for=specs.__getitem__)
    assert runner.kind == "subprocess"

    unknown = await runner.run(request(), Recorder(), asyncio.Event())
    assert unknown.status is RunStatus.FAILED and "no task named" in (unknown.error or "")

    events = Recorder()
    ready = events.waiter("started")
    req = RunRequest("job-runner-1", "slow", 1, {}, "{}", timeout_s=None)
    run = asyncio.create_task(runner.run(req, events, asyncio.Event()))
    await asyncio.wait_for(ready.wait(), 5.0)
    await asyncio.wait_for(runner.close(), 5.0)
    result = await asyncio.wait_for(run, 5.0)

    assert result.status is RunStatus.CANCELLED
    assert_all_gone([], "job-runner-1")


# --- shipped tasks: shell, Python, C# ---------------------------------------------------


async def test_shipped_shell_and_python_tasks_run(tmp_path: Path) -> None:
    tasks = discover_tasks(REPO / "tasks", sys.executable, cache_dir=tmp_path).tasks

    hello = Recorder()
    result = await run_command(tasks["hello"].command, request({"name": "Ada"}), hello, asyncio.Event())
    assert result.status is RunStatus.COMPLETED and result.result == {"greeting": "Hello, Ada!"}
    assert hello.progress_calls == [(50.0, "greeting", None)]

    resize = Recorder()
    payload = {"path": "/srv/img/cat.png", "width": 800, "source_size": [4000, 3000]}
    tasks["images.resize"].validate_payload(payload)
    result = await run_command(tasks["images.resize"].command, request(payload), resize, asyncio.Event())
    assert result.status is RunStatus.COMPLETED, result.error
    assert result.result == {"path": "/srv/img/cat.png", "width": 800, "height": 600}
    assert [p for p, _, _ in resize.progress_calls] == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert any("resized /srv/img/cat.png" in line for line in resize.text())

    bad = await run_command(
        tasks["images.resize"].command,
        request({"path": "x", "width": 1, "source_size": [0, 0]}),
        Recorder(),
        asyncio.Event(),
    )
    assert bad.status is RunStatus.PERMANENT and "bad source_size" in (bad.error or "")


def csharp_which(name: str) -> str | None:
    """Prefer Mono when it is there (the path this test is about); else whatever exists."""
    if name == "dotnet" and shutil.which("mcs") and shutil.which("mono"):
        return None
    return shutil.which(name)


def require_csharp_toolchain() -> None:
    if not (shutil.which("dotnet") or (shutil.which("mcs") and shutil.which("mono"))):
        pytest.fail(
            "no C# toolchain: neither `dotnet` nor Mono's `mcs`+`mono` is on PATH. The test command "
            "must install them: apt-get install -y mono-mcs mono-runtime"
        )


@pytest.mark.timeout(180)
async def test_csharp_task_compiles_once_and_runs(tmp_path: Path) -> None:
    require_csharp_toolchain()
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    shutil.copy(REPO / "tasks" / "Hello.cs", tasks_dir / "Hello.cs")
    shutil.copy(REPO / "tasks" / "Hello.toml", tasks_dir / "Hello.toml")
    cache = tmp_path / "cache"
    scan = discover_tasks(tasks_dir, sys.executable, cache_dir=cache, which=csharp_which)
    assert scan.errors == []
    task = scan.tasks["csharp.hello"]
    binary = Path(task.command.argv[-1])

    events = Recorder()
    req = request({"name": 'Zoë "the" dev'})
    result = await run_command(task.command, req, events, asyncio.Event())

    assert result.status is RunStatus.COMPLETED, result.error
    assert result.result == {"greeting": 'Hello, Zoë "the" dev!'}
    assert events.progress_calls == [(50.0, "greeting", None)]
    assert ("stderr", f'greeting Zoë "the" dev for job {req.job_id}') in events.lines
    built_at = binary.stat().st_mtime_ns

    # Given a fresh cache, when it runs again, then nothing is recompiled.
    again = await run_command(task.command, request({}), Recorder(), asyncio.Event())
    assert again.result == {"greeting": "Hello, world!"}
    assert binary.stat().st_mtime_ns == built_at

    # Given a changed source, when it runs, then the new code runs.
    source = tasks_dir / "Hello.cs"
    source.write_text(source.read_text().replace('"Hello, "', '"Bonjour, "'))
    changed = await run_command(task.command, request({"name": "Ada"}), Recorder(), asyncio.Event())
    assert changed.result == {"greeting": "Bonjour, Ada!"}

    # Given a source that does not compile, the Run fails with the compiler's words.
    source.write_text("class Broken { void Main( }")
    broken = await run_command(task.command, request({}), Recorder(), asyncio.Event())
    assert broken.status is RunStatus.FAILED
    assert "C# compile failed" in (broken.error or "") and "Hello.cs" in (broken.error or "")
    with pytest.raises(HandlerImportError, match="C# compile failed"):
        await task.prepare()  # the same source is not compiled twice


async def test_missing_interpreter_in_a_sidecar_command_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "ghost.toml").write_text('command = ["definitely-not-a-program-xyz", "{file}"]\n')
    task = discover_tasks(tmp_path / "tasks", cache_dir=tmp_path / "c").tasks["ghost"]

    result = await run_command(task.command, request(), Recorder(), asyncio.Event())

    assert result.status is RunStatus.FAILED and "definitely-not-a-program-xyz" in (result.error or "")


async def test_dotnet_build_path_with_a_stand_in_sdk(tmp_path: Path) -> None:
    """The `dotnet build` route (used when the SDK is installed), driven by a fake `dotnet`."""
    fake = tmp_path / "bin" / "dotnet"
    fake.parent.mkdir()
    calls = tmp_path / "calls.log"
    fake.write_text(
        f"""#!/usr/bin/env bash
echo "$*" >> {calls}
if [ "$1" = "--version" ]; then echo 8.0.404; exit 0; fi
if [ "$1" = "build" ]; then
  project="$2"; out="$6"
  grep -q '<TargetFramework>net8.0</TargetFramework>' "$project" || exit 9
  grep -q '<Compile Include="{tmp_path}/tasks/Hello.cs" />' "$project" || exit 8
  mkdir -p "$out" && echo fake > "$out/Hello.dll"
  exit 0
fi
exit 1
"""
    )
    fake.chmod(0o755)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "Hello.cs").write_text("class Hello { static void Main() {} }\n")
    cache = tmp_path / "cache"
    task = discover_tasks(
        tmp_path / "tasks",
        cache_dir=cache,
        which=lambda name: str(fake) if name == "dotnet" else shutil.which(name),
    ).tasks["Hello"]
    assert task.command.argv == [str(fake), str(cache / "Hello.dotnet" / "Hello.dll")]

    await task.prepare()
    await task.prepare()  # fresh: no second build

    assert (cache / "Hello.dotnet" / "Hello.dll").read_text() == "fake\n"
    builds = [line for line in calls.read_text().splitlines() if line.startswith("build")]
    assert len(builds) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".build-")], "build dirs are removed"

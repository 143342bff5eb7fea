"""The `subprocess` runner: one external program per Run.

A task (SPEC §6) is any program in `tasks/`. This module runs one attempt of it
and speaks the task protocol, the same for every language:

- stdin: the payload as JSON, then EOF;
- environment: an allow-list of the daemon's variables, the task's own
  variables, then `JOB_ID`, `JOB_NAME`, `JOB_ATTEMPT`, `JOB_DEADLINE`,
  `JOB_REQUEST_ID`, `TRACEPARENT`, `TRACESTATE` and `JOB_RUN_ID` (unique per
  attempt); nothing else of the daemon's environment leaks in;
- stdout/stderr lines `::progress 40 resizing`, `::heartbeat`,
  `::result {json}`, `::traceback "<JSON string>"` are commands; every other
  line is the job's log; without `::result`, a last stdout line that is JSON
  is the result; a failed Run's stack trace is its `::traceback`, else its last
  stderr lines (bounded) (`runners.task_output` reads them);
- `::enqueue NAME JSON [OPTIONS_JSON]` and `::submit ...` create child jobs, each
  answered by a line on the pipe `JOB_REPLY_FD` (`runners.task_children`);
- exit 0 completed, 75 retry, 65 permanent, anything else (or a signal) a
  retryable failure.

Process ownership. The child starts in a new session (`start_new_session=True`,
so its pgid and sid are its pid). A Run owns every process it starts: when it
is stopped (cancel, timeout) the whole group gets SIGTERM, then SIGKILL after
`grace_s`; and when the Run ends for any reason, whatever is left of its tree
is stopped the same way, including processes that left the group (`setsid`,
double fork): `runners.proctree` finds them.

Resource limits. `preexec_fn` is not safe in a threaded parent (the daemon has
thread pools), and `os.posix_spawn` cannot set rlimits. Setting them with
`prlimit(2)` after the start races the child (it may fork before the limit
lands, and its children keep the old limits). So the command is wrapped in
util-linux's `prlimit(1)`, which sets the limits on itself and then execs the
program: no race, no code between fork and exec, the same pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import structlog

from runners.base import RunEvents, RunRequest, RunResult, RunStatus
from runners.invoke import ChildEnqueue
from runners.proctree import ProcessTree, stop_tree
from runners.task_children import TaskChildren
from runners.task_output import OutputProtocol, TaskOutput

log = structlog.get_logger(__name__)

#: Variables a task inherits from the daemon's environment unless told otherwise.
DEFAULT_ENV_ALLOW: tuple[str, ...] = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "HOME",
    "TMPDIR",
    "DOTNET_ROOT",
    "DOTNET_CLI_HOME",
    "DOTNET_CLI_TELEMETRY_OPTOUT",
)

#: The daemon's own credentials: never handed to a task, even when allowed.
_NEVER_INHERIT = re.compile(r"^(REDIS_URL|JOB_SUPERVISOR_.*)$")
#: Secret-looking names pass only when named exactly, never through a pattern.
_SECRETISH = re.compile(r"SECRET|TOKEN|PASSW(OR)?D|CREDENTIAL|PRIVATE_KEY|API_KEY", re.IGNORECASE)

EX_DATAERR = 65  # sysexits: permanent failure
EX_TEMPFAIL = 75  # sysexits: try again later

_STDERR_TAIL = 5  # stderr lines quoted in a failure's error
_PIPE_DRAIN_S = 2.0  # how long to wait for EOF once every process is gone


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """Hard limits set on the task's process (inherited by its children).

    Attributes:
        memory_bytes: RLIMIT_AS, the address space. Runtimes that reserve a lot
            of virtual memory up front (Mono, .NET, the JVM) need generous values.
        cpu_seconds: RLIMIT_CPU; the kernel sends SIGXCPU when it is reached.
        open_files: RLIMIT_NOFILE.
    """

    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.memory_bytes, self.cpu_seconds, self.open_files))


@dataclass(frozen=True)
class CommandSpec:
    """How to start one task's program.

    Attributes:
        argv: the program and its arguments.
        cwd: working directory (None: the daemon's).
        env: the task's own variables (they override inherited ones).
        env_allow: names copied from the daemon's environment. Shell-style
            patterns (`AWS_*`) work but never match secret-looking names
            (`*TOKEN*`, `*SECRET*`, `*PASSWORD*`, ...), which pass only when
            listed exactly. `REDIS_URL` and `JOB_SUPERVISOR_*` never pass.
        limits: resource limits of the child.
        grace_s: time between SIGTERM and SIGKILL when stopping.
        log_cap_bytes: job log lines beyond this many bytes are dropped, with
            one `[log truncated]` line in their place.
        prepare: awaited before each start (e.g. compile a C# source once; a
            no-op when its cache is fresh). Raising fails the Run (retryable).
    """

    argv: list[str]
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    grace_s: float = 5.0
    log_cap_bytes: int = 64 * 1024
    prepare: Callable[[], Awaitable[None]] | None = field(default=None, compare=False, repr=False)


# --- environment ------------------------------------------------------------------


def inherited_env(allow: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` that `allow` lets through (see `CommandSpec.env_allow`)."""
    out: dict[str, str] = {}
    for entry in allow:
        if any(c in entry for c in "*?["):
            for name, value in environ.items():
                if fnmatch.fnmatchcase(name, entry) and not _SECRETISH.search(name):
                    out[name] = value
        elif entry in environ:
            out[entry] = environ[entry]
    return {k: v for k, v in out.items() if not _NEVER_INHERIT.match(k)}


def iso_deadline(deadline: float | None) -> str:
    """`deadline` (epoch seconds) as ISO-8601 UTC (`2025-01-02T03:04:05.000Z`), or ``""``."""
    if deadline is None:
        return ""
    stamp = datetime.fromtimestamp(deadline, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def build_env(
    spec: CommandSpec,
    request: RunRequest,
    *,
    run_id: str,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's whole environment: allow-list, then task env, then the protocol's variables."""
    env = inherited_env(spec.env_allow, os.environ if environ is None else environ)
    env.update(spec.env)
    ctx = request.context
    env.update(
        JOB_ID=request.job_id,
        JOB_NAME=request.name,
        JOB_ATTEMPT=str(request.attempt),
        JOB_DEADLINE=iso_deadline(request.deadline),
        JOB_REQUEST_ID=ctx.get("request_id", "") or "",
        TRACEPARENT=ctx.get("traceparent", "") or "",
        TRACESTATE=ctx.get("tracestate", "") or "",
        JOB_RUN_ID=run_id,
    )
    return env


def limited_argv(argv: list[str], limits: ResourceLimits, prlimit: str | None) -> list[str]:
    """`argv` wrapped in `prlimit(1)` when there are limits to set (see the module doc)."""
    if not limits:
        return list(argv)
    if prlimit is None:
        raise FileNotFoundError(
            "resource limits need the prlimit program (util-linux); install it or remove `limits`"
        )
    opts = []
    for flag, value in (
        ("--as", limits.memory_bytes),
        ("--cpu", limits.cpu_seconds),
        ("--nofile", limits.open_files),
    ):
        if value is not None:
            opts.append(f"{flag}={value}:{value}")
    return [prlimit, *opts, "--", *argv]


# --- running ----------------------------------------------------------------------


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _failure(text: str, output: TaskOutput) -> str:
    if output.stderr_tail:
        last = list(output.stderr_tail)[-_STDERR_TAIL:]
        return text + "; last stderr lines:\n" + "\n".join("  " + line[:500] for line in last)
    return text


async def run_command(
    spec: CommandSpec, request: RunRequest, events: RunEvents, cancel: asyncio.Event,
    child_enqueue: ChildEnqueue | None = None,
) -> RunResult:
    """Run one attempt of a task's program and say how it ended.

    Args:
        spec: how to start the program.
        request: the attempt (payload, ids, trace context, deadline, timeout).
        events: where progress, heartbeats and log lines go.
        cancel: set it to stop the Run (SIGTERM, then SIGKILL after `spec.grace_s`).
        child_enqueue: creates the task's `::enqueue` / `::submit` children (None: those lines are log).

    Returns:
        The outcome; `pid` is the child's pid once it started. The Run is stopped
        at `request.timeout_s` or at `request.deadline`, whichever comes first.
    """
    bound = log.bind(job_id=request.job_id, job_name=request.name, attempt=request.attempt)
    if cancel.is_set():
        return RunResult(RunStatus.CANCELLED, error="cancelled before start")

    if spec.prepare is not None and (refused := await _prepare(spec.prepare, cancel, bound)) is not None:
        return refused
    children = TaskChildren(request, child_enqueue) if child_enqueue is not None else None
    try:
        return await _run_started(spec, request, TaskOutput(events, spec.log_cap_bytes, children), cancel,
                                  children, bound)
    finally:
        if children is not None:
            children.close()  # a cancelled Run or a failed start leaves no pipe open


async def _run_started(spec: CommandSpec, request: RunRequest, output: TaskOutput, cancel: asyncio.Event,
                       children: TaskChildren | None, bound: Any) -> RunResult:
    """`run_command` from the program's start to its outcome."""
    run_id = uuid.uuid4().hex
    started_at = time.time()
    try:
        transport, proto = await _start(spec, build_env(spec, request, run_id=run_id), output, children)
    except OSError as exc:
        bound.warning("run.start_failed", argv=spec.argv, error=str(exc))
        return RunResult(RunStatus.FAILED, error=f"could not start {spec.argv[0]!r}: {exc}")

    pid = transport.get_pid()
    tree = ProcessTree(pid, run_id, started_at)
    bound = bound.bind(pid=pid)
    bound.debug("run.started", argv=spec.argv)
    stdin = cast(asyncio.WriteTransport | None, transport.get_pipe_transport(0))
    if stdin is not None:
        with contextlib.suppress(OSError):
            stdin.write(request.payload_json.encode("utf-8"))
            stdin.write_eof()

    timeout, why_timeout = _time_limit(request)
    try:
        reason, stopped_with = await _supervise(proto, tree, cancel, timeout, spec.grace_s, bound)
    finally:
        if not proto.exited.is_set() or tree.alive():  # we are being cancelled: no grace
            tree.refresh()
            tree.signal(signal.SIGKILL)
        transport.close()
        for fd in (1, 2):
            output.flush(fd)

    code = transport.get_returncode()
    status, error = await _with_children(children, *_outcome(reason, code, output, why_timeout, stopped_with))
    result = output.final_result() if status is RunStatus.COMPLETED else None
    trace = None if status in (RunStatus.COMPLETED, RunStatus.CANCELLED) else output.trace()
    bound.debug("run.finished", status=str(status), exit_code=code)  # the dispatcher logs the Run
    return RunResult(status, result=result, error=error, pid=pid, traceback=trace)


async def _start(
    spec: CommandSpec, env: dict[str, str], output: TaskOutput, children: TaskChildren | None = None,
) -> tuple[asyncio.SubprocessTransport, OutputProtocol]:
    """Start the program in a session of its own, its output read into `output` (OSError when it
    cannot); with `children`, it inherits the read end of their reply pipe (`JOB_REPLY_FD`)."""
    argv = limited_argv(spec.argv, spec.limits, shutil.which("prlimit"))
    try:
        return await asyncio.get_running_loop().subprocess_exec(
            lambda: OutputProtocol(output),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.cwd,
            env=env | children.env() if children else env,
            start_new_session=True,
            pass_fds=(children.read_fd,) if children else (),
        )
    except OSError:
        if children is not None:
            await children.finish()
        raise
    finally:
        if children is not None:
            children.started()


async def _with_children(children: TaskChildren | None, status: RunStatus,
                         error: str | None) -> tuple[RunStatus, str | None]:
    """The Run's outcome, reported once every child the task asked for was made (a refused
    `::enqueue` fails a Run that would have completed)."""
    if children is None:
        return status, error
    await children.finish()
    if status is RunStatus.COMPLETED and children.failure is not None:
        return RunStatus.FAILED, children.failure
    return status, error


def _time_limit(request: RunRequest) -> tuple[float | None, str]:
    """How long the Run may take from now (its timeout or its deadline, the sooner) and why it ends then."""
    timeout = request.timeout_s
    why_timeout = f"timed out after {timeout:g}s" if timeout is not None else ""
    if request.deadline is not None:
        to_deadline = request.deadline - time.time()
        if timeout is None or to_deadline < timeout:
            timeout = max(to_deadline, 0.0)
            why_timeout = "reached the job's deadline"
    return timeout, why_timeout


async def _prepare(prepare: Callable[[], Awaitable[None]], cancel: asyncio.Event, bound: Any) -> RunResult | None:
    """Await the task's `prepare` hook (a cancel stops it); the RunResult that ends the Run when it fails."""
    prep = asyncio.ensure_future(prepare())
    waiter = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({prep, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not prep.done():
            prep.cancel()
            with contextlib.suppress(BaseException):
                await prep
    if not prep.done() or prep.cancelled():
        return RunResult(RunStatus.CANCELLED, error="cancelled while preparing the task")
    if (exc := prep.exception()) is not None:
        bound.warning("run.prepare_failed", error=str(exc))
        return RunResult(RunStatus.FAILED, error=f"could not prepare the task: {exc}")
    return None


async def _supervise(
    proto: OutputProtocol, tree: ProcessTree, cancel: asyncio.Event, timeout: float | None, grace_s: float,
    bound: Any,
) -> tuple[str, str]:
    """The Run until its processes are gone: (why it ended, how it was stopped when it was)."""
    reason = await _wait_exit(proto, tree, cancel, timeout)
    stopped_with = ""
    if reason != "exited":
        bound.info("run.stopping", reason=reason, grace_s=grace_s)
        stopped_with = await stop_tree(tree, proto.exited, grace_s)
    await asyncio.to_thread(tree.sweep)
    if left := tree.alive():
        bound.warning("run.leftovers", pids=[p.pid for p in left])
        await stop_tree(tree, None, grace_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proto.closed.wait(), _PIPE_DRAIN_S)
    return reason, stopped_with


async def _wait_exit(
    proto: OutputProtocol, tree: ProcessTree, cancel: asyncio.Event, timeout: float | None
) -> str:
    """Wait for the child's exit, the cancel event or the timeout; walk the tree meanwhile."""
    deadline = None if timeout is None else time.monotonic() + timeout
    exited = asyncio.ensure_future(proto.exited.wait())
    cancelled = asyncio.ensure_future(cancel.wait())
    interval = 0.05
    try:
        while True:
            if proto.exited.is_set():
                return "exited"
            if cancel.is_set():
                return "cancelled"
            wait_s = interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                wait_s = min(wait_s, remaining)
            await asyncio.wait({exited, cancelled}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            if not proto.exited.is_set():
                tree.refresh()
                interval = min(interval * 2, 1.0)
    finally:
        exited.cancel()
        cancelled.cancel()


def _outcome(
    reason: str, code: int | None, output: TaskOutput, why_timeout: str, stopped_with: str
) -> tuple[RunStatus, str | None]:
    if reason == "timeout":
        return RunStatus.TIMEOUT, _failure(f"{why_timeout}; stopped with {stopped_with}", output)
    if reason == "cancelled":
        return RunStatus.CANCELLED, f"cancelled; stopped with {stopped_with}"
    if code is None:
        return RunStatus.FAILED, _failure("the process vanished without an exit status", output)
    if code == 0:
        if output.result_error is not None:
            return RunStatus.FAILED, output.result_error
        return RunStatus.COMPLETED, None
    if code == EX_TEMPFAIL:
        return RunStatus.RETRY, _failure("exited with code 75 (EX_TEMPFAIL: retry requested)", output)
    if code == EX_DATAERR:
        return RunStatus.PERMANENT, _failure("exited with code 65 (EX_DATAERR: permanent failure)", output)
    if code < 0:
        name = _signal_name(-code)
        hint = " (cpu_seconds limit reached)" if -code == signal.SIGXCPU else ""
        return RunStatus.FAILED, _failure(f"killed by signal {name} ({-code}){hint}", output)
    return RunStatus.FAILED, _failure(f"exited with code {code}", output)


# --- the Runner -------------------------------------------------------------------


class CommandRunner:
    """The `subprocess` runner: each Run is a fresh process (see `run_command`).

    Args:
        spec_for: the `CommandSpec` of a job name (raises `KeyError` for unknown names).
        payload_error: why a job's payload breaks its type's current schema, or None; a payload
            it refuses ends the Run PERMANENT (no retry) and the program never starts.
        child_enqueue: the daemon's creation of child jobs (`::enqueue`, `runners.task_children`).
    """

    kind = "subprocess"

    def __init__(self, spec_for: Callable[[str], CommandSpec],
                 payload_error: Callable[[str, str], str | None] | None = None,
                 child_enqueue: ChildEnqueue | None = None) -> None:
        self._spec_for = spec_for
        self._child_enqueue = child_enqueue
        self._payload_error = payload_error
        self._runs: dict[asyncio.Event, asyncio.Future[RunResult]] = {}
        self._closed = False

    async def run(self, request: RunRequest, events: RunEvents, cancel: asyncio.Event) -> RunResult:
        """Run one attempt; `close()` stops it like a cancel would."""
        try:
            spec = self._spec_for(request.name)
        except KeyError:
            return RunResult(RunStatus.FAILED, error=f"no task named {request.name!r} on this instance")
        if self._closed:
            return RunResult(RunStatus.CANCELLED, error="the subprocess runner is closed")
        if self._payload_error is not None and (
                problem := self._payload_error(request.name, request.payload_json)) is not None:
            return RunResult(RunStatus.PERMANENT, error=problem)
        stop = asyncio.Event()
        relay = asyncio.ensure_future(_relay(cancel, stop))
        run = asyncio.ensure_future(run_command(spec, request, events, stop, self._child_enqueue))
        self._runs[stop] = run
        try:
            return await run  # cancelling us cancels it: the Run then kills its processes at once
        finally:
            self._runs.pop(stop, None)
            relay.cancel()

    async def close(self) -> None:
        """Stop every Run still in flight, each like a cancel (the dispatcher drains first)."""
        self._closed = True
        for stop in self._runs:
            stop.set()
        if self._runs:
            await asyncio.wait(list(self._runs.values()))


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


__all__ = [
    "DEFAULT_ENV_ALLOW",
    "EX_DATAERR",
    "EX_TEMPFAIL",
    "CommandRunner",
    "CommandSpec",
    "ResourceLimits",
    "build_env",
    "inherited_env",
    "iso_deadline",
    "limited_argv",
    "run_command",
]

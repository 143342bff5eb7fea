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
  stderr lines (bounded);
- exit 0 completed, 75 retry, 65 permanent, anything else (or a signal) a
  retryable failure.

Process ownership. The child starts in a new session (`start_new_session=True`,
so its pgid and sid are its pid). A Run owns every process it starts: when it
is stopped (cancel, timeout) the whole group gets SIGTERM, then SIGKILL after
`grace_s`; and when the Run ends for any reason, whatever is left of its tree
is stopped the same way. Processes that left the group (`setsid`, double fork)
are found three ways: the descendant tree is walked while the Run is alive
(cheaply, through `/proc/PID/task/TID/children`, psutil as the fallback), and at
the end every process created since the start is checked for our session id or
for the `JOB_RUN_ID` marker in its environment. Signals go through psutil, which
refuses to signal a pid that was reused.

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
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import psutil
import structlog

from runners.base import TRACEBACK_MAX_BYTES, RunEvents, RunRequest, RunResult, RunStatus, bounded_text
from runners.stop import REAP_WAIT_S, Escalation, stop

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

LOG_TRUNCATED = "[log truncated]"
_MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer line is cut (a `::result` line included)
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


# --- output -----------------------------------------------------------------------


class _Output:
    """Splits the child's output into lines and acts on each (protocol commands, log, result)."""

    def __init__(self, events: RunEvents, log_cap_bytes: int) -> None:
        self._events = events
        self._cap = log_cap_bytes
        self._buffers: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._logged = 0
        self.truncated = False
        self.has_result = False
        self.result: Any = None
        self.result_error: str | None = None
        self.last_stdout: str | None = None
        self.stderr_tail: deque[str] = deque()  # the last stderr lines, about TRACEBACK_MAX_BYTES in all
        self._tail_size = 0
        self.traceback: str | None = None  # what a `::traceback` line said

    def feed(self, fd: int, data: bytes) -> None:
        buf = self._buffers[fd]
        buf += data
        if b"\n" in data:
            *lines, rest = buf.split(b"\n")
            self._buffers[fd] = buf = bytearray(rest)
            for raw in lines:
                self._line(fd, bytes(raw))
        while len(buf) > _MAX_LINE_BYTES:  # no newline in sight: cut it
            self._line(fd, bytes(buf[:_MAX_LINE_BYTES]))
            del buf[:_MAX_LINE_BYTES]

    def flush(self, fd: int) -> None:
        """The stream ended: a last line without a newline is still a line."""
        buf = self._buffers[fd]
        if buf:
            self._line(fd, bytes(buf))
            buf.clear()

    def _line(self, fd: int, raw: bytes) -> None:
        stream = "stdout" if fd == 1 else "stderr"
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if text.startswith("::") and self._command(text):
            return
        if stream == "stdout":
            if text.strip():
                self.last_stdout = text
        else:
            line = text[-TRACEBACK_MAX_BYTES:]
            self.stderr_tail.append(line)
            self._tail_size += len(line) + 1
            while self._tail_size > TRACEBACK_MAX_BYTES and len(self.stderr_tail) > 1:
                self._tail_size -= len(self.stderr_tail.popleft()) + 1
        self._log(text, stream)

    def _command(self, text: str) -> bool:
        """Act on a protocol command; False when `text` is not one (it is then a log line)."""
        word, _, rest = text[2:].partition(" ")
        rest = rest.strip()
        if word == "progress":
            percent_s, _, message = rest.partition(" ")
            try:
                percent = float(percent_s)
            except ValueError:
                return False
            if percent != percent:  # NaN
                return False
            self._call(self._events.progress, min(max(percent, 0.0), 100.0), message.strip() or None, None)
            return True
        if word == "heartbeat" and not rest:
            self._call(self._events.heartbeat)
            return True
        if word == "result":
            try:
                self.result = json.loads(rest)
            except ValueError as exc:
                self.result_error = f"the task printed an invalid ::result line ({exc}): {rest[:200]!r}"
                self.has_result = False
                return False
            self.has_result = True
            self.result_error = None
            return True
        if word == "traceback":
            try:
                trace = json.loads(rest)
            except ValueError:
                return False
            if not isinstance(trace, str):
                return False
            self.traceback = bounded_text(trace, head=4 * 1024)
            return True
        return False

    def trace(self) -> str | None:
        """A failed Run's stack trace: its `::traceback`, else its last stderr lines (bounded)."""
        if self.traceback is not None:
            return self.traceback
        return bounded_text("\n".join(self.stderr_tail)) if self.stderr_tail else None

    def _log(self, text: str, stream: str) -> None:
        if self.truncated:
            return
        size = len(text.encode("utf-8", errors="replace")) + 1
        if self._logged + size > self._cap:
            self.truncated = True
            self._call(self._events.log, LOG_TRUNCATED, stream)
            return
        self._logged += size
        self._call(self._events.log, text, stream)

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a broken sink must not break the Run
            log.exception("run.events_failed", callback=getattr(fn, "__name__", repr(fn)))

    def final_result(self) -> Any:
        """`::result` when given, else the last stdout line when it is JSON, else None."""
        if self.has_result:
            return self.result
        if self.last_stdout is not None:
            try:
                return json.loads(self.last_stdout)
            except ValueError:
                return None
        return None


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, output: _Output) -> None:
        self._output = output
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if fd in (1, 2):
            self._output.feed(fd, bytes(data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in (1, 2):
            self._output.flush(fd)

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


# --- the process tree -------------------------------------------------------------


def _proc_children(pid: int) -> list[int] | None:
    """Direct children of `pid` from /proc (None when the kernel lacks the file)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    except OSError:
        return None
    kids: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                kids.extend(int(x) for x in fh.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}"):
                return kids
            if os.path.exists(f"/proc/{pid}/task/{tid}"):
                return None  # kernel built without CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return kids


def _is_gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class _ProcessTree:
    """Every process a Run started, found however it tried to leave (see the module doc)."""

    def __init__(self, pid: int, run_id: str, started_at: float) -> None:
        self.pid = pid  # also the pgid and the sid
        self.run_id = run_id
        self.started_at = started_at
        self.known: dict[int, psutil.Process] = {}
        try:  # our unreaped child: its pid cannot have been reused yet
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None

    def _add(self, pid: int) -> None:
        if pid == self.pid or pid in self.known:
            return
        with contextlib.suppress(psutil.Error):
            self.known[pid] = psutil.Process(pid)

    def refresh(self) -> None:
        """Walk the tree from the child and from every known descendant (escapees keep theirs).

        Only live processes are walked from (psutil checks their creation time), so a
        recycled pid never brings a stranger's children in.
        """
        roots = [self._root] if self._root is not None else []
        todo = [p.pid for p in (*roots, *self.known.values()) if not _is_gone(p)]
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            kids = _proc_children(pid)
            if kids is None:  # no /proc children files: psutil scans every process instead
                try:
                    kids = [c.pid for c in psutil.Process(pid).children(recursive=True)]
                except psutil.Error:
                    kids = []
            for kid in kids:
                self._add(kid)
                todo.append(kid)

    def sweep(self) -> None:
        """Find processes created since the start that are in our session or carry our marker.

        Blocking (it reads /proc for every process): run it in a thread.
        """
        self.refresh()
        marker = f"JOB_RUN_ID={self.run_id}".encode()
        since = self.started_at - 2.0  # psutil's create_time is derived from boot time: allow jitter
        for proc in psutil.process_iter(["create_time"]):
            pid = proc.pid
            if pid == self.pid or pid in self.known or (proc.info["create_time"] or 0) < since:
                continue
            try:
                ours = os.getsid(pid) == self.pid
            except OSError:
                continue
            if not ours:
                try:
                    with open(f"/proc/{pid}/environ", "rb") as fh:
                        ours = marker in fh.read().split(b"\0")
                except OSError:
                    continue
            if ours:
                self.known[pid] = proc

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.known.values() if not _is_gone(p)]

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the whole group, then to every known descendant outside it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for proc in self.alive():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)


# --- running ----------------------------------------------------------------------


async def _wait_gone(tree: _ProcessTree, proto: _Protocol | None, timeout: float) -> bool:
    """Wait (bounded) until the child has exited and no known descendant is alive."""
    deadline = time.monotonic() + timeout
    while True:
        if (proto is None or proto.exited.is_set()) and not tree.alive():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(0.05, remaining))
        tree.refresh()


class _RunTarget:
    """A Run's processes as a stop target: the group and the known escapees, gone when all are."""

    __slots__ = ("proto", "tree")

    def __init__(self, tree: _ProcessTree, proto: _Protocol | None) -> None:
        self.tree = tree
        self.proto = proto

    def send(self, sig: signal.Signals) -> None:
        self.tree.signal(sig)

    async def gone(self, timeout: float | None) -> bool:
        return await _wait_gone(self.tree, self.proto, REAP_WAIT_S if timeout is None else timeout)

    def sweep(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.tree.pid, signal.SIGKILL)  # group members we never saw


async def _stop(tree: _ProcessTree, proto: _Protocol | None, grace_s: float) -> str:
    """SIGTERM the group and the known escapees; SIGKILL whatever is left after `grace_s`."""
    tree.refresh()
    stopped = await stop(_RunTarget(tree, proto), Escalation(term_s=grace_s, reap_s=REAP_WAIT_S))
    if not stopped.gone:
        log.warning("run.unkillable", pid=tree.pid, left=[p.pid for p in tree.alive()])
    if stopped.signal is signal.SIGTERM:
        return "SIGTERM"
    return f"SIGKILL after {grace_s:g}s grace"


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _failure(text: str, output: _Output) -> str:
    if output.stderr_tail:
        last = list(output.stderr_tail)[-_STDERR_TAIL:]
        return text + "; last stderr lines:\n" + "\n".join("  " + line[:500] for line in last)
    return text


async def run_command(
    spec: CommandSpec, request: RunRequest, events: RunEvents, cancel: asyncio.Event
) -> RunResult:
    """Run one attempt of a task's program and say how it ended.

    Args:
        spec: how to start the program.
        request: the attempt (payload, ids, trace context, deadline, timeout).
        events: where progress, heartbeats and log lines go.
        cancel: set it to stop the Run (SIGTERM, then SIGKILL after `spec.grace_s`).

    Returns:
        The outcome; `pid` is the child's pid once it started. The Run is stopped
        at `request.timeout_s` or at `request.deadline`, whichever comes first.
    """
    bound = log.bind(job_id=request.job_id, job_name=request.name, attempt=request.attempt)
    if cancel.is_set():
        return RunResult(RunStatus.CANCELLED, error="cancelled before start")

    if spec.prepare is not None:
        prep = asyncio.ensure_future(spec.prepare())
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

    run_id = uuid.uuid4().hex
    env = build_env(spec, request, run_id=run_id)
    loop = asyncio.get_running_loop()
    output = _Output(events, spec.log_cap_bytes)
    try:
        argv = limited_argv(spec.argv, spec.limits, shutil.which("prlimit"))
        started_at = time.time()
        transport, proto = await loop.subprocess_exec(
            lambda: _Protocol(output),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        bound.warning("run.start_failed", argv=spec.argv, error=str(exc))
        return RunResult(RunStatus.FAILED, error=f"could not start {spec.argv[0]!r}: {exc}")

    pid = transport.get_pid()
    tree = _ProcessTree(pid, run_id, started_at)
    bound = bound.bind(pid=pid)
    bound.debug("run.started", argv=spec.argv)
    stdin = cast(asyncio.WriteTransport | None, transport.get_pipe_transport(0))
    if stdin is not None:
        with contextlib.suppress(OSError):
            stdin.write(request.payload_json.encode("utf-8"))
            stdin.write_eof()

    timeout = request.timeout_s
    why_timeout = f"timed out after {timeout:g}s" if timeout is not None else ""
    if request.deadline is not None:
        to_deadline = request.deadline - time.time()
        if timeout is None or to_deadline < timeout:
            timeout = max(to_deadline, 0.0)
            why_timeout = "reached the job's deadline"

    reason = "exited"
    stopped_with = ""
    try:
        reason = await _wait_exit(proto, tree, cancel, timeout)
        if reason != "exited":
            bound.info("run.stopping", reason=reason, grace_s=spec.grace_s)
            stopped_with = await _stop(tree, proto, spec.grace_s)
        await asyncio.to_thread(tree.sweep)
        if left := tree.alive():
            bound.warning("run.leftovers", pids=[p.pid for p in left])
            await _stop(tree, None, spec.grace_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proto.closed.wait(), _PIPE_DRAIN_S)
    finally:
        if not proto.exited.is_set() or tree.alive():  # we are being cancelled: no grace
            tree.refresh()
            tree.signal(signal.SIGKILL)
        transport.close()
        for fd in (1, 2):
            output.flush(fd)

    code = transport.get_returncode()
    status, error = _outcome(reason, code, output, why_timeout, stopped_with)
    result = output.final_result() if status is RunStatus.COMPLETED else None
    trace = None if status in (RunStatus.COMPLETED, RunStatus.CANCELLED) else output.trace()
    bound.debug("run.finished", status=str(status), exit_code=code)  # the dispatcher logs the Run
    return RunResult(status, result=result, error=error, pid=pid, traceback=trace)


async def _wait_exit(
    proto: _Protocol, tree: _ProcessTree, cancel: asyncio.Event, timeout: float | None
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
    reason: str, code: int | None, output: _Output, why_timeout: str, stopped_with: str
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
    """

    kind = "subprocess"

    def __init__(self, spec_for: Callable[[str], CommandSpec],
                 payload_error: Callable[[str, str], str | None] | None = None) -> None:
        self._spec_for = spec_for
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
        run = asyncio.ensure_future(run_command(spec, request, events, stop))
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
    "LOG_TRUNCATED",
    "CommandRunner",
    "CommandSpec",
    "ResourceLimits",
    "build_env",
    "inherited_env",
    "iso_deadline",
    "limited_argv",
    "run_command",
]

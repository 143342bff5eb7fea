"""Discovery of polyglot tasks in `tasks/` (SPEC §6).

`discover_tasks(tasks_dir)` turns the files of `tasks/` into `TaskDef`s and
never raises for a bad file: a broken sidecar, a missing toolchain or a
duplicate name becomes a `HandlerImportError` in `TaskScan.errors`, and every
other task still loads.

What is a task:

- a top-level file that is executable or has a known extension:
  `.sh`/`.bash` (bash), `.py` (the daemon's Python, with `PYTHONUNBUFFERED=1`
  so progress lines arrive as they are printed), `.ps1` (pwsh), `.cs` (see
  below), `.csproj` (`dotnet run --project`), `.dll` (`dotnet`), `.exe` (mono);
  any other executable file runs directly;
- a subdirectory holding one `*.csproj` (the usual layout of a .NET project):
  `tasks/Billing/Billing.csproj`;
- a sidecar `NAME.toml` with a `command` and no file of its own.

Ignored: dotfiles, `README*`, `__pycache__` and other `__*` names, `*.md`,
`*.json` (schema files), `*.pyc`, editor leftovers (`*~`, `*.swp`, `*.bak`,
`*.tmp`), and non-executable files of unknown extension. A sidecar sits next
to its file with the same stem (`resize_image.py` + `resize_image.toml`).
When two files claim one name, the first in file-name order keeps it and the
other is reported as a `DuplicateJobType`.

C# sources (`.cs`) are compiled once per content by `supervisor.daemon.csharp.CSharpBuild`.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from runners.command import DEFAULT_ENV_ALLOW, CommandSpec, ResourceLimits
from supervisor.daemon.csharp import CSharpBuild
from supervisor.errors import DuplicateJobType, HandlerImportError, InvalidPayload, ToolchainMissing
from supervisor.policy import TypePolicy
from supervisor.validation import Validator, check_payload, compile_schema, schema_problem

Which = Callable[[str], str | None]

#: Job type names: letters, digits and `. _ - :`; what a task file's stem must match
#: when no sidecar `name` is given.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")

_IGNORED_SUFFIXES = frozenset({".toml", ".md", ".json", ".pyc", ".swp", ".swx", ".bak", ".tmp", ".orig"})
_MB = 1024 * 1024


# --- the sidecar ------------------------------------------------------------------


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    memory_mb: int | None = Field(default=None, gt=0)
    cpu_seconds: int | None = Field(default=None, gt=0)
    open_files: int | None = Field(default=None, gt=0)


class Sidecar(TypePolicy):
    """The keys a `NAME.toml` sidecar may set (all optional): every option of the job type's
    policy, under the names `@job` takes (`TypePolicy`), and how to run the program."""

    name: str = Field(default="", pattern=NAME_RE.pattern)  # "": the file's stem
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    env_allow: list[str] = Field(default_factory=list)
    cwd: str | None = None
    limits: _Limits | None = None
    grace: float | None = Field(default=None, gt=0)
    payload_schema_file: str | None = None

    def policy(self, name: str) -> TypePolicy:
        """The policy this sidecar declares for the task `name` (a program: runtime subprocess)."""
        options = {f: getattr(self, f) for f in TypePolicy.model_fields}
        return TypePolicy.model_validate({**options, "name": name, "runtime": "subprocess"})

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = shlex.split(value)
            except ValueError as exc:
                raise ValueError(f"cannot split the command string: {exc}") from None
        if isinstance(value, list) and not value:
            raise ValueError("the command is empty")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if isinstance(item, bool):
                    out[key] = "true" if item else "false"
                elif isinstance(item, int | float):
                    out[key] = str(item)
                else:
                    out[key] = item
            return out
        return value

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, value: str | None) -> str | None:
        if value not in (None, "subprocess"):
            raise ValueError('a task is a program of its own: its runtime can only be "subprocess"')
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError("not a valid cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError("unknown time zone") from None
        return value

    @field_validator("payload_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value is not None:
            _check_schema(value, (info.context or {}).get("schema_memo"))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Sidecar:
        if self.payload_schema is not None and self.payload_schema_file is not None:
            raise ValueError("set payload_schema or payload_schema_file, not both")
        if self.schedule is None and (self.schedule_payload is not None or self.timezone is not None
                                      or self.misfire is not None):
            raise ValueError('schedule_payload, timezone and misfire need a schedule; add schedule = "..."')
        return self


def _check_schema(schema: dict[str, Any], memo: Path | None) -> None:
    if (problem := schema_problem(schema, memo_dir=memo)) is not None:
        raise ValueError(f"not a valid JSON Schema: {problem}")


_HINTS: dict[str, str] = {
    "name": 'a job type name of letters, digits and . _ - :, e.g. name = "images.resize"',
    "command": 'a list of strings or one string, e.g. command = ["{python}", "{file}", "--fast"]',
    "env": 'a table of strings, e.g. env = { MODE = "fast" }',
    "env_allow": 'a list of variable names (shell patterns allowed), e.g. env_allow = ["AWS_REGION"]',
    "cwd": 'a directory relative to the task file, e.g. cwd = "data"',
    "runtime": 'subprocess, the only runtime of a task (or leave it out), e.g. runtime = "subprocess"',
    "timeout": "seconds > 0, e.g. timeout = 120",
    "deadline": "seconds > 0 from creation, after which the job expires, e.g. deadline = 3600",
    "retention": "seconds > 0 to keep finished records, e.g. retention = 86400",
    "max_deliver": "an integer >= 1, e.g. max_deliver = 5",
    "backoff": (
        'a non-empty list of seconds >= 0 (the last repeats), a number, "exponential" or a table '
        "{ base, max, jitter }, e.g. backoff = [5, 30, 120]"
    ),
    "ack_wait": "seconds > 0, e.g. ack_wait = 300",
    "concurrency": "an integer >= 1, e.g. concurrency = 2",
    "priority": "an integer in -4000..4000, higher runs first, e.g. priority = 10",
    "schedule": 'a cron expression of 5 fields (6 with seconds), e.g. schedule = "0 * * * *"',
    "schedule_payload": "a table, e.g. schedule_payload = { full = true }",
    "timezone": 'an IANA time zone name, e.g. timezone = "Europe/Paris"',
    "misfire": 'what a missed tick does: misfire = "run-once" (the default) or "skip"',
    "key_concurrency": (
        'a table with a key of literals and JSON pointers, e.g. key_concurrency = { key = ["tenant", "/tenant"], '
        'max_active = 1, stale_policy = "fail-stale" }'
    ),
    "queue": 'a table, e.g. queue = { max_queued_per_key = 1, when_full = "reject" } (or coalesce, replace-oldest)',
    "rate_limit": 'jobs per period across all instances, e.g. rate_limit = "100/s" (also /m, /h)',
    "limits": (
        "a table of integers > 0: memory_mb, cpu_seconds, open_files, e.g. limits = { memory_mb = 512 }"
    ),
    "grace": "seconds > 0 between SIGTERM and SIGKILL, e.g. grace = 10",
    "payload_schema": 'an inline JSON Schema table, e.g. payload_schema = { type = "object" }',
    "payload_schema_file": 'a .json file relative to the sidecar, e.g. payload_schema_file = "schema.json"',
}


def _describe(exc: ValidationError) -> str:
    """Every problem of a sidecar, each naming its key and the fix."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        top = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            if top == "limits":
                allowed = list(_Limits.model_fields)
                last = str(err["loc"][-1])
            else:
                allowed = list(Sidecar.model_fields)
                last = top
            import difflib  # noqa: PLC0415 (an error's hint only)

            close = difflib.get_close_matches(last, allowed, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {loc!r}{guess}; fix: use one of {', '.join(allowed)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            problems.append(msg)
            continue
        got = repr(err.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        hint = _HINTS.get(top)
        problems.append(f"key {loc!r}: {msg} (got {got})" + (f"; fix: set it to {hint}" if hint else ""))
    return "; ".join(problems)


def load_sidecar(path: Path, schema_memo: Path | None = None) -> Sidecar:
    """Parse and validate one sidecar (`schema_memo`: see `supervisor.validation.schema_problem`).

    Raises:
        HandlerImportError: naming the file, every bad key and its fix.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise HandlerImportError(str(path), f"invalid TOML: {exc}; fix the syntax there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HandlerImportError(str(path), f"cannot read the sidecar: {exc}") from None
    try:
        sidecar = Sidecar.model_validate(data, context={"schema_memo": schema_memo})
    except ValidationError as exc:
        raise HandlerImportError(str(path), f"invalid sidecar: {_describe(exc)}") from None
    if sidecar.payload_schema_file is not None:
        schema_path = path.parent / sidecar.payload_schema_file
        try:
            schema = json.loads(schema_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HandlerImportError(
                str(path),
                f"key 'payload_schema_file': cannot load {schema_path}: {exc}; fix: point it at a "
                "readable JSON file, relative to the sidecar",
            ) from None
        if not isinstance(schema, dict):
            raise HandlerImportError(
                str(path), f"key 'payload_schema_file': {schema_path} does not hold a JSON object"
            )
        try:
            _check_schema(schema, schema_memo)
        except ValueError as exc:
            raise HandlerImportError(
                str(path), f"key 'payload_schema_file': {schema_path} is {exc}"
            ) from None
        sidecar = sidecar.model_copy(update={"payload_schema": schema})
    return sidecar


# --- the task definition ----------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TaskDef:
    """One task: a job type whose handler is a program in `tasks/`.

    `policy` is what its sidecar declares (unset options are None: the settings' defaults
    then apply); `limits`, `env`, `env_allow`, `cwd` and `grace` live in `command`.
    """

    policy: TypePolicy
    path: Path
    command: CommandSpec
    sidecar: Path | None = None

    runtime: ClassVar[str] = "subprocess"

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def payload_schema(self) -> dict[str, Any] | None:
        return self.policy.payload_schema

    @cached_property
    def _validator(self) -> Validator | None:
        # one per loaded version of the task: a reload builds a new TaskDef
        return compile_schema(self.payload_schema) if self.payload_schema is not None else None

    def validate_payload(self, payload: Any) -> None:
        """Check `payload` against the task's JSON Schema, `format` included; no schema, no check.

        Raises:
            InvalidPayload: listing every problem with its JSON path (`payload.items.2.qty: ...`).
        """
        if (validator := self._validator) is not None:
            check_payload(self.name, validator, payload)

    def validate_payload_json(self, payload_json: str) -> None:
        """`validate_payload` of a payload read from Redis (InvalidPayload when it is not JSON)."""
        if self._validator is None:
            return
        try:
            payload = json.loads(payload_json)
        except ValueError as exc:
            raise InvalidPayload(self.name, f"payload is not JSON: {exc}") from None
        self.validate_payload(payload)

    async def prepare(self) -> None:
        """Build what the task needs before it can run (compile a `.cs` once); else nothing."""
        if self.command.prepare is not None:
            await self.command.prepare()


@dataclass
class TaskScan:
    """What `discover_tasks` found: the tasks by name, and one error per file that failed."""

    tasks: dict[str, TaskDef] = field(default_factory=dict)
    errors: list[HandlerImportError] = field(default_factory=list)


# --- discovery --------------------------------------------------------------------


class _UnrunnableError(Exception):
    """A task file that cannot become a task; `cause` says why and how to fix it."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _ignored(path: Path) -> bool:
    name = path.name
    return (
        name.startswith((".", "__", "README"))
        or name.endswith("~")
        or path.suffix.lower() in _IGNORED_SUFFIXES
    )


def _is_executable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o111)
    except OSError:
        return False


@dataclass
class _Candidate:
    path: Path  # the task file (or the sidecar, for a command-only task)
    sidecar: Path | None


def _candidates(tasks_dir: Path, errors: list[HandlerImportError]) -> list[_Candidate]:
    found: list[_Candidate] = []
    stems: set[str] = set()
    entries = sorted(tasks_dir.iterdir(), key=lambda p: p.name)
    for entry in entries:
        if _ignored(entry):
            continue
        if entry.is_dir():
            projects = sorted(entry.glob("*.csproj"))
            if len(projects) == 1:
                side = projects[0].with_suffix(".toml")
                found.append(_Candidate(projects[0], side if side.is_file() else None))
            elif len(projects) > 1:
                errors.append(
                    HandlerImportError(
                        str(entry),
                        f"{len(projects)} .csproj files in one task directory; keep one per directory",
                    )
                )
            continue
        if not entry.is_file():
            if entry.is_symlink():
                errors.append(HandlerImportError(str(entry), "broken symlink; fix or remove it"))
            continue
        if entry.suffix.lower() not in _KNOWN and not _is_executable(entry):
            continue
        side = entry.with_suffix(".toml") if entry.suffix else entry.with_name(entry.name + ".toml")
        found.append(_Candidate(entry, side if side.is_file() else None))
        stems.add(side.name)
    for entry in entries:  # sidecars with no file: a command-only task, or a mistake
        if (
            entry.suffix == ".toml"
            and not entry.name.startswith(".")
            and entry.is_file()
            and entry.name not in stems
        ):
            found.append(_Candidate(entry, entry))
    return found


_KNOWN = frozenset({".sh", ".bash", ".py", ".ps1", ".cs", ".csproj", ".dll", ".exe"})


def _need(which: Which, tool: str, what: str) -> str:
    found = which(tool)
    if found is None:
        raise _UnrunnableError(f"{what}; install it, or set `command` in the sidecar")
    return found


def _inferred(
    path: Path, python: str, which: Which, cache_dir: Path
) -> tuple[list[str], Callable[[], Any] | None, dict[str, str]]:
    """The argv a task file runs with (and its prepare hook and default env), from its extension."""
    file = str(path)
    suffix = path.suffix.lower()
    if suffix in (".sh", ".bash"):
        return [_need(which, "bash", "bash is not installed"), file], None, {}
    if suffix == ".py":
        return [python, file], None, {"PYTHONUNBUFFERED": "1"}
    if suffix == ".ps1":
        pwsh = _need(which, "pwsh", "a .ps1 task needs PowerShell 7 (`pwsh`), which is not on PATH")
        return [pwsh, "-NoLogo", "-NonInteractive", "-File", file], None, {}
    if suffix == ".cs":
        dotnet = which("dotnet")
        if dotnet is not None:
            build = CSharpBuild(path, cache_dir, "dotnet", dotnet)
            return [dotnet, str(build.output)], build, {}
        mcs, mono = which("mcs"), which("mono")
        if mcs is None or mono is None:
            raise _UnrunnableError(
                "a .cs task needs the .NET SDK (`dotnet`) or Mono (`mcs` and `mono`), and neither is "
                "on PATH; install one (Debian: apt-get install mono-mcs mono-runtime), or set `command` "
                "in the sidecar"
            )
        build = CSharpBuild(path, cache_dir, "mcs", mcs)
        return [mono, str(build.output)], build, {}
    if suffix == ".csproj":
        dotnet = _need(which, "dotnet", "a .csproj task needs the .NET SDK (`dotnet`), which is not on PATH")
        return [dotnet, "run", "--project", file], None, {}
    if suffix == ".dll":
        dotnet = _need(which, "dotnet", "a .dll task needs the .NET runtime (`dotnet`), which is not on PATH")
        return [dotnet, file], None, {}
    if suffix == ".exe":
        mono = _need(which, "mono", "an .exe task runs on Mono (`mono`), which is not on PATH")
        return [mono, file], None, {}
    if _is_executable(path):
        return [file], None, {}
    raise _UnrunnableError("not executable and of no known extension")  # not reached: filtered before


def _expand(command: list[str], path: Path, python: str) -> list[str]:
    subs = {"{file}": str(path), "{dir}": str(path.parent), "{python}": python}
    out = []
    for arg in command:
        expanded = arg
        for key, value in subs.items():
            expanded = expanded.replace(key, value)
        out.append(expanded)
    return out


def _load_one(cand: _Candidate, python: str, which: Which, cache_dir: Path) -> TaskDef:
    """Build one TaskDef; raise HandlerImportError (naming the file) when it cannot be."""
    side = load_sidecar(cand.sidecar, cache_dir / SCHEMA_MEMO) if cand.sidecar is not None else Sidecar()
    path = cand.path
    command_only = cand.sidecar is not None and path == cand.sidecar
    stem = path.stem
    if command_only and side.command is None:
        raise HandlerImportError(
            str(path),
            f"sidecar without a task file: no {stem}.* next to it and no `command`; add the task "
            "file, set `command`, or remove the sidecar",
        )
    where = str(cand.sidecar or path)
    prepare: Callable[[], Any] | None
    env: dict[str, str]
    try:
        if side.command is not None:
            argv, prepare, env = _expand(side.command, path, python), None, {}
        else:
            argv, prepare, env = _inferred(path, python, which, cache_dir)
    except _UnrunnableError as skip:  # only a missing program gets this far (see _need)
        raise ToolchainMissing(str(path), skip.cause) from None
    name = side.name or stem
    if not NAME_RE.match(name):
        raise HandlerImportError(
            str(path),
            f"{name!r} is not a valid job type name (letters, digits and . _ - :); rename the file "
            f"or set `name` in {stem}.toml",
        )
    cwd = path.parent
    if side.cwd is not None:
        cwd = (path.parent / side.cwd).resolve()
        if not cwd.is_dir():
            raise HandlerImportError(
                where, f"key 'cwd': {cwd} is not a directory; fix: create it or point cwd at one"
            )
    env.update(side.env)
    allow = tuple(dict.fromkeys((*DEFAULT_ENV_ALLOW, *side.env_allow)))
    lim = side.limits
    limits = ResourceLimits(
        memory_bytes=lim.memory_mb * _MB if lim and lim.memory_mb else None,
        cpu_seconds=lim.cpu_seconds if lim else None,
        open_files=lim.open_files if lim else None,
    )
    extra: dict[str, Any] = {} if side.grace is None else {"grace_s": side.grace}
    spec = CommandSpec(
        argv=argv, cwd=str(cwd), env=env, env_allow=allow, limits=limits, prepare=prepare, **extra
    )
    return TaskDef(policy=side.policy(name), path=path, command=spec, sidecar=cand.sidecar)


#: Under the cache dir: one empty file per payload schema found valid, named by its hash.
SCHEMA_MEMO = "schemas-valid"


def default_cache_dir() -> Path:
    """Where compiled tasks go when the caller names no directory (the daemon passes its state dir)."""
    return Path.home() / ".cache" / "job-supervisor" / "tasks"


def discover_tasks(
    tasks_dir: Path,
    python: str = sys.executable,
    *,
    cache_dir: Path | None = None,
    which: Which = shutil.which,
) -> TaskScan:
    """Find every task in `tasks_dir` (see the module doc); never raises for a bad file.

    Args:
        tasks_dir: the directory to scan (a missing one holds no tasks).
        python: the interpreter for `.py` tasks (default: the daemon's).
        cache_dir: where `.cs` tasks are compiled to (the daemon passes
            `<state_dir>/task-cache`); discovery writes there only the memo of payload
            schemas found valid (`schemas-valid/`), never a build.
        which: finds a program on PATH (injectable for tests).

    Returns:
        The tasks by name, and one `HandlerImportError` per file that failed
        (`DuplicateJobType` when a name was already taken).
    """
    scan = TaskScan()
    tasks_dir = Path(tasks_dir).resolve()
    if not tasks_dir.is_dir():
        return scan
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).absolute()
    for cand in _candidates(tasks_dir, scan.errors):
        try:
            task = _load_one(cand, python, which, cache)
        except HandlerImportError as exc:  # reported by the caller, with the others
            scan.errors.append(exc)
            continue
        other = scan.tasks.get(task.name)
        if other is not None:
            scan.errors.append(
                DuplicateJobType(
                    str(task.path),
                    f"task name {task.name!r} is already used by {other.path}; rename one of the files "
                    f"or set a different `name` in {task.path.stem}.toml",
                )
            )
            continue
        scan.tasks[task.name] = task
    return scan


__all__ = [
    "NAME_RE",
    "CSharpBuild",
    "Sidecar",
    "TaskDef",
    "TaskScan",
    "default_cache_dir",
    "discover_tasks",
    "load_sidecar",
]

"""Discovers the `@job` handlers in `jobs/` and returns a `Registry` (no globals).

Each `*.py` file (not starting with `_` or `.`) is imported as `jobs.<stem>`,
so handler files can import each other and spawned worker processes can
import them by name. A file that fails to import, declares a bad option, or
declares a name another file already took is recorded in `Registry.errors`
and never stops the other types from loading.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from supervisor.errors import DuplicateJobType, HandlerImportError
from supervisor.handler import JOB_ATTR, JobOptions, JobType

log = structlog.get_logger(__name__)
PACKAGE = "jobs"


@dataclass(slots=True)
class Registry:
    """The job types one daemon serves, and the files that failed to load."""

    types: dict[str, JobType] = field(default_factory=dict)
    errors: dict[str, HandlerImportError] = field(default_factory=dict)

    def get(self, name: str) -> JobType | None:
        return self.types.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.types


def _package(jobs_dir: Path) -> None:
    """Make `jobs` a package whose path is `jobs_dir` (replacing any earlier one)."""
    pkg = types.ModuleType(PACKAGE)
    pkg.__path__ = [str(jobs_dir)]
    pkg.__package__ = PACKAGE
    sys.modules[PACKAGE] = pkg


def load_module(path: Path) -> types.ModuleType:
    """Import one handler file as `jobs.<stem>` (HandlerImportError on any failure)."""
    name = f"{PACKAGE}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HandlerImportError(str(path), "not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 (SystemExit in a handler file must not stop us)
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"line {f.lineno}" for f in reversed(frames) if f.filename == str(path)), "")
        cause = f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else "")
        raise HandlerImportError(str(path), cause) from None
    return module


def types_in_module(module: types.ModuleType, source: str) -> list[JobType]:
    """Every job type declared by `@job` on a function of `module`."""
    found: list[JobType] = []
    for value in vars(module).values():
        declared: list[JobOptions] = getattr(value, JOB_ATTR, [])
        if not declared or getattr(value, "__module__", None) != module.__name__:
            continue
        for options in declared:
            try:
                found.append(JobType.from_function(value, options, source))
            except (TypeError, ValueError) as exc:
                raise HandlerImportError(source, str(exc)) from None
    return found


def load_jobs(jobs_dir: Path) -> Registry:
    """Load every handler file of `jobs_dir` into a new Registry."""
    registry = Registry()
    jobs_dir = Path(jobs_dir).resolve()
    if not jobs_dir.is_dir():
        log.warning("jobs.dir_missing", path=str(jobs_dir))
        return registry
    _package(jobs_dir)
    for path in sorted(jobs_dir.glob("*.py")):
        if path.name.startswith(("_", ".")):
            continue
        source = str(path)
        try:
            declared = types_in_module(load_module(path), source)
        except HandlerImportError as exc:
            registry.errors[source] = exc
            log.error("jobs.load_failed", path=source, error=exc.cause, code=exc.code)
            continue
        for jt in declared:
            other = registry.types.get(jt.name)
            if other is not None:
                registry.errors[source] = DuplicateJobType(
                    source,
                    f"job type {jt.name!r} is already declared in {other.source}; "
                    "rename one of them (names must be unique across jobs/ and tasks/)",
                )
                log.error("jobs.duplicate", name=jt.name, path=source, first=other.source)
                continue
            registry.types[jt.name] = jt
    return registry

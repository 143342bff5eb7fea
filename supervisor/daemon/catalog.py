"""The catalog: every job type one daemon serves, from `jobs/` and `tasks/`, with its policy.

Builds, from the loaded handlers and tasks, what the rest of the daemon needs: each
type's `TypePolicy` resolved against the settings once, and from it the dispatcher's
`ServedType` view and the `PublishedType` metadata for producers; the
command of each type run as a subprocess, and the load errors of bad files
(which never stop the other types from serving).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import structlog

from runners.command import CommandSpec
from supervisor.config import Settings
from supervisor.daemon import accepted
from supervisor.daemon.lanes import ServedType
from supervisor.daemon.registry import Registry, load_jobs
from supervisor.daemon.schedule import ScheduleError, ScheduleSpec
from supervisor.daemon.tasks import SCHEMA_MEMO, TaskDef, discover_tasks, load_sidecar
from supervisor.errors import DuplicateJobType, HandlerImportError, InvalidPayload, SupervisorError
from supervisor.policy import PublishedType

log = structlog.get_logger(__name__)


@dataclass
class Catalog:
    """What one daemon serves."""

    registry: Registry
    tasks: dict[str, TaskDef] = field(default_factory=dict)
    served: dict[str, ServedType] = field(default_factory=dict)
    metas: dict[str, dict[str, str]] = field(default_factory=dict)
    commands: dict[str, CommandSpec] = field(default_factory=dict)
    schedules: list[ScheduleSpec] = field(default_factory=list)
    errors: dict[str, SupervisorError] = field(default_factory=dict)
    # Load errors by the job type name they concern (a task's name, or a type whose file now
    # fails): published with presence, so an enqueue of that name is refused with the error.
    type_errors: dict[str, str] = field(default_factory=dict)
    accepted: Path | None = None  # manifest of the sources Python types run from (supervisor.daemon.accepted)

    def command_for(self, name: str) -> CommandSpec:
        """The program a `subprocess` type runs (KeyError when the type is not one)."""
        return self.commands[name]

    def payload_error(self, name: str, payload_json: str) -> str | None:
        """Why a payload breaks the type's current schema (every problem), or None when it passes.

        Checked before a `subprocess` type's program starts: a job may have been queued without
        validation (`allow_unknown`, before the type was published) or before its schema changed.
        """
        try:
            if (task := self.tasks.get(name)) is not None:
                task.validate_payload_json(payload_json)
            elif (jt := self.registry.get(name)) is not None:
                jt.payload.from_json(payload_json)
        except InvalidPayload as exc:
            return str(exc)
        return None


def python_job_command(jobs_dir: Path, name: str, manifest: Path | None = None) -> CommandSpec:
    """A Python job run in a fresh interpreter through `runners.pyjob` (the task protocol).

    With `manifest`, pyjob imports the sources the daemon accepted, not the files as they are now.
    """
    jobs_dir = Path(jobs_dir).resolve()
    extra = [] if manifest is None else [str(manifest)]
    return CommandSpec(argv=[sys.executable, "-m", "runners.pyjob", str(jobs_dir), name, *extra],
                       cwd=str(jobs_dir.parent), env={"PYTHONUNBUFFERED": "1"})


def build_catalog(settings: Settings, instance_id: str, runtimes: tuple[str, ...]) -> Catalog:
    """Load `jobs/` and `tasks/` and decide what this daemon serves."""
    catalog = _load_catalog(settings, instance_id, runtimes)
    _accept(catalog, settings)
    return catalog


def _accept(catalog: Catalog, settings: Settings, old: Catalog | None = None) -> None:
    """Save the sources the Python types run from, and point `subprocess` Python types at them.

    A module that failed to load now (or was not imported) keeps the text `old` accepted
    while its file exists, as its types keep serving; a deleted file's text is dropped.
    Each module's Source names the types it serves here, so a worker registers the same.
    """
    sources = dict(catalog.registry.sources)
    if old is not None:
        for stem, src in old.registry.sources.items():
            if stem not in sources and Path(src.path).exists():
                sources[stem] = src
    serves: dict[str, list[str]] = {}
    for jt in catalog.registry.types.values():
        serves.setdefault(Path(jt.source).stem, []).append(jt.name)
    catalog.registry.sources = {stem: replace(src, serves=tuple(sorted(serves.get(stem, ()))))
                                for stem, src in sources.items()}
    try:
        catalog.accepted = accepted.save(settings.state_dir, settings.jobs_dir, catalog.registry.sources)
    except OSError as exc:
        log.error("jobs.accepted_save_failed", state_dir=str(settings.state_dir), error=str(exc),
                  note="process workers and subprocess Python jobs import jobs/ as it is on disk")
    for name in catalog.registry.types:
        if name in catalog.commands:
            catalog.commands[name] = python_job_command(settings.jobs_dir, name, catalog.accepted)


def _load_catalog(settings: Settings, instance_id: str, runtimes: tuple[str, ...]) -> Catalog:
    cache_dir = Path(settings.state_dir) / "task-cache"
    registry = load_jobs(settings.jobs_dir, schema_memo=cache_dir / SCHEMA_MEMO)
    catalog = Catalog(registry=registry, errors=dict(registry.errors))
    for jt in registry.types.values():
        published = PublishedType(jt.options.resolve(settings), jt.payload.schema, jt.source, jt.payload.check_formats)
        if _serve(catalog, published, settings, instance_id, runtimes) and published.policy.runtime == "subprocess":
            catalog.commands[jt.name] = python_job_command(settings.jobs_dir, jt.name)
    scan = discover_tasks(Path(settings.tasks_dir), cache_dir=cache_dir)
    for err in scan.errors:
        catalog.errors[err.path] = err
        catalog.type_errors[_task_name(Path(err.path))] = str(err)
        log.error("tasks.load_failed", path=err.path, error=err.cause, code=err.code)
    for task in scan.tasks.values():
        if task.name in catalog.served:
            other = catalog.served[task.name].source
            catalog.errors[str(task.path)] = DuplicateJobType(
                str(task.path), f"job type {task.name!r} is already declared in {other}; "
                "rename one of them (names must be unique across jobs/ and tasks/)")
            log.error("tasks.duplicate", name=task.name, path=str(task.path), first=other)
            continue
        published = PublishedType(task.policy.resolve(settings), task.payload_schema or {}, str(task.path))
        if _serve(catalog, published, settings, instance_id, runtimes, schedule_source=str(task.sidecar or task.path)):
            catalog.tasks[task.name] = task
            catalog.commands[task.name] = task.command
    catalog.schedules += settings.schedule_specs()
    return catalog


def _serve(catalog: Catalog, published: PublishedType, settings: Settings, instance_id: str,
           runtimes: tuple[str, ...], schedule_source: str | None = None) -> bool:
    """Serve one type (False when its runtime is not available here): its lane, its published
    form and its schedule."""
    policy = published.policy
    served = ServedType(policy, published.source)
    if not serves(settings, served.name):  # dedicated instances: another one serves it
        log.info("jobs.not_served_here", job_type=served.name, serve_types=settings.serve_types,
                 exclude_types=settings.exclude_types)
        return False
    if served.runtime not in runtimes:
        catalog.errors[served.source] = HandlerImportError(
            served.source, f"{served.name}: runtime {served.runtime!r} is not available; "
            f"use one of {', '.join(runtimes)}")
        log.error("jobs.runtime_unavailable", job_type=served.name, runtime=served.runtime)
        return False
    catalog.served[served.name] = served
    catalog.metas[served.name] = published.meta(instance_id, settings.dead_retention)
    if policy.schedule:
        _add_schedule(catalog, policy.schedule_entry(), schedule_source or published.source)
    return True


def serves(settings: Settings, name: str) -> bool:
    """Whether this instance serves the type `name`: it matches a glob of `serve_types` (when
    any is set) and none of `exclude_types` (`run --types` / `--exclude-types`)."""
    if settings.serve_types and not any(fnmatchcase(name, glob) for glob in settings.serve_types):
        return False
    return not any(fnmatchcase(name, glob) for glob in settings.exclude_types)


def _task_name(path: Path) -> str:
    """The job type name a task file that failed to load would have: its sidecar's `name`, else its stem."""
    side = path if path.suffix == ".toml" else path.with_suffix(".toml") if path.suffix else \
        path.with_name(path.name + ".toml")
    if side.is_file():
        try:
            return load_sidecar(side).name or path.stem
        except HandlerImportError:
            pass
    return path.stem


def _add_schedule(catalog: Catalog, entry: dict[str, Any], source: str) -> None:
    """A file's schedule; a bad one is reported and the type still serves, unscheduled."""
    try:
        catalog.schedules.append(ScheduleSpec.parse(entry, source=source))
    except ScheduleError as exc:
        catalog.errors[f"{source} (schedule)"] = exc
        log.error("schedule.invalid", path=source, field=exc.field, value=str(exc.value), error=str(exc))


def rebuild_catalog(old: Catalog, settings: Settings, instance_id: str, runtimes: tuple[str, ...]) -> Catalog:
    """Load `jobs/` and `tasks/` again; a file that now fails keeps serving its last good version."""
    new = _load_catalog(settings, instance_id, runtimes)
    for path in list(new.errors):
        failing = Path(path.removesuffix(" (schedule)"))
        for name, served in old.served.items():
            source = Path(served.source)
            same_file = source == failing or (source.parent == failing.parent and source.stem == failing.stem)
            if not same_file or name in new.served:
                continue
            new.served[name] = served
            new.metas[name] = old.metas[name]
            for part in ("tasks", "commands"):
                if name in getattr(old, part):
                    getattr(new, part)[name] = getattr(old, part)[name]
            if name in old.registry.types:
                new.registry.types[name] = old.registry.types[name]
            new.schedules += [s for s in old.schedules if s.job == name]
            new.type_errors[name] = str(new.errors[path])
            log.warning("jobs.kept_last_good", job_type=name, path=str(failing), error=str(new.errors[path]))
    _accept(new, settings, old)
    return new

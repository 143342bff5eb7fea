"""Discovers the `@job` handlers in `jobs/` and returns a `Registry` (no globals).

Each `*.py` file (not starting with `_` or `.`) is imported as `jobs.<stem>`,
so handler files can import each other (helpers `jobs/_x.py` too). A file
that fails to import, declares a bad option, or declares a name another file
already took is recorded in `Registry.errors` and never stops the other types
from loading.

One load is one snapshot: every `.py` file of the folder is read once, and
what is imported, by the loader or by a handler's own `import jobs.x`, is
that text, never the file as it is a moment later (a meta path finder serves
`jobs.<stem>` from the snapshot). `Registry.sources` keeps the exact text of
each module that loaded cleanly: the daemon stores these accepted sources
(`supervisor.daemon.accepted`), and the `process` workers and `runners.pyjob` load
the same snapshot from that store instead of the folder, so every runtime
serves the version the daemon accepted (the last good one after a broken edit).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import linecache
import sys
import traceback
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from supervisor.errors import DuplicateJobType, HandlerImportError
from supervisor.handler import JOB_ATTR, JobType
from supervisor.policy import TypePolicy

log = structlog.get_logger(__name__)
PACKAGE = "jobs"


@dataclass(frozen=True, slots=True)
class Source:
    """The text of one module `jobs.<stem>`, read once (its identity is the sha256 of `data`).

    Attributes:
        stem: the module's name in the `jobs` package.
        path: the file it was read from (the module's `__file__`, and the name in tracebacks).
        data: the bytes imported.
        serves: the job types to register from it (None: every type it declares).
        accepted: a copy a daemon accepted (`supervisor.daemon.accepted`): its payload schemas were
            checked when it was, and are not checked again.
    """

    stem: str
    path: str
    data: bytes
    serves: tuple[str, ...] | None = None
    accepted: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(slots=True)
class Registry:
    """The job types one daemon serves, the files that failed to load, and the sources it accepted."""

    types: dict[str, JobType] = field(default_factory=dict)
    errors: dict[str, HandlerImportError] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)  # stem -> text that loaded cleanly

    def get(self, name: str) -> JobType | None:
        return self.types.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.types


class _SourceLoader(importlib.abc.Loader):
    """Executes one `Source` (never rereads the file) and notes that it ran cleanly."""

    def __init__(self, source: Source, ran: set[str]) -> None:
        self.source = source
        self._ran = ran

    def exec_module(self, module: types.ModuleType) -> None:
        src = self.source
        # Tracebacks show the lines of the text that runs, not of the file as it is now.
        text = importlib.util.decode_source(src.data)
        before = linecache.cache.get(src.path)
        linecache.cache[src.path] = (len(text), None, text.splitlines(True), src.path)
        try:
            exec(compile(src.data, src.path, "exec", dont_inherit=True), module.__dict__)  # noqa: S102  (loading handlers)
        except BaseException:
            if before is None:  # the last good text's lines stay in tracebacks
                linecache.cache.pop(src.path, None)
            else:
                linecache.cache[src.path] = before
            raise
        self._ran.add(src.stem)

    def get_source(self, fullname: str) -> str:  # noqa: ARG002  (importlib's loader signature)
        return importlib.util.decode_source(self.source.data)


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Serves `jobs.<stem>` from one snapshot; other names fall through to the folder."""

    def __init__(self, sources: Mapping[str, Source]) -> None:
        self.sources = dict(sources)
        self.ran: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None,  # noqa: ARG002  (importlib's finder signature)
                  target: types.ModuleType | None = None,  # noqa: ARG002  (same)
                  ) -> importlib.machinery.ModuleSpec | None:
        package, _, stem = fullname.partition(".")
        source = self.sources.get(stem) if package == PACKAGE else None
        if source is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, _SourceLoader(source, self.ran), origin=source.path)
        assert spec is not None
        spec.has_location = True  # sets __file__: handlers may find files next to themselves
        return spec


def read_sources(jobs_dir: Path) -> tuple[dict[str, Source], dict[str, HandlerImportError]]:
    """Read every `.py` file of `jobs_dir` once (a snapshot), and the files that could not be read.

    A handler file with nothing in it counts as failing to load, so a reload keeps serving its
    last good version: an editor or a deploy that rewrites a file in place empties it first, and a
    reload that caught it between the two would otherwise take its types away (and keep them away
    if the next version fails). Deleting the file is how its types are removed.
    """
    sources: dict[str, Source] = {}
    errors: dict[str, HandlerImportError] = {}
    for path in sorted(Path(jobs_dir).glob("*.py")):
        if path.name.startswith("."):
            continue
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            continue  # removed since the listing
        except OSError as exc:
            errors[str(path)] = HandlerImportError(str(path), f"cannot read the file: {exc}")
            continue
        if not text.strip() and not path.stem.startswith("_"):  # `_` files are helpers, `__init__` may be empty
            errors[str(path)] = HandlerImportError(
                str(path), "the file is empty (still being written?); the job types it last declared keep "
                "serving. Delete the file to remove them")
            continue
        sources[path.stem] = Source(path.stem, str(path), text)
    return sources, errors


def _package(jobs_dir: Path, sources: Mapping[str, Source]) -> tuple[_SourceFinder, dict[str, types.ModuleType]]:
    """A fresh `jobs` package serving `sources`; returns its finder and the modules of the previous one."""
    pkg = types.ModuleType(PACKAGE)
    pkg.__path__ = [str(jobs_dir)]
    pkg.__package__ = PACKAGE
    sys.modules[PACKAGE] = pkg
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _SourceFinder)]
    finder = _SourceFinder(sources)
    sys.meta_path.insert(0, finder)
    # Forget the modules of the previous load, so `import jobs.x` in a file runs this snapshot's x.
    previous = {name: sys.modules.pop(name) for name in list(sys.modules) if name.startswith(PACKAGE + ".")}
    return finder, previous


def load_module(source: Source) -> types.ModuleType:
    """Import one handler source as `jobs.<stem>` (HandlerImportError on any failure).

    Call within a load (`load_jobs`), whose finder serves the module; a module a
    handler file of the same load already imported is reused, not run twice.
    """
    name = f"{PACKAGE}.{source.stem}"
    try:
        return sys.modules[name] if name in sys.modules else importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 (SystemExit in a handler file must not stop us)
        sys.modules.pop(name, None)
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"line {f.lineno}" for f in reversed(frames) if f.filename == source.path), "")
        cause = f"{type(exc).__name__}: {exc}" + (f" ({where})" if where else "")
        raise HandlerImportError(source.path, cause) from None


def types_in_module(module: types.ModuleType, source: str, *, schema_memo: Path | None = None,
                    schema_checked: bool = False) -> list[JobType]:
    """Every job type declared by `@job` on a function of `module` (the two options: `PayloadModel`'s)."""
    found: list[JobType] = []
    for value in vars(module).values():
        declared: list[TypePolicy] = getattr(value, JOB_ATTR, [])
        if not declared or getattr(value, "__module__", None) != module.__name__:
            continue
        for options in declared:
            try:
                found.append(JobType.from_function(value, options, source, schema_memo=schema_memo,
                                                   schema_checked=schema_checked))
            except (TypeError, ValueError) as exc:
                raise HandlerImportError(source, str(exc)) from None
    return found


def load_jobs(jobs_dir: Path, sources: Mapping[str, Source] | None = None, *,
              schema_memo: Path | None = None) -> Registry:
    """Load the handlers of `jobs_dir` into a new Registry.

    Args:
        jobs_dir: the handler folder (the `jobs` package's path).
        sources: the texts to import, stem -> Source (e.g. those a daemon accepted, handed
            to a worker); None reads every file of `jobs_dir` once, now.
        schema_memo: where payload schemas found valid are remembered
            (`supervisor.validation.schema_problem`), so a restart need not import jsonschema.
    """
    registry = Registry()
    jobs_dir = Path(jobs_dir).resolve()
    if sources is None:
        if not jobs_dir.is_dir():
            log.warning("jobs.dir_missing", path=str(jobs_dir))
            return registry
        sources, registry.errors = read_sources(jobs_dir)
    finder, previous = _package(jobs_dir, sources)
    for stem, src in sorted(sources.items()):
        if stem.startswith("_"):
            continue
        source = src.path
        try:
            declared = types_in_module(load_module(src), source, schema_memo=schema_memo,
                                       schema_checked=src.accepted)
        except HandlerImportError as exc:
            registry.errors[source] = exc
            log.error("jobs.load_failed", path=source, error=exc.cause, code=exc.code)
            continue
        if src.serves is not None:
            declared = [jt for jt in declared if jt.name in src.serves]
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
    # A file that ran but declared a name another took still serves its other types from this text.
    failed = {Path(p).stem for p, e in registry.errors.items() if not isinstance(e, DuplicateJobType)}
    registry.sources = {stem: sources[stem] for stem in sorted(finder.ran) if stem not in failed}
    # A module that failed now stays importable as it last loaded (kept handlers may import it).
    for name, module in previous.items():
        sys.modules.setdefault(name, module)
    return registry

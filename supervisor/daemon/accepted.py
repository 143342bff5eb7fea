"""The accepted handler sources: content-addressed copies in the state directory.

Hot reload promises that a broken edit leaves the last good version serving.
The daemon's own modules already hold that version, but the `process` workers
and `runners.pyjob` (Python jobs with `runtime="subprocess"`) are other
processes that start later; they must import what the daemon accepted, not
the folder as it is when they start. So after each load the daemon saves
here the exact text of every module it accepted (`Registry.sources`), each as
`<sha256>.py`, and one manifest naming them, `manifest-<sha256>.json`:

    {"jobs_dir": "/srv/app/jobs",
     "modules": {"resize": {"path": "/srv/app/jobs/resize.py", "sha256": "…", "serves": ["images.resize"]}}}

A worker or pyjob is given the manifest's path and loads exactly those texts
(`load`, then `supervisor.daemon.registry.load_jobs(jobs_dir, sources)`). Files are
never changed once written (their names are their content), so a process
reading an older manifest while the daemon saves a newer one is safe; an
unchanged load (a broken edit) yields the same manifest, so the pool is not
recycled for it. Saving touches every file it names, and files not touched
for `KEEP_S` are removed (several instances may share a state directory,
so nothing younger is ever removed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from supervisor.daemon.registry import Source
from supervisor.errors import HandlerImportError

DIR = "accepted"
KEEP_S = 30 * 86400.0  # copies unused this long are removed when the next manifest is saved


def save(state_dir: Path, jobs_dir: Path, sources: Mapping[str, Source]) -> Path:
    """Store `sources` and a manifest naming them; returns the manifest's path (OSError if it cannot)."""
    store = Path(state_dir) / DIR
    store.mkdir(parents=True, exist_ok=True, mode=0o700)  # handler code may hold private details
    modules = {}
    for stem, src in sorted(sources.items()):
        digest = src.sha256
        _put(store / f"{digest}.py", src.data)
        modules[stem] = {"path": src.path, "sha256": digest,
                         "serves": None if src.serves is None else sorted(src.serves)}
    body = json.dumps({"jobs_dir": str(Path(jobs_dir).resolve()), "modules": modules},
                      sort_keys=True, indent=1).encode()
    manifest = store / f"manifest-{hashlib.sha256(body).hexdigest()}.json"
    _put(manifest, body)
    _prune(store, time.time() - KEEP_S)
    return manifest


def load(manifest: Path) -> dict[str, Source]:
    """The sources a manifest names, each checked against its digest (HandlerImportError if not)."""
    where = str(manifest)
    try:
        modules = json.loads(Path(manifest).read_bytes())["modules"]
        sources = {}
        for stem, m in modules.items():
            data = (Path(manifest).parent / f"{m['sha256']}.py").read_bytes()
            if hashlib.sha256(data).hexdigest() != m["sha256"]:
                raise ValueError(f"the stored copy of {m['path']} does not match its digest")
            serves = None if m.get("serves") is None else tuple(m["serves"])
            sources[stem] = Source(stem, m["path"], data, serves, accepted=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HandlerImportError(where, f"cannot read the accepted handler sources ({type(exc).__name__}: "
                                 f"{exc}); the daemon writes them to its state directory: check that "
                                 "it is readable, or restart the daemon to write them again") from None
    return sources


def _put(path: Path, data: bytes) -> None:
    """Write a content-addressed file once (atomically); an existing one is only touched."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _prune(store: Path, before: float) -> None:
    for path in store.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < before:
                path.unlink()

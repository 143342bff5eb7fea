"""Two optional imports of libraries that the daemon never uses, kept out of its start.

- redis-py (8.x) imports the OpenTelemetry SDK's metrics (`opentelemetry.sdk.metrics`) when it
  is installed, for its own optional metrics (`redis.observability`), which the daemon does not
  turn on: its traces are its own (`supervisor.observability.telemetry`).
- structlog imports rich's pretty-printer and traceback renderer when rich is installed, for
  its console renderer; a daemon that logs JSON (journald, any pipe) never renders with them.

Each is refused to that library only (the import comes from its module), so both libraries
fall back to what they do when the package is missing; handler code that imports either
package gets it as usual (though redis-py's own OpenTelemetry metrics, `redis.observability`,
stay off in the daemon and its workers). `job-supervisor run` installs this before it imports
the daemon, and the pool's fork server (`runners.fork_server_preload`) before the workers' code; what
it saves of a start is in BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any


class _Refuse:  # a meta path finder by protocol: importlib.abc is not imported for it
    """Raises ModuleNotFoundError for `module` (and its submodules) when `importer`'s modules ask."""

    def __init__(self, refused: dict[str, str]) -> None:
        self.refused = refused  # module prefix -> importer prefix

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:  # noqa: ARG002 (the finder protocol)
        for module, importer in self.refused.items():
            if (fullname == module or fullname.startswith(module + ".")) and _imported_by(importer):
                raise ModuleNotFoundError(f"{fullname} is not used by job-supervisor's daemon", name=fullname)


def _imported_by(prefix: str) -> bool:
    """Whether the code running the import statement is in a module named `prefix` or under it."""
    frame: FrameType | None = sys._getframe(2)  # noqa: SLF001 (past this finder's frames; cheaper than inspect)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith("importlib"):
            return bool(name == prefix or name.startswith(prefix + "."))
        frame = frame.f_back
    return False


def refuse_unused(*, console_logs: bool) -> None:
    """Install the refusals (once); `console_logs`: the log renderer is structlog's console, which
    wants rich."""
    if any(isinstance(f, _Refuse) for f in sys.meta_path):
        return
    refused = {"opentelemetry.sdk.metrics": "redis"}
    if not console_logs:
        refused["rich"] = "structlog"
    sys.meta_path.insert(0, _Refuse(refused))


__all__ = ["refuse_unused"]

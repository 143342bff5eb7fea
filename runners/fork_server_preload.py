"""What the pool's fork server imports before it forks any worker.

The refusals of `supervisor.observability.optional_imports` first (workers log JSON lines, so
structlog's rich renderer is never used; redis-py's OpenTelemetry metrics are never turned on),
then the worker's own code (`runners.pool.child`), so each forked worker starts with both; then
the libraries the handler files import (`runners.fork_server.library_imports`), those installed
in the standard library or site-packages only. A library that fails to import here is left to
the worker, whose load of the handler file reports the error as it always does.
"""

from __future__ import annotations

import os

from supervisor.observability.optional_imports import refuse_unused

refuse_unused(console_logs=False)

import runners.pool.child  # noqa: E402, F401 (after the refusals: see the module docstring)
from runners.fork_server import LIBRARIES_ENV, preload_libraries  # noqa: E402

preload_libraries(os.environ.pop(LIBRARIES_ENV, ""))  # popped: the workers forked from here never see it

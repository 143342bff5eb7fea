"""What the pool's fork server imports before it forks any worker.

The refusals of `supervisor.observability.optional_imports` first (workers log JSON lines, so
structlog's rich renderer is never used; redis-py's OpenTelemetry metrics are never turned on),
then the worker's own code (`runners.pool.child`), so each forked worker starts with both.
"""

from __future__ import annotations

from supervisor.observability.optional_imports import refuse_unused

refuse_unused(console_logs=False)

import runners.pool.child  # noqa: E402, F401 (after the refusals: see the module docstring)

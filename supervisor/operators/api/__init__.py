"""The admin HTTP API (SPEC §11): FastAPI app, routes, error table, uvicorn runner.

Off unless enabled; loopback by default; a bearer token on every route but
/health, and no start on a non-loopback address without one.

    from supervisor.operators.api import create_app, serve
    app = create_app("redis://localhost:6379/0", token="s3cret")
    await serve(app, "127.0.0.1", 8765, shutdown_event)
"""

from __future__ import annotations

from supervisor.operators.api.app import create_app
from supervisor.operators.api.server import serve, start_in_daemon

__all__ = ["create_app", "serve", "start_in_daemon"]

"""The admin API application: `create_app(redis, token)` builds it.

Framework: FastAPI (on Starlette). The request and response models are the
pydantic models of `schemas.py`, and FastAPI turns them into request
validation with the failing field named and into the OpenAPI document, for
free; Starlette alone would need both written and kept in sync by hand. The
SSE stream is a plain `StreamingResponse` (no sse-starlette needed).

Two guards wrap every request as raw ASGI middleware, before any routing or
body parsing (so a request without the token never learns whether its body
or path is valid):

- bearer token (`Authorization: Bearer <token>`), compared with
  `hmac.compare_digest`, on every path but `/health`, the `/docs` page and the
  dashboard's `/ui/` files (static shells; the data they load needs the token).
  `token=None` turns the check off: callers allow that on loopback only.
- body cap: `Content-Length` above `max_body_bytes` is refused with 413
  before reading; a chunked body is counted as it arrives.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supervisor.daemon.registry import Registry
from supervisor.engine.broker import Broker, connect
from supervisor.operators.api import errors as api_errors, ui_routes, workflow_routes
from supervisor.operators.api.routes import router
from supervisor.producers.client import Client

DEFAULT_MAX_BODY_BYTES = 1_048_576
PUBLIC_PATHS = frozenset({"/health", "/docs", "/ui"})
# The docs page's and the dashboard's static files (no data in them; their data requests send the token).
PUBLIC_PREFIX = ("/docs/assets/", "/ui/")


class ApiState:
    """What the routes share: the Redis client, a `Client`, settings, and the `closing` event.

    Given a URL, the Redis client is created on first use (so it binds to the loop that
    serves requests) and closed by `aclose()`; a given client (the daemon's) is never closed here.
    """

    def __init__(self, redis: str | aioredis.Redis, token: str | Mapping[str, str] | None, *, max_body_bytes: int,
                 registry: Registry | None, sse_heartbeat_s: float, sse_block_s: float,
                 tracing: Any = None) -> None:
        self._url = redis if isinstance(redis, str) else None
        self._redis: aioredis.Redis | None = None if isinstance(redis, str) else redis
        self._client: Client | None = None
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.registry = registry
        self.tracing = tracing  # None: the process's own (Client's default)
        self.sse_heartbeat_s = sse_heartbeat_s
        self.sse_block_s = sse_block_s
        self.closing = asyncio.Event()  # set on shutdown: SSE streams end at once

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            assert self._url is not None
            self._redis = connect(self._url)
        return self._redis

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.redis, registry=self.registry, tracing=self.tracing)
        return self._client

    @property
    def broker(self) -> Broker:
        return self.client.broker

    async def aclose(self) -> None:
        """End SSE streams; close the Redis client if this state created it (idempotent)."""
        self.closing.set()
        if self._url is not None and self._redis is not None:
            redis, self._redis, self._client = self._redis, None, None
            await redis.aclose()


class Guard:
    """Bearer-token check and request-body cap, as raw ASGI middleware (streams pass untouched)."""

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self.app = app
        self.state = state
        tokens = state.token if isinstance(state.token, Mapping) else {"": state.token} if state.token else {}
        self._tokens = [(name, secret.encode()) for name, secret in tokens.items() if secret]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        if self._tokens and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIX):
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            given = given.strip()
            name = None
            for candidate, secret in self._tokens:  # every one compared: the time does not tell which matched
                if hmac.compare_digest(given, secret) and name is None:
                    name = candidate
            if scheme.lower() == b"bearer" and name is not None:
                # the routes record it in the history of the jobs they act on (request.state.token_name)
                scope.setdefault("state", {})["token_name"] = name
            else:
                await _send(send, api_errors.error_response(
                    "unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                    headers={"WWW-Authenticate": "Bearer"}), scope, receive)
                return
        cap = self.state.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > cap
            except ValueError:
                await _send(send, api_errors.error_response("invalid_request", "Content-Length is not a number",
                                                            "Content-Length"), scope, receive)
                return
            if too_big:
                await _send(send, _too_large(cap), scope, receive)
                return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise StarletteHTTPException(413, f"request body is larger than {cap} bytes")
            return message

        await self.app(scope, capped_receive, send)


def _too_large(cap: int) -> Any:
    return api_errors.error_response("payload_too_large", f"request body is larger than {cap} bytes",
                                     headers={"Connection": "close"})


async def _send(send: Send, response: Any, scope: Scope, receive: Receive) -> None:
    await response(scope, receive, send)


_DOCS_HTML = """<!doctype html>
<html><head><title>job-supervisor admin API</title><meta charset="utf-8">
<link rel="stylesheet" href="/docs/assets/swagger-ui/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/assets/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/docs/assets/docs.js"></script>
</body></html>"""

# The page's assets ship in the package (no CDN: the docs work offline and on closed networks).
_DOCS_ASSETS = {
    "swagger-ui/swagger-ui-bundle.js": "text/javascript",
    "swagger-ui/swagger-ui.css": "text/css",
    "docs.js": "text/javascript",
}
_DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
             "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def create_app(
    redis: str | aioredis.Redis,
    token: str | Mapping[str, str] | None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    registry: Registry | None = None,
    sse_heartbeat_s: float = 15.0,
    sse_block_s: float = 5.0,
    tracing: Any = None,
) -> FastAPI:
    """The admin API as an ASGI app.

    Args:
        redis: a Redis URL (a client is created on first use and closed on shutdown) or the
            daemon's own `redis.asyncio.Redis` (never closed here).
        token: bearer token every route but /health requires, or several by name (`{name: token}`;
            the name of the one used is recorded in the history of jobs acted on); None or empty
            disables the check (allowed on loopback only: see `server.check_bind`).
        max_body_bytes: request bodies above this get 413.
        registry: the daemon's registry, so triggers validate locally like child enqueues do.
        sse_heartbeat_s: comment line on an idle /events stream this often.
        sse_block_s: longest XREAD BLOCK of /events (also how often it checks for new types).
        tracing: where the spans of triggered enqueues go (default: the process's own provider).
    """
    state = ApiState(redis, token, max_body_bytes=max_body_bytes, registry=registry,
                     sse_heartbeat_s=sse_heartbeat_s, sse_block_s=sse_block_s, tracing=tracing)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await state.aclose()

    app = FastAPI(
        title="job-supervisor admin API",
        version=_version(),
        description="Inspect and steer jobs, types, workers and schedules; follow lifecycle events (SSE). "
                    "Every route but /health needs `Authorization: Bearer <token>`.",
        openapi_url=None, docs_url=None, redoc_url=None,
        lifespan=lifespan,
        exception_handlers=api_errors.HANDLERS,
        responses={401: {"model": _error_model(), "description": "Missing or wrong bearer token"}},
    )
    app.state.api = state
    app.include_router(router)
    app.include_router(workflow_routes.router)  # workflows and batches (token required)
    app.include_router(ui_routes.reads)  # the dashboard's extra reads (token required)
    app.include_router(ui_routes.pages)  # the dashboard at /ui/ (static, public like /docs)
    _add_docs_routes(app)
    app.add_middleware(Guard, state=state)
    return app


def _add_docs_routes(app: FastAPI) -> None:
    """The OpenAPI document and the Swagger UI page with its packaged assets."""

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document() -> Any:
        return app.openapi()

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_HTML, headers={"Content-Security-Policy": _DOCS_CSP})

    @app.get("/docs/assets/{asset:path}", include_in_schema=False)
    async def docs_asset(asset: str) -> Response:
        media_type = _DOCS_ASSETS.get(asset)
        if media_type is None:
            raise StarletteHTTPException(404)
        body = resources.files("supervisor.operators.api").joinpath("static", asset).read_bytes()
        return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})


def _error_model() -> Any:
    from supervisor.operators.api.schemas import ErrorResponse  # noqa: PLC0415

    return ErrorResponse


def _version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("job-supervisor")
    except Exception:  # noqa: BLE001 (not installed: running from a checkout)
        return "0"


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of `app` (also served at /openapi.json)."""
    doc: dict[str, Any] = json.loads(json.dumps(app.openapi()))
    return doc


__all__ = ["ApiState", "create_app", "openapi_document"]

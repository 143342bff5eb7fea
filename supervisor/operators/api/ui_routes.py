"""The dashboard at `/ui/`: its packaged page and assets, and the two reads it needs beyond `routes.py`.

The page and its assets are public like `/docs` (a static shell holding no data); every
request the page makes for data sends the bearer token in a header, so the guard of
`app.py` covers it. Served with a strict Content-Security-Policy: scripts and styles only
from the API itself, nothing inline, no framing, no form posts; every asset ships in the
package (`static/ui/`), so the page works offline.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Security
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor.operators import search
from supervisor.operators.api.routes import bearer
from supervisor.operators.api.schemas import ErrorDetail, JobOut, job_out

UI_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
          "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".png": "image/png", ".txt": "text/plain; charset=utf-8"}
_HEADERS = {"Content-Security-Policy": UI_CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}

pages = APIRouter(include_in_schema=False)
reads = APIRouter(dependencies=[Security(bearer)])


@cache
def _assets() -> dict[str, bytes]:
    """Every file under `static/ui/` by its path there (read once: the set is fixed at install)."""
    root = resources.files("supervisor.operators.api").joinpath("static", "ui")
    found: dict[str, bytes] = {}
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                stack.append((entry, f"{prefix}{entry.name}/"))
            elif "." + entry.name.rpartition(".")[2] in _MEDIA:
                found[prefix + entry.name] = entry.read_bytes()
    return found


@pages.get("/ui")
async def ui_redirect() -> Response:
    return RedirectResponse("/ui/", status_code=308)


@pages.get("/ui/{asset:path}")
async def ui_asset(asset: str) -> Response:
    """The page (`/ui/`) and its assets; the page routes itself after the `#`."""
    body = _assets().get(asset or "index.html")
    if body is None:
        raise StarletteHTTPException(404)
    media = _MEDIA["." + (asset or "index.html").rpartition(".")[2]]
    cache_control = "no-cache" if not asset or asset.endswith(".html") else "public, max-age=300"
    return Response(body, media_type=media, headers={**_HEADERS, "Cache-Control": cache_control})


class SearchOut(BaseModel):
    jobs: list[JobOut]
    matched: dict[str, str] = Field(description="Job id -> what matched: id, idempotency_key, request_id, "
                                                "trace_id, parent or error.")
    scanned: int = Field(description="Records the bounded scan read.")
    complete: bool = Field(description="True when every record of the types searched was read; else only "
                                       "the newest `scan` were (narrow it with `type`).")
    corrupt: list[ErrorDetail] = Field(default_factory=list)


@reads.get("/search", response_model=SearchOut, tags=["jobs"])
async def search_jobs(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=1000, description="What to look for.")],
    type_: Annotated[str | None, Query(alias="type", max_length=200, description="Only this job type.")] = None,
    field: Annotated[search.Field, Query(description="Where to look (default: everywhere).")] = "any",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    scan: Annotated[int, Query(ge=100, le=200_000, description="Most records the scan reads.")] = 20_000,
) -> Any:
    """Jobs whose id, idempotency key, request id, trace id or parent equals `q`, or whose error
    contains it (case-insensitive). Ids and idempotency keys are looked up directly; the rest
    is a bounded scan of the newest records of each index (`scanned`, `complete` say how far)."""
    found = await search.search_jobs(request.app.state.api.broker, q, name=type_, want=field, limit=limit,
                                     scan=scan)
    return {"jobs": [job_out(j) for j in found.jobs], "matched": found.matched, "scanned": found.scanned,
            "complete": found.complete,
            "corrupt": [{"code": e.code, "message": str(e), "key": e.key} for e in found.corrupt]}


@reads.get("/keys/{type_name}/{key}/waiters", response_model=list[str], tags=["ops"])
async def key_waiters(request: Request, type_name: Annotated[str, Path(max_length=200)],
                      key: Annotated[str, Path(max_length=1000)],
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:
    """Ids of the jobs of a concurrency key waiting for a slot (queued, not active), oldest first."""
    return await search.key_waiters(request.app.state.api.broker, type_name, key, limit)


__all__ = ["UI_CSP", "pages", "reads"]

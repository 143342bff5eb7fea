"""The dashboard's side of the admin API against a real Redis: the page and its files (public,
strict CSP, every file installed as package data), `GET /search`, the key waiters and a job's links.

The page itself is driven in a real browser by tests/browser/test_dashboard.py.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import AsyncIterator

import httpx
import pytest

from supervisor.engine.broker import Broker
from supervisor.operators.api.app import create_app
from supervisor.operators.api.ui_routes import UI_CSP
from supervisor.producers.client import Client
from tests.conftest import ROOT

TOKEN = "ui-token"
API_DIR = ROOT / "supervisor" / "operators" / "api"
UI_DIR = API_DIR / "static" / "ui"
T = "t.search"


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(redis_url, TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api", timeout=20) as client:
        yield client
    await app.state.api.aclose()


async def test_the_page_and_its_files_are_public_with_a_strict_csp_and_data_needs_the_token(
        api: httpx.AsyncClient) -> None:
    page = await api.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == UI_CSP
    assert "'unsafe-inline'" not in UI_CSP and "'unsafe-eval'" not in UI_CSP
    assert (await api.get("/ui")).headers["location"] == "/ui/"
    for src in re.findall(r'(?:src|href)="([^"#]+)"', page.text):
        asset = await api.get(f"/ui/{src}")
        assert asset.status_code == 200, src
        assert asset.headers["content-security-policy"] == UI_CSP
    assert (await api.get("/ui/js/main.js")).headers["content-type"].startswith("text/javascript")
    assert (await api.get("/ui/../openapi.json")).status_code in (401, 404)
    assert (await api.get("/ui/nope.js")).status_code == 404
    assert (await api.get("/search", params={"q": "x"})).status_code == 401
    assert (await api.get("/keys/t/k/waiters")).status_code == 401


def test_every_file_of_the_page_is_package_data_and_nothing_inline() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "supervisor.operators.api"]
    files = {p.relative_to(API_DIR).as_posix() for p in UI_DIR.rglob("*") if p.is_file()}
    installed = {p.relative_to(API_DIR).as_posix() for g in globs for p in API_DIR.glob(g) if p.is_file()}
    assert files and files - installed == set()  # setuptools globs as glob does: `*` stays in its folder
    html = (UI_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and " style=" not in html and "<style" not in html
    for js in (UI_DIR / "js").glob("*.js"):  # text reaches the page only through Preact's escaping
        code = js.read_text()
        assert not re.search(r"innerHTML|dangerouslySetInnerHTML|\beval\(|new Function|localStorage", code), js
        assert "style=" not in code, js


def _ids(doc: dict[str, object]) -> list[str]:
    return [j["id"] for j in doc["jobs"]]  # type: ignore[attr-defined, index]


async def test_search_by_id_idempotency_key_request_and_trace_id_parent_and_error_text(
        api: httpx.AsyncClient, redis_url: str, broker: Broker) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with Client(redis_url, allow_unknown=True) as client:
        parent = await client.enqueue(T, {}, idempotency_key="order-77",
                                      context={"request_id": "req-abc", "trace_id": "f" * 32})
        child = await client.enqueue(T, {}, parent=parent.id)
        others = [await client.enqueue(T, {"i": i}) for i in range(3)]
        batch = await broker.claim(T, "test-instance", 10, 60_000, 1)
        errors = {others[0].id: "card <b>Declined</b> by bank", others[1].id: "Paiement REFUSÉ"}
        fails = [(j.id, j.lease, "permanent", errors[j.id], 0, "", "") for j in batch.jobs if j.id in errors]
        await broker.fail(T, 1, fails)

    async def search(q: str, **params: str) -> dict[str, object]:
        reply = await api.get("/search", params={"q": q, **params}, headers=auth)
        assert reply.status_code == 200, reply.text
        doc: dict[str, object] = reply.json()
        return doc

    assert _ids(found := await search(child.id)) == [child.id] and found["matched"] == {child.id: "id"}
    assert (await search("order-77"))["matched"] == {parent.id: "idempotency_key"}
    assert (await search("req-abc"))["matched"] == {parent.id: "request_id"}
    assert (await search("f" * 32, field="trace_id"))["matched"] == {parent.id: "trace_id"}
    assert (await search(parent.id, field="parent"))["matched"] == {child.id: "parent"}
    by_error = await search("<B>declined</b> BY", type=T)
    assert by_error["matched"] == {others[0].id: "error"} and by_error["complete"] is True
    assert by_error["scanned"] == 5
    for needle in ("refusÉ", "REFUSÉ", "refusé"):  # the search box finds what the job list's filter lists
        listed = await api.get("/jobs", params={"type": T, "error": needle}, headers=auth)
        assert _ids(await search(needle, field="error")) == _ids(listed.json()), needle
    assert _ids(await search("paiement refusÉ")) == [others[1].id]
    assert _ids(await search("req-abc", field="error")) == []
    assert _ids(await search("nothing-like-it")) == []
    bad = await api.get("/search", params={"q": "x", "field": "payload"}, headers=auth)
    assert bad.status_code == 422 and bad.json()["error"]["field"]


async def test_a_narrow_scan_says_it_was_not_complete(api: httpx.AsyncClient, redis_url: str) -> None:
    async with Client(redis_url, allow_unknown=True) as client:
        await client.enqueue_many([(T, {"i": i}) for i in range(150)])
    reply = await api.get("/search", params={"q": "zzz", "scan": 100}, headers={"Authorization": f"Bearer {TOKEN}"})
    doc = reply.json()
    assert doc["complete"] is False and 0 < doc["scanned"] <= 100


async def test_key_waiters_are_the_live_jobs_of_a_key_that_do_not_hold_it(
        api: httpx.AsyncClient, redis_url: str, broker: Broker) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with Client(redis_url, allow_unknown=True) as client:
        ref = await client.enqueue(T, {}, concurrency_key="acme")
    assert (await api.get(f"/keys/{T}/acme/waiters", headers=auth)).json() == [ref.id]
    assert [j.id for j in (await broker.claim(T, "test-instance", 1, 60_000, 1)).jobs] == [ref.id]
    assert (await api.get(f"/keys/{T}/acme/waiters", headers=auth)).json() == []  # it holds the key now
    assert (await api.get(f"/keys/{T}/other/waiters", headers=auth)).json() == []


async def test_a_jobs_links_name_its_batch_dependencies_and_dependents(api: httpx.AsyncClient, redis_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with Client(redis_url, allow_unknown=True) as client:
        # Given a job of a batch, a second waiting on it, and one whose own key only looks like a workflow step's
        bid = await client.batch(description="links")
        first = await client.enqueue(T, {}, batch=bid)
        second = await client.enqueue(T, {}, depends_on=[first.id])
        lookalike = await client.enqueue(T, {}, idempotency_key=f"wf:wf-x:{first.id}")

    async def links(job_id: str) -> dict[str, object]:
        reply = await api.get(f"/jobs/{job_id}/links", headers=auth)
        assert reply.status_code == 200, reply.text
        doc: dict[str, object] = reply.json()
        return doc

    # Then the first names its batch and its dependent; the second waits on one dependency it
    # cannot name yet (a record keeps only the settled ones); the look-alike is in no workflow
    one = await links(first.id)
    assert one["batch"] == bid and one["workflow"] is None and one["unsettled"] == 0
    assert one["dependents"] == [{"id": second.id, "name": T, "state": "waiting"}] and one["dependencies"] == []
    two = await links(second.id)
    assert two["unsettled"] == 1 and two["dependencies"] == [] and two["dependents"] == [] and two["batch"] is None
    assert (await links(lookalike.id))["workflow"] is None
    assert (await api.get("/jobs/3fa9c1-0000000000000000/links", headers=auth)).status_code == 404
    assert (await api.get("/jobs/not-an-id/links", headers=auth)).status_code == 404
    assert (await api.get(f"/jobs/{first.id}/links")).status_code == 401
    # And the batch's callbacks are listed: none here, and its counts
    batch = (await api.get(f"/batches/{bid}", headers=auth)).json()
    assert batch["total"] == 1 and batch["pending"] == 1 and batch["callbacks"] == []

"""The admin HTTP API against a real Redis and a real daemon (jobs must run).

Most routes go through `httpx.ASGITransport`; the SSE tests run the API under
uvicorn on a free loopback port and read the stream over a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from supervisor.operators.api.app import create_app
from supervisor.operators.api.server import bind_socket, serve
from supervisor.producers.client import Client
from tests.conftest import await_until

TOKEN = "test-token-5f2c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def api(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(redis_url, TOKEN, max_body_bytes=64 * 1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api", headers=AUTH,
                                 timeout=20) as client:
        yield client
    await app.state.api.aclose()


@pytest.fixture
async def served(redis_url: str, use_handlers: Any, daemon: Any) -> AsyncIterator[Client]:
    """A daemon serving tests/handlers/basic.py, and a producer Client."""
    use_handlers("basic")
    await asyncio.to_thread(daemon)
    async with Client(redis_url) as client:
        yield client


async def _finished(client: Client, job_id: str, timeout: float = 15) -> Any:
    return await client.wait(job_id, timeout)


# --- auth, health, errors ----------------------------------------------------------------


async def test_every_route_but_health_needs_the_token(redis_url: str) -> None:
    app = create_app(redis_url, TOKEN)
    routes = [("GET", "/jobs"), ("GET", "/jobs/abcdef-0000000000000000"), ("GET", "/jobs/x/logs"),
              ("POST", "/jobs/x/cancel"), ("POST", "/jobs/x/retry"), ("POST", "/jobs/x/replay"),
              ("POST", "/jobs/x/dismiss"), ("GET", "/types"), ("POST", "/types/t.echo/trigger"),
              ("GET", "/workers"), ("GET", "/schedules"), ("GET", "/keys/t.echo/k"), ("GET", "/executions"),
              ("GET", "/events"), ("GET", "/metrics"), ("GET", "/openapi.json")]
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as client:
            for method, path in routes:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                {"Authorization": TOKEN}):
                    r = await client.request(method, path, headers=headers, json={"payload": {}})
                    assert r.status_code == 401, (method, path, headers, r.text)
                    assert r.json()["error"]["code"] == "unauthorized"
                    assert r.headers["www-authenticate"] == "Bearer"
            health = await client.get("/health")
            assert health.status_code == 200
            assert health.json()["status"] == "ok" and health.json()["instances"] == 0
    finally:
        await app.state.api.aclose()


async def test_health_reports_redis_down_as_503() -> None:
    app = create_app("redis://127.0.0.1:1/0", TOKEN)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as client:
            r = await client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
    finally:
        await app.state.api.aclose()


async def test_unknown_ids_and_types_are_404(api: httpx.AsyncClient) -> None:
    for path in ("/jobs/abcdef-0000000000000000", "/jobs/not-an-id", "/jobs/abcdef-0000000000000000/logs"):
        r = await api.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "job_not_found"
    for action in ("cancel", "retry", "replay", "dismiss"):
        r = await api.post(f"/jobs/abcdef-0000000000000000/{action}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
    r = await api.post("/types/no.such-type/trigger", json={"payload": {}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_job_type"
    r = await api.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_bodies_are_capped_and_validated(api: httpx.AsyncClient, served: Client) -> None:
    # A body above the cap is refused before it is read (413), declared or chunked.
    huge = {"payload": {"value": "x" * (128 * 1024)}}
    r = await api.post("/types/t.echo/trigger", json=huge)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    r = await api.post("/types/t.echo/trigger", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    # Request validation names the field.
    r = await api.post("/types/t.echo/trigger", json={"payload": {}, "priority": 99999})
    assert r.status_code == 422 and r.json()["error"]["field"] == "priority"
    r = await api.post("/types/t.echo/trigger", json={"payload": {}, "bogus": 1})
    assert r.status_code == 422 and r.json()["error"]["field"] == "bogus"
    r = await api.post("/types/t.echo/trigger", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    r = await api.get("/jobs", params={"limit": 0})
    assert r.status_code == 422 and r.json()["error"]["field"] == "limit"
    r = await api.get("/jobs", params={"state": "sleeping"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "state"
    r = await api.get("/jobs", params={"cursor": "garbage!"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "cursor"
    # Payload validation against the type's published schema names the JSON path.
    r = await api.post("/types/t.flaky/trigger", json={"payload": {"succeed_on": "soon"}})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_payload" and err["field"] == "payload.succeed_on"
    r = await api.post("/types/t.flaky/trigger", json={"payload": {}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "payload.succeed_on"
    assert (await api.get("/jobs")).json()["jobs"] == []  # nothing was queued by any of these


# --- jobs --------------------------------------------------------------------------------


async def test_trigger_get_logs_and_idempotency(api: httpx.AsyncClient, served: Client) -> None:
    r = await api.post("/types/t.echo/trigger", json={"payload": {"value": "hi"}, "idempotency_key": "k1"},
                       headers={"X-Request-ID": "req-42"})
    assert r.status_code == 201, r.text
    ref = r.json()
    assert ref["name"] == "t.echo" and ref["existing"] is False
    again = await api.post("/types/t.echo/trigger", json={"payload": {"value": "hi"}, "idempotency_key": "k1"})
    assert again.status_code == 200
    assert again.json() == {**ref, "existing": True, "outcome": "coalesced", "reason": "idempotency-key"}
    await _finished(served, ref["id"])
    job = (await api.get(f"/jobs/{ref['id']}")).json()
    assert job["state"] == "completed" and job["result"]["value"] == "hi"
    assert job["context"]["request_id"] == "req-42"
    assert job["attempts"][0]["outcome"] == "completed" and job["attempts"][0]["attempt"] == 1
    logs = await api.get(f"/jobs/{ref['id']}/logs")
    assert logs.status_code == 200 and logs.json() == {"id": ref["id"], "lines": []}


async def test_trigger_takes_every_submit_option_and_answers_with_the_outcome(
    api: httpx.AsyncClient, served: Client,
) -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    first = await api.post("/types/t.echo/trigger", json={"payload": {"value": "a"}, "run_at": later,
                                                          "concurrency_key": "tenant-9", "priority": 3})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["outcome"] == "accepted" and body["key"] == "tenant-9" and body["existing"] is False
    job = (await api.get(f"/jobs/{body['id']}")).json()
    assert job["state"] == "pending" and job["priority"] == 3
    assert abs(datetime.fromisoformat(job["run_at"]) - datetime.fromisoformat(later)) < timedelta(seconds=1)
    # The key's default queue policy (nothing queued beside a live job) refuses a second one: 409 with
    # the key and the live job, in HTTP terms.
    second = await api.post("/types/t.echo/trigger", json={"payload": {"value": "b"}, "concurrency_key": "tenant-9"})
    assert second.status_code == 409, second.text
    err = second.json()["error"]
    assert err["code"] == "rejected" and err["key"] == "tenant-9" and err["job_id"] == body["id"]
    # delay and run_at together, or a time without a zone: 422 naming the problem.
    both = await api.post("/types/t.echo/trigger", json={"payload": {}, "delay": 5, "run_at": later})
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]
    naive = await api.post("/types/t.echo/trigger", json={"payload": {}, "run_at": "2030-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["error"]["field"] == "run_at"
    # A delayed trigger with an idempotency key: 201, then 200 coalesced onto the same job.
    one = await api.post("/types/t.echo/trigger", json={"payload": {}, "delay": 600, "idempotency_key": "i-1"})
    two = await api.post("/types/t.echo/trigger", json={"payload": {}, "delay": 600, "idempotency_key": "i-1"})
    assert (one.status_code, two.status_code) == (201, 200)
    assert two.json()["outcome"] == "coalesced" and two.json()["id"] == one.json()["id"]
    assert two.json()["reason"] == "idempotency-key"


async def test_list_filters_and_cursor_pagination(api: httpx.AsyncClient, served: Client) -> None:
    ids = []
    for i in range(7):
        ref = await served.enqueue("t.echo", {"value": str(i)})
        ids.append(ref.id)
        await _finished(served, ref.id)  # one after the other: they finish in creation order
        await asyncio.sleep(0.003)  # distinct creation times
    keyed = await served.enqueue("t.echo", {"value": "keyed"}, context={"concurrency_key": "tenant-1"})
    for job_id in [*ids, keyed.id]:
        await _finished(served, job_id)
    # Pages of 3, most recently finished first, no overlap, nothing missing.
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"type": "t.echo", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/jobs", params=params)).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        # A job created between pages never shifts the later ones.
        if len(seen) == 3:
            late = await served.enqueue("t.echo", {"value": "late"})
        if cursor is None:
            break
    assert seen == [keyed.id, *reversed(ids)]
    finished = [j["finished"] for j in (await api.get("/jobs", params={"limit": 100})).json()["jobs"]]
    assert finished == sorted(finished, reverse=True)  # finished jobs: the most recently finished first
    # Filters.
    by_key = (await api.get("/jobs", params={"key": "tenant-1"})).json()["jobs"]
    assert [j["id"] for j in by_key] == [keyed.id]
    pivot = (await api.get(f"/jobs/{ids[3]}")).json()["created"]
    newer = (await api.get("/jobs", params={"type": "t.echo", "state": "completed", "since": pivot})).json()
    older = (await api.get("/jobs", params={"type": "t.echo", "state": "completed", "until": pivot})).json()
    await _finished(served, late.id)
    assert {j["id"] for j in newer["jobs"]} == {*ids[3:], keyed.id, late.id}
    assert {j["id"] for j in older["jobs"]} == set(ids[:3])
    assert (await api.get("/jobs", params={"state": "dead"})).json() == {"jobs": [], "next_cursor": None,
                                                                         "corrupt": []}


async def test_transitions_and_409_on_wrong_state(api: httpx.AsyncClient, served: Client) -> None:
    # completed: replay, retry, dismiss and cancel are refused with the state and a reason.
    done = (await api.post("/types/t.echo/trigger", json={"payload": {}})).json()["id"]
    await _finished(served, done)
    for action in ("replay", "retry", "dismiss", "cancel"):
        r = await api.post(f"/jobs/{done}/{action}")
        assert r.status_code == 409, (action, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_state" and err["state"] == "completed" and err["action"] == action
        assert "completed" in err["message"] and err["reason"].endswith("this one is completed")
    # dead -> replay -> pending -> ... dead again -> dismiss.
    dead = (await api.post("/types/t.always-fails/trigger", json={"payload": {}})).json()["id"]
    assert (await _finished(served, dead)).state == "dead"
    assert (await api.post(f"/jobs/{dead}/retry")).status_code == 409
    r = await api.post(f"/jobs/{dead}/replay")
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "replay" and r.json()["job"]["id"] == dead
    assert (await _finished(served, dead)).state == "dead"
    r = await api.post(f"/jobs/{dead}/dismiss")
    assert r.status_code == 200 and r.json()["state"] == "dismissed"
    assert (await api.post(f"/jobs/{dead}/dismiss")).json()["error"]["state"] == "dismissed"
    # failed -> retry -> failed again (PermanentError).
    failed = (await api.post("/types/t.permanent/trigger", json={"payload": {}})).json()["id"]
    assert (await _finished(served, failed)).state == "failed"
    r = await api.post(f"/jobs/{failed}/retry")
    assert r.status_code == 200 and r.json()["result"] == "ok"
    job = await _finished(served, failed)
    assert job.state == "failed" and len(job.attempts) == 2
    # cancel: a delayed pending job at once, with the reason recorded.
    later = (await api.post("/types/t.echo/trigger", json={"payload": {}, "delay": 60})).json()["id"]
    r = await api.post(f"/jobs/{later}/cancel", json={"reason": "not needed"})
    assert r.status_code == 200 and r.json()["result"] == "cancelled" and r.json()["state"] == "cancelled"
    # an active job is told cooperatively.
    coop = (await api.post("/types/t.cooperative/trigger", json={"payload": {}})).json()["id"]
    await await_until(lambda: _state_is(served, coop, "active"), what="cooperative job active")
    r = await api.post(f"/jobs/{coop}/cancel")
    assert r.status_code == 200 and r.json()["result"] == "requested"
    assert (await _finished(served, coop)).state == "cancelled"


async def _state_is(client: Client, job_id: str, state: str) -> bool:
    return (await client.get(job_id)).state == state


# --- types, workers, schedules, keys, executions, metrics, openapi -----------------------


async def test_types_workers_schedules_keys_metrics_openapi(api: httpx.AsyncClient, served: Client,
                                                            redis: aioredis.Redis) -> None:
    ref = await served.enqueue("t.echo", {"value": "x"})
    await _finished(served, ref.id)
    types = {t["name"]: t for t in (await api.get("/types")).json()}
    echo = types["t.echo"]
    assert echo["schema"]["properties"]["value"]["type"] == "string"
    assert echo["policy"]["concurrency"] == 20 and echo["source"].endswith("basic.py")
    assert echo["counts"]["completed"] == 1 and echo["counts"]["ready"] == 0
    # The daemon's presence, plus an instance whose heartbeat key expired (stale).
    await redis.zadd("js:instances", {"gone:2:cd": time.time() - 100})
    workers = (await api.get("/workers")).json()
    assert [w["status"] for w in workers] == ["alive", "stale"] and workers[1]["instance"] == "gone:2:cd"
    alive = workers[0]
    assert alive["instance"].startswith("d0:") and alive["pid"] > 0 and alive["workers"][0]["rss"] > 0
    health = (await api.get("/health")).json()
    assert health["instances"] == 1 and health["instances_stale"] == 1
    assert (await api.get("/schedules")).json() == []
    r = await api.get("/keys/t.echo/tenant-1")
    assert r.status_code == 200 and r.json()["active"] == [] and r.json()["queued"] == 0
    metrics = await api.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "python_info" in metrics.text or "process_" in metrics.text
    doc = (await api.get("/openapi.json")).json()
    assert {"/jobs", "/events", "/types/{name}/trigger"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


async def test_schedules_listed_like_the_cli(api: httpx.AsyncClient, use_handlers: Any, daemon: Any) -> None:
    use_handlers("cron")
    await asyncio.to_thread(daemon)
    rows = (await api.get("/schedules", params={"count": 2})).json()
    assert rows and all(len(r["next"]) == 2 and r["job"] and r["cron"] for r in rows)


async def test_executions_newest_first(api: httpx.AsyncClient, served: Client) -> None:
    ok = await served.enqueue("t.echo", {"value": "a"})
    await _finished(served, ok.id)
    bad = await served.enqueue("t.always-fails", {})
    await _finished(served, bad.id)
    rows = (await api.get("/executions", params={"limit": 50})).json()["executions"]
    assert [r["stream_id"] for r in rows] == sorted((r["stream_id"] for r in rows),
                                                     key=lambda s: tuple(map(int, s.split("-"))), reverse=True)
    assert {r["event"] for r in rows} <= {"started", "completed", "failed", "retry", "dead", "lease-expired"}
    mine = [(r["event"], r["attempt"]) for r in rows if r["job_id"] == bad.id]
    assert mine[0] == ("dead", 3) and ("retry", 1) in mine and ("started", 1) in mine
    assert [r["event"] for r in rows if r["job_id"] == ok.id] == ["completed", "started"]
    two = (await api.get("/executions", params={"limit": 2, "type": "t.echo"})).json()["executions"]
    assert [r["event"] for r in two] == ["completed", "started"]


# --- SSE over a real socket --------------------------------------------------------------


@dataclass
class SseMessage:
    id: str | None = None
    event: str | None = None
    data: Any = None


@dataclass
class LiveApi:
    url: str
    stop: asyncio.Event
    task: asyncio.Task[None]
    messages: list[SseMessage] = field(default_factory=list)


@pytest.fixture
async def live_api(redis_url: str) -> AsyncIterator[LiveApi]:
    app = create_app(redis_url, TOKEN, sse_heartbeat_s=0.3, sse_block_s=0.2)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop, sock=sock, started=started))
    await asyncio.wait_for(started.wait(), 10)
    yield LiveApi(f"http://127.0.0.1:{port}", stop, task)
    stop.set()
    await asyncio.wait_for(task, 15)


async def _read_sse(response: httpx.Response, want: int, on_comment: Callable[[str], None] | None = None,
                    timeout: float = 20) -> list[SseMessage]:
    out: list[SseMessage] = []
    current = SseMessage()

    async def read() -> None:
        nonlocal current
        async for line in response.aiter_lines():
            if line.startswith(":"):
                if on_comment:
                    on_comment(line)
                continue
            if line == "":
                if current.event is not None:
                    out.append(current)
                    if len(out) >= want:
                        return
                current = SseMessage()
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data = json.loads(value)

    await asyncio.wait_for(read(), timeout)
    return out


async def test_sse_resumes_after_last_event_id_without_loss_or_repeat(
        live_api: LiveApi, served: Client) -> None:
    async with httpx.AsyncClient(base_url=live_api.url, headers=AUTH, timeout=30) as http:
        # Given a subscriber that reads some events and disconnects
        async with http.stream("GET", "/events") as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            first_refs = [await served.enqueue("t.echo", {"value": f"a{i}"}) for i in range(3)]
            # enqueued, started, completed per job; read 4 and drop the connection mid-stream
            first = await _read_sse(r, 4)
        # When more jobs run while it is away
        for ref in first_refs:
            await _finished(served, ref.id)
        more = [await served.enqueue("t.echo", {"value": f"b{i}"}) for i in range(3)]
        more.append(await served.enqueue("t.always-fails", {}))  # a second type's stream
        for ref in more:
            await _finished(served, ref.id)
        # Then reconnecting with Last-Event-ID delivers exactly what it missed, in order per job
        async with http.stream("GET", "/events", headers={"Last-Event-ID": first[-1].id or ""}) as r:
            # t.echo: enqueued, started, completed (x6); t.always-fails: enqueued, 3 x started, 2 x retry, dead
            expected_total = 6 * 3 + 7
            rest = await _read_sse(r, expected_total - len(first))
    events = [(m.data["job_id"], m.event, m.data["attempt"]) for m in [*first, *rest]]
    assert len(events) == len(set(events)) == expected_total, events  # none lost, none repeated
    for ref in [*first_refs, *more[:3]]:
        assert [e for j, e, _ in events if j == ref.id] == ["enqueued", "started", "completed"]
    assert [e for j, e, _ in events if j == more[3].id] == [
        "enqueued", "started", "retry", "started", "retry", "started", "dead"]
    assert all(m.data["type"] in ("t.echo", "t.always-fails") and m.id for m in [*first, *rest])
    # The token is base64 JSON of every stream position.
    doc = json.loads(base64.urlsafe_b64decode(rest[-1].id + "=" * (-len(rest[-1].id) % 4)))
    assert set(doc["p"]) == {"t.echo", "t.always-fails"}


async def test_sse_filters_heartbeats_and_bad_resume_token(live_api: LiveApi, served: Client) -> None:
    comments: list[str] = []
    async with httpx.AsyncClient(base_url=live_api.url, headers=AUTH, timeout=30) as http:
        target = await served.enqueue("t.echo", {"value": "target"}, delay=1.2)
        async with http.stream("GET", "/events", params={"job_id": target.id}) as r:
            await served.enqueue("t.echo", {"value": "noise"})
            got = await _read_sse(r, 2, comments.append)  # started, completed of the target only
        assert [(m.data["job_id"], m.event) for m in got] == [(target.id, "started"), (target.id, "completed")]
        assert ": keepalive" in comments  # heartbeat while waiting for the delayed job (every 0.3 s here)
        async with http.stream("GET", "/events", params={"type": "t.always-fails"}) as r:
            await served.enqueue("t.echo", {"value": "other type"})
            fail = await served.enqueue("t.always-fails", {})
            got = await _read_sse(r, 1)
        assert got[0].data["job_id"] == fail.id and got[0].event == "enqueued"
        bad = await http.get("/events", headers={"Last-Event-ID": "not-a-token"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "Last-Event-ID"
        bad = await http.get("/events", params={"last_event_id": "eyJ2IjoyfQ"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "last_event_id"


async def test_shutdown_ends_open_streams(redis_url: str) -> None:
    app = create_app(redis_url, None)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(app, "127.0.0.1", port, stop, sock=sock, started=started))
    await asyncio.wait_for(started.wait(), 10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        async with http.stream("GET", "/events") as r:  # no token configured: open on loopback
            assert r.status_code == 200
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            stop.set()
            async for _ in r.aiter_lines():
                pass
            await asyncio.wait_for(task, 10)
            assert loop.time() - t0 < 3


# --- mounted in the daemon's loop ---------------------------------------------------------


async def test_start_in_daemon_serves_and_stops_with_the_shutdown_manager(redis_url: str) -> None:
    import signal

    from supervisor.config import Settings
    from supervisor.daemon.shutdown import ShutdownManager
    from supervisor.engine.broker import connect
    from supervisor.errors import ConfigError
    from supervisor.operators.api.server import SHUTDOWN_PRIORITY, start_in_daemon

    redis = connect(redis_url)
    shutdown = ShutdownManager()
    try:
        assert await start_in_daemon(Settings(api_enabled=False), redis, shutdown) is None
        with pytest.raises(ConfigError, match="without a token"):
            await start_in_daemon(Settings(api_enabled=True, api_host="0.0.0.0", api_port=0,  # noqa: S104  (tested)
                                                  api_token=None), redis, shutdown)
        sock = bind_socket("127.0.0.1", 0)  # a port in use is a ConfigError, not uvicorn's sys.exit
        with pytest.raises(ConfigError, match="cannot serve"):
            await start_in_daemon(Settings(api_enabled=True, api_host="127.0.0.1",
                                                  api_port=sock.getsockname()[1], api_token=None), redis, shutdown)
        sock.close()
        before = signal.getsignal(signal.SIGTERM)
        running = await start_in_daemon(Settings(api_enabled=True, api_host="127.0.0.1", api_port=0,
                                                        api_token="daemon-token", api_max_body_bytes=1000),
                                        redis, shutdown)
        assert running is not None and not running.task.done() and running.port > 0
        assert signal.getsignal(signal.SIGTERM) is before  # uvicorn installed no signal handler
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{running.port}", timeout=10) as http:
            assert (await http.get("/jobs")).status_code == 401
            assert (await http.get("/jobs", headers={"Authorization": "Bearer daemon-token"})).status_code == 200
            big = await http.post("/types/x/trigger", content=b"x" * 2000,
                                  headers={"Authorization": "Bearer daemon-token"})
            assert big.status_code == 413
            async with http.stream("GET", "/events", headers={"Authorization": "Bearer daemon-token"}) as r:
                assert r.status_code == 200
                report = await shutdown.shutdown("test")  # ends the open stream too
        assert report.stopped == ["admin-api"] and running.task.done()
        assert SHUTDOWN_PRIORITY == 70
        assert await redis.ping()  # the daemon's Redis client is left open for the later stops
    finally:
        await redis.aclose()

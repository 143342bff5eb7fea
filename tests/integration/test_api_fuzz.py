"""Fuzz the admin API from its own OpenAPI document (schemathesis): no input gets a 5xx.

The API runs under uvicorn in a thread (its own event loop) against the suite's real
Redis, seeded with a published type, jobs in several states and a schedule. Left out:
`/events` (a stream never ends, so a generated request would only time out) and
`/keys/{type}/{key}`, whose documented answer is 501 until keyed concurrency lands
(drop that exclusion then).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis as syncredis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from supervisor.daemon.redis_server import RedisServer
from supervisor.daemon.scheduler import SPECS_KEY
from supervisor.engine import serving
from supervisor.engine.broker import Broker, connect
from supervisor.operators.api.app import create_app
from supervisor.operators.api.server import bind_socket, serve
from supervisor.producers.client import Client

pytestmark = pytest.mark.slow
TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

schema = schemathesis.openapi.from_dict(create_app("redis://127.0.0.1:1/0", TOKEN).openapi())
schema = schema.exclude(path="/events")


@dataclass
class ThreadedApi:
    url: str
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    thread: threading.Thread

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(20)


def _start(redis_url: str) -> ThreadedApi:
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        sock = bind_socket("127.0.0.1", 0)
        box["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started = asyncio.Event()
        app = create_app(redis_url, TOKEN, max_body_bytes=16 * 1024)
        task = asyncio.create_task(serve(app, "127.0.0.1", 0, box["stop"], sock=sock, started=started))
        await started.wait()
        ready.set()
        await task

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="fuzz-api", daemon=True)
    thread.start()
    assert ready.wait(15), "API did not start"
    return ThreadedApi(box["url"], box["loop"], box["stop"], thread)


async def _seed(url: str) -> None:
    redis = connect(url)
    try:
        await Broker(redis).publish_type("fuzz.echo", {
            "name": "fuzz.echo", "source": "tests/fuzz", "policy": '{"runtime": "inprocess", "concurrency": 1}',
            "schema": '{"type": "object", "properties": {"value": {"type": "string"}}, "required": ["value"]}',
        })
        await serving.announce(redis, "tests/fuzz", 3_600_000, serve=["fuzz.echo"])  # as a live daemon does
        async with Client(redis) as client:
            await client.enqueue("fuzz.echo", {"value": "a"})
            ref = await client.enqueue("fuzz.echo", {"value": "b"}, delay=3600)
            await client.cancel(ref.id)
        await redis.hset(SPECS_KEY, "fuzz.echo@tests", '{"id": "fuzz.echo@tests", "job": "fuzz.echo", '
                         '"cron": "0 * * * *", "timezone": "UTC", "misfire": "run-once", "payload": {}, '
                         '"source": "tests/fuzz"}')
    finally:
        await redis.aclose()


def _warm(api: ThreadedApi) -> None:
    """A valid and an invalid trigger before the fuzzing: the API thread builds the type's payload
    validators now (fastjsonschema generates and compiles code). CPython 3.11 shares the AST
    constructor's recursion depth between threads (cpython#106905): a compile in the API thread
    while Hypothesis parses source in this one can raise a spurious SystemError in either."""
    for payload, status in (({"value": "warm"}, 201), ({}, 422)):
        request = urllib.request.Request(  # noqa: S310 (our own loopback API)
            f"{api.url}/types/fuzz.echo/trigger", method="POST", data=json.dumps({"payload": payload}).encode(),
            headers={**AUTH, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                got = answer.status
        except urllib.error.HTTPError as exc:
            got = exc.code
        assert got == status, (payload, got)


@pytest.fixture(scope="module")
def fuzz_api(redis_server: RedisServer) -> Iterator[ThreadedApi]:
    plain = syncredis.Redis.from_url(redis_server.url)
    assert plain.dbsize() == 0, "refusing to use a non-empty Redis database"
    asyncio.run(_seed(redis_server.url))
    api = _start(redis_server.url)
    _warm(api)
    yield api
    api.close()
    plain.flushall()
    plain.close()


@schema.parametrize()
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "15")), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_input_gets_a_server_error(case: Any, fuzz_api: ThreadedApi) -> None:
    response = case.call(base_url=fuzz_api.url, headers=AUTH, timeout=10)
    case.validate_response(response, checks=[not_a_server_error])

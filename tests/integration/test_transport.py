"""Every script transport (supervisor.engine.transport) against a real redis-server: the lean wire and
redis-py run scripts alike, load a script Redis forgot, and carry the clients' enqueue paths."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from supervisor.engine import keys, serving
from supervisor.engine.broker import Broker, connect
from supervisor.engine.transport import LoopTransport, RedisPyTransport, ScriptTransport, transport_for
from supervisor.engine.wire import AsyncWire, PackedCall, Script
from supervisor.producers.client import Client, EnqueueRequest
from tests.conftest import await_until

INCR = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
PLAIN = "transport.plain"


@pytest.fixture(params=["wire", "redis-py"])
async def transport(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[ScriptTransport]:
    client = connect(redis_url)
    made = transport_for(client) if request.param == "wire" else RedisPyTransport(client)
    assert isinstance(made, AsyncWire if request.param == "wire" else RedisPyTransport)
    yield made
    await made.close()
    await client.aclose()


async def test_a_forgotten_script_is_loaded_again_on_every_call_shape(
        transport: ScriptTransport, redis: aioredis.Redis) -> None:
    # Given a script Redis has run, then forgot (as after a restart)
    assert await transport.evalsha(INCR, ["n"], [1]) == 1
    packed = PackedCall(INCR, ["n"], [], tail=1)
    for expected, call in ((3, lambda: transport.evalsha(INCR, ["n"], [2])),
                           (6, lambda: transport.evalsha_packed(INCR, packed.pack("3"))),
                           ([10, 15], lambda: transport.evalsha_stream(INCR, [("n", [4]), ("n", [5])])),
                           (21, lambda: transport.wait_then_evalsha(["nothing-comes"], 0.01, INCR, ["n"], [6]))):
        await redis.script_flush()
        # When it is called again, each way the engine calls scripts, then it runs once, as if never forgotten
        assert await call() == expected
    assert await redis.get("n") == "21"


async def test_an_error_reply_in_a_stream_raises_after_the_calls_before_it_ran(
        transport: ScriptTransport, redis: aioredis.Redis) -> None:
    await redis.set("text", "x")
    with pytest.raises(ResponseError, match="not an integer"):
        await transport.evalsha_stream(INCR, [("n", [1]), ("text", [1]), ("n", [1])])
    assert await redis.get("n") == "2"  # pipelined: every call was sent


async def test_a_wait_ends_when_woken_and_the_script_runs_right_after(
        transport: ScriptTransport, redis: aioredis.Redis) -> None:
    # Given a wait on its own connection, blocked in Redis
    waiter = transport.blocking()
    waiting = asyncio.ensure_future(waiter.wait_then_evalsha(["wake"], 10, INCR, ["n"], [7]))

    async def blocked() -> bool:
        return int((await redis.info("clients"))["blocked_clients"]) > 0

    await await_until(blocked, timeout=10, what="the wait to block")
    assert await redis.get("n") is None  # the script waits behind it
    # When a producer wakes it, then the script runs at once
    await redis.zadd("wake", {"m": 0})
    assert await asyncio.wait_for(waiting, 5) == 7
    assert await transport.wait("wake", 0.01) is False  # the member was popped by the wait
    await redis.zadd("wake", {"m": 0})
    assert await transport.wait("wake", 0.01) is True
    if waiter is not transport:
        await waiter.close()


async def test_a_wait_on_several_keys_ends_on_any_of_them(
        transport: ScriptTransport, redis: aioredis.Redis) -> None:
    # Given a wait on two keys of one slot (a queue's wake-up key and a fetch loop's own)
    waiter = transport.blocking()
    waiting = asyncio.ensure_future(waiter.wait_then_evalsha(["{q}wake", "{q}own"], 10, INCR, ["n"], [3]))

    async def blocked() -> bool:
        return int((await redis.info("clients"))["blocked_clients"]) > 0

    await await_until(blocked, timeout=10, what="the wait to block")
    # When only the second key is written, then the wait ends and the script runs
    await redis.zadd("{q}own", {"m": 0})
    assert await asyncio.wait_for(waiting, 5) == 3
    assert await redis.exists("{q}own", "{q}wake") == 0  # the wait popped what woke it
    if waiter is not transport:
        await waiter.close()


def _publish(name: str) -> dict[str, str]:
    return {"name": name, "schema": json.dumps({"type": "object"}), "source": "tests",
            "policy": json.dumps({"runtime": "inprocess", "concurrency": 1})}


async def test_a_client_over_redis_py_enqueues_what_it_does_over_the_wire(
        redis_url: str, redis: aioredis.Redis) -> None:
    # Given a published, served type and two clients, one of them on redis-py's transport (as for TLS)
    await Broker(redis).publish_type(PLAIN, _publish(PLAIN))
    await serving.announce(redis, "tests", 600_000, serve=[PLAIN])
    records: dict[str, list[dict[str, str]]] = {}
    for kind in ("wire", "redis-py"):
        async with Client(redis_url) as client:
            if kind == "redis-py":
                client.broker.transport = RedisPyTransport(client.broker.redis)
            # When each queues jobs by every path: fast, with options, in bulk, keyed
            refs = [await client.enqueue(PLAIN, {"n": 1}), await client.enqueue(PLAIN, {"n": 2})]
            refs.append(await client.enqueue(PLAIN, {"n": 3}, priority=2, idempotency_key=f"k-{kind}"))
            refs.append(await client.enqueue(PLAIN, {"n": 4}, idempotency_key=f"k-{kind}"))
            refs += await client.enqueue_many([EnqueueRequest(PLAIN, {"n": i}) for i in (5, 6)])
            outcome = await client.submit(PLAIN, {"n": 7}, concurrency_key=f"tenant-{kind}")
            assert outcome.outcome == "accepted" and outcome.key == f"tenant-{kind}"
            assert refs[3].existing and refs[3].id == refs[2].id
            records[kind] = [await redis.hgetall(keys.job_key(r.id)) for r in refs]
    # Then the records hold the same fields and payloads either way
    for wire_rec, py_rec in zip(records["wire"], records["redis-py"], strict=True):
        assert set(wire_rec) == set(py_rec) and wire_rec["payload"] == py_rec["payload"]
        assert wire_rec.get("priority") == py_rec.get("priority")


def test_a_blocking_transport_over_an_event_loop_thread(redis_url: str) -> None:
    # Given redis-py's transport on an event loop of another thread (SyncClient over TLS)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    async def make() -> aioredis.Redis:
        return connect(redis_url)

    client = run(make())
    try:
        blocking = LoopTransport(RedisPyTransport(client), run)
        # When blocking callers use it, each call shape works and NOSCRIPT is handled below it
        assert blocking.evalsha(INCR, ["n"], [1]) == 1
        blocking.call("SCRIPT", "FLUSH")
        assert blocking.evalsha_packed(INCR, PackedCall(INCR, ["n"], [], tail=1).pack("2")) == 3
        assert blocking.call("GET", "n") == "3"
        blocking.close()
    finally:
        run(client.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()

"""The lean hot-path connection (supervisor.engine.wire) against a real redis-server."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import redis as syncredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError, TimeoutError as RedisTimeoutError

from supervisor.daemon.redis_server import RedisServer
from supervisor.engine.broker import Broker, connect
from supervisor.engine.reads import SyncReads, run_blocking
from supervisor.engine.transport import RedisPyTransport
from supervisor.engine.wire import AsyncWire, Script, SyncWire, WireParams, params_of


def _wire(url: str, **overrides: object) -> AsyncWire:
    params = params_of(aioredis.Redis.from_url(url))
    assert params is not None
    return AsyncWire(replace(params, **overrides))  # type: ignore[arg-type]


async def test_replies_reach_their_callers_when_many_calls_are_in_flight(redis_url: str) -> None:
    wire = _wire(redis_url)
    try:
        # 300 coroutines share one connection; each INCR's reply must come back to its own caller
        got = await asyncio.gather(*(wire.call("INCR", "counter") for _ in range(300)))
        assert sorted(got) == list(range(1, 301))
    finally:
        await wire.close()


async def test_error_replies_raise_and_the_connection_stays_usable(redis_url: str) -> None:
    wire = _wire(redis_url)
    try:
        await wire.call("SET", "text", "abc")
        with pytest.raises(ResponseError, match="not an integer"):
            await wire.call("INCR", "text")
        assert await wire.call("GET", "text") == "abc"
    finally:
        await wire.close()


async def test_a_reply_that_is_not_utf8_keeps_the_connection_and_round_trips(redis_url: str) -> None:
    """Bytes another program wrote come back as lone surrogates (the record parsers report them)
    and the connection every call shares stays up. Such text is never sent back: the caller's
    call fails before anything is written, and the connection stays in step."""
    wire = _wire(redis_url)
    sync = SyncWire(params_of(syncredis.Redis.from_url(redis_url)))  # type: ignore[arg-type]
    raw = syncredis.Redis.from_url(redis_url)
    try:
        raw.set("bin", b"\xff\xfe{")
        raw.hset("rec", mapping={"payload": b"\x80", "state": "pending"})
        calls = [wire.call("GET", "bin"), wire.call("HGETALL", "rec"), wire.call("PING")]
        value, record, pong = await asyncio.gather(*calls)
        assert value == "\udcff\udcfe{" and record == ["payload", "\udc80", "state", "pending"] and pong == "PONG"
        assert sync.call("GET", "bin") == value and sync.call("PING") == "PONG"
        with pytest.raises(UnicodeEncodeError):
            await wire.call("SET", "copy", value)
        assert await wire.call("GET", "bin") == value
    finally:
        await wire.close()
        sync.close()
        raw.close()


async def test_pipelined_calls_return_replies_in_order_with_errors_in_place(redis_url: str) -> None:
    wire = _wire(redis_url)
    try:
        await wire.call("SET", "text", "abc")
        replies = await wire.call_pipelined(("INCR", "n"), ("INCR", "text"), ("GET", "text"))
        assert replies[0] == 1 and replies[2] == "abc"
        assert isinstance(replies[1], ResponseError) and "not an integer" in str(replies[1])
    finally:
        await wire.close()


async def test_a_cancelled_pipelined_wait_leaves_the_connection_in_step(
        redis_url: str, redis: aioredis.Redis) -> None:
    # Given a blocking wait with a second command queued behind it, whose caller gives up
    wire = _wire(redis_url)
    try:
        waiting = asyncio.ensure_future(wire.call_pipelined(("BZPOPMIN", "wake", 10), ("INCR", "behind")))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # When another connection ends the wait, both replies arrive for nobody
        await redis.zadd("wake", {"m": 0})
        # Then each later call still gets its own reply, not one of the abandoned ones
        assert await asyncio.wait_for(wire.call("GET", "behind"), 5) == "1"
        assert await wire.call("PING") == "PONG"
    finally:
        await wire.close()


async def test_a_script_the_server_forgot_is_loaded_again(redis_url: str) -> None:
    wire = _wire(redis_url)
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        assert await wire.evalsha(script, ["n"], [2]) == 2
        await wire.call("SCRIPT", "FLUSH")  # as after a Redis restart without persistence of scripts
        assert await wire.evalsha(script, ["n"], [3]) == 5
    finally:
        await wire.close()


async def test_a_dropped_connection_fails_the_calls_in_flight_and_the_next_call_reconnects(
        redis_url: str, redis: aioredis.Redis) -> None:
    wire = _wire(redis_url)
    try:
        await wire.call("CLIENT", "SETNAME", "wire-under-test")
        blocked = asyncio.ensure_future(wire.call("BZPOPMIN", "nothing-comes", 10))
        await asyncio.sleep(0)  # the blocking call is written before the connection is killed

        async def killed() -> bool:
            return await redis.client_kill_filter(skipme=True, _type="normal") >= 1

        deadline = time.monotonic() + 5
        while not await killed():
            assert time.monotonic() < deadline, "the wire's connection never showed up"
            await asyncio.sleep(0.01)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(blocked, 5)
        assert await wire.call("PING") == "PONG"
    finally:
        await wire.close()


async def test_a_server_that_does_not_answer_times_out_and_the_wire_recovers(redis_url: str) -> None:
    wire = _wire(redis_url, timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="did not answer"):
            await wire.call("BZPOPMIN", "nothing-comes", 5)  # blocks longer than the wire waits
        assert time.monotonic() - started < 3
        assert await wire.call("PING") == "PONG"  # a fresh connection: the late reply is never misread
    finally:
        await wire.close()


async def test_credentials_and_database_come_from_the_url(redis_url: str, redis: aioredis.Redis) -> None:
    await redis.execute_command("ACL", "SETUSER", "wire-user", "on", ">s3cret", "~*", "+@all")
    try:
        url = redis_url.replace("redis://", "redis://wire-user:s3cret@").rsplit("/", 1)[0] + "/3"
        broker = Broker(connect(url))
        assert isinstance(broker.transport, AsyncWire)  # the lean wire, not redis-py
        await broker.transport.call("SET", "where", "db3")
        await broker.close()
        db3 = syncredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3", decode_responses=True)
        assert db3.get("where") == "db3"
        db3.close()
        bad = _wire(url.replace("s3cret", "wrong"))
        with pytest.raises(ResponseError, match=r"WRONGPASS|invalid"):
            await bad.call("PING")
        await bad.close()
    finally:
        await redis.execute_command("ACL", "DELUSER", "wire-user")


async def test_unix_socket_urls_work(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", unix_socket=tmp_path / "r.sock", appendonly=False).start()
    try:
        wire = _wire(server.url)
        assert await wire.call("PING") == "PONG"
        await wire.close()
    finally:
        server.stop()


def test_tls_urls_stay_on_redis_py() -> None:
    # The wire speaks no TLS: a rediss:// broker keeps redis-py for its scripts
    assert params_of(aioredis.Redis.from_url("rediss://localhost:6380/0")) is None
    assert isinstance(Broker(connect("rediss://localhost:6380/0")).transport, RedisPyTransport)


def test_sync_wire_is_safe_to_share_between_threads(redis_url: str) -> None:
    params = params_of(syncredis.Redis.from_url(redis_url))
    assert params is not None
    wire = SyncWire(params)
    script = Script("return redis.call('INCR', KEYS[1])")
    got: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            value = wire.evalsha(script, ["shared"], [])
            with lock:
                got.append(value)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == list(range(1, 801))
    with pytest.raises(ResponseError):
        wire.call("INCRBY", "shared", "x")
    assert wire.call("GET", "shared") == "800"
    wire.close()


def _sync_wire(url: str, spin_us: float = 200.0, **overrides: object) -> SyncWire:
    params = params_of(syncredis.Redis.from_url(url))
    assert params is not None
    # quiet_threads: the threads alive now (pytest-xdist's among them) do not stop the spinning
    return SyncWire(replace(params, **overrides), spin_us=spin_us,  # type: ignore[arg-type]
                    quiet_threads=threading.active_count())


def test_sync_wire_times_out_on_a_silent_server_and_recovers(redis_url: str) -> None:
    wire = _sync_wire(redis_url, timeout_s=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError, match="did not answer"):
            wire.call("BZPOPMIN", "nothing-comes", 5)  # blocks longer than the wire waits
        assert time.monotonic() - started < 3
        assert wire.call("PING") == "PONG"  # a fresh connection: the late reply is never misread
    finally:
        wire.close()


@pytest.mark.parametrize("spin_us", [0.0, 200.0, 1e6])
def test_sync_wire_reads_every_reply_whether_it_spins_or_sleeps(redis_url: str, spin_us: float) -> None:
    # 1e6: every reply is caught while spinning; 0: every reply after sleeping in recv
    wire = _sync_wire(redis_url, spin_us=spin_us)
    caught: list[object] = []
    spin = wire._spin

    def counted(sock: object) -> object:
        reply = spin(sock)  # type: ignore[arg-type]
        caught.append(reply)
        return reply

    wire._spin = counted  # type: ignore[method-assign]
    try:
        big = "x" * 300_000  # a reply spread over many receives
        wire.call("SET", "spin:big", big)
        for i in range(300):
            assert wire.call("ECHO", f"reply {i}") == f"reply {i}"
        assert wire.call("GET", "spin:big") == big
        with pytest.raises(ResponseError):
            wire.call("INCR", "spin:big")
        assert wire.call("BZPOPMIN", "spin:nothing", 0.05) is None  # slower than the 200 µs window
        assert wire.call("PING") == "PONG"
        if spin_us == 0:
            assert caught == []
        elif spin_us == 1e6 and wire._spin_s:
            assert len(caught) >= 300 and all(r is not False for r in caught)
    finally:
        wire.close()


def test_sync_wire_stops_spinning_while_replies_come_later_than_its_window(redis_url: str) -> None:
    wire = _sync_wire(redis_url, spin_us=50.0)
    try:
        assert wire._spin_s > 0, "this test needs 2 or more CPUs"
        for _ in range(8):  # replies that take 20 ms: every spin ends without them
            assert wire.call("BZPOPMIN", "spin:never", 0.02) is None
        assert wire._paused > 0  # a slow or remote Redis: no CPU burnt on hopeless spins
        assert wire.call("PING") == "PONG"
    finally:
        wire.close()


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6390/0", "redis://localhost", "redis://h:7000/3", "redis://u:p%40ss@h/2",
    "redis://:secret@h:1/", "redis://h/?db=4", "REDIS://H:5/1", "redis://[::1]:6379/1", "redis://user@h",
    "unix:///tmp/r.sock", "unix:///tmp/r.sock?db=2", "unix://:pw@/tmp/x.sock",
])
def test_params_read_from_a_url_are_what_redis_py_reads(url: str) -> None:
    # The quick CLI commands and SyncClient read the URL without redis-py: never another server
    assert WireParams.from_url(url) == params_of(aioredis.Redis.from_url(url))


@pytest.mark.parametrize("url", ["rediss://h/0", "redis://h/1?socket_timeout=3", "redis://h/x", "http://h"])
def test_urls_the_wire_cannot_read_alone_are_left_to_redis_py(url: str) -> None:
    assert WireParams.from_url(url) is None


async def test_blocking_reads_answer_as_redis_py_does(redis_url: str, redis: aioredis.Redis) -> None:
    # Given one key of each kind the read models look at
    await redis.hset("h", mapping={"a": "1", "b": "x"})
    await redis.sadd("s", "m1", "m2")
    await redis.zadd("z", {"one": 1.5, "two": 2})
    await redis.set("k", "v")
    params = WireParams.from_url(redis_url)
    assert params is not None
    reads = SyncReads(params)
    try:
        for call in (lambda r: r.ping(), lambda r: r.hgetall("h"), lambda r: r.hgetall("nope"),
                     lambda r: r.smembers("s"), lambda r: r.zcard("z"), lambda r: r.mget(["k", "nope"]),
                     lambda r: r.zrangebyscore("z", "-inf", "+inf"),
                     lambda r: r.zrangebyscore("z", "-inf", "+inf", withscores=True),
                     lambda r: r.register_script("return KEYS[1] .. ARGV[1]")(keys=["a"], args=["b"])):
            # Then each blocking read runs without an event loop and answers as redis-py does
            assert run_blocking(call(reads)) == await call(redis)
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            run_blocking(reads.hgetall("s"))
    finally:
        reads.wire.close()

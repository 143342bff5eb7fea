"""Reaching Redis past one server: the master of a Sentinel group, and (redis-py's) clients for both.

- `connect_target`: redis-py's asyncio client for a `redis+sentinel://` target (its pool asks the
  sentinels for the master on every new connection, and drops a connection that meets a
  replica: `READONLY`) or a `redis+cluster://` one (redis-py's `RedisCluster`).
- `SentinelWire`: the lean wire (`supervisor.engine.wire.AsyncWire`) to the current master: it
  asks the sentinels where the master is each time it connects, and drops its connection when
  the server says it is no longer the master (`READONLY`), so the next call follows a failover.
- `watch_failover`: listens to the sentinels' `+switch-master` and moves every wire at once,
  whichever comes first of that and a failed call.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import hiredis

from supervisor.engine.cluster_wire import SyncClusterWire
from supervisor.engine.redis_url import RedisTarget, parse_redis_url
from supervisor.engine.wire import AsyncWire, SyncWire, WireParams, redis_errors

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import SentinelConnectionPool


def connect_target(target: RedisTarget, **options: Any) -> aioredis.Redis:
    """redis-py's asyncio client for a sentinel or cluster target (`options` as redis-py takes them)."""
    if target.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster  # noqa: PLC0415

        options.pop("retry", None)  # the cluster client follows MOVED/ASK with its own retries
        cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                               username=target.username, password=target.password, ssl=target.tls, **options)
        return cluster  # type: ignore[return-value]  # the same command API as a Redis client
    from redis.asyncio.sentinel import Sentinel  # noqa: PLC0415

    sentinel_kwargs = {"username": target.sentinel_username, "password": target.sentinel_password,
                       "ssl": target.tls, "decode_responses": True,
                       "socket_connect_timeout": options.get("socket_connect_timeout", 5.0),
                       "socket_timeout": options.get("socket_connect_timeout", 5.0)}
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs, username=target.username,
                        password=target.password, db=target.db, ssl=target.tls, **options)
    master: aioredis.Redis = sentinel.master_for(target.service)
    return master


def sentinel_pool(client: Any) -> SentinelConnectionPool | None:
    """The sentinel-managed pool of a redis-py client made by `connect_target`, else None."""
    pool = getattr(client, "connection_pool", None)
    return pool if pool is not None and hasattr(pool, "sentinel_manager") else None


#: Every live SentinelWire of this process, by service: what `+switch-master` moves.
_WIRES: weakref.WeakSet[SentinelWire] = weakref.WeakSet()


class SentinelWire(AsyncWire):
    """The lean wire to the master of a Sentinel group (see the module docstring)."""

    def __init__(self, params: WireParams, pool: SentinelConnectionPool) -> None:
        super().__init__(params)
        self._pool = pool
        _WIRES.add(self)

    @property
    def service(self) -> str:
        return str(self._pool.service_name)

    async def _connect(self) -> Any:
        # Each connection goes where the sentinels say the master is now: the way through a failover.
        host, port = await self._pool.sentinel_manager.discover_master(self._pool.service_name)
        self.params = replace(self.params, host=str(host), port=int(port))
        return await super()._connect()

    def _expect(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        fut = super()._expect(loop)
        fut.add_done_callback(self._readonly)
        return fut

    def _readonly(self, fut: asyncio.Future[Any]) -> None:
        """A READONLY reply: this server is a replica now (an old master back after a failover)."""
        if not fut.cancelled() and "READONLY" in str(fut.exception() or ""):
            fut.get_loop().call_soon(self.moved)

    def moved(self) -> None:
        """The master moved: drop the connection (calls in flight fail; the next one reconnects)."""
        if self._protocol is not None:
            self._drop(redis_errors().ConnectionError(f"the master of {self.service!r} moved"))

    def blocking(self) -> SentinelWire:
        return SentinelWire(self.params, self._pool)


class SyncSentinelWire(SyncWire):
    """The blocking twin of `SentinelWire` (for `SyncClient`): asks the sentinels where the master
    is at each connect, and drops its connection on READONLY so the next call follows a failover."""

    def __init__(self, params: WireParams, target: RedisTarget, spin_us: float = 0.0, quiet_threads: int = 1) -> None:
        super().__init__(params, spin_us, quiet_threads)
        self.target = target

    def _connect(self) -> Any:
        t, last = self.target, None
        for host, port in t.hosts:
            sentinel = SyncWire(WireParams(host=host, port=port, username=t.sentinel_username,
                                           password=t.sentinel_password, connect_timeout_s=1.0, timeout_s=2.0),
                                spin_us=0)
            try:
                found = sentinel.call("SENTINEL", "get-master-addr-by-name", t.service)
            except (redis_errors().RedisError, OSError) as exc:
                last = exc
                continue
            finally:
                sentinel.close()
            if found:
                self.params = replace(self.params, host=str(found[0]), port=int(found[1]))
                return super()._connect()
        raise redis_errors().ConnectionError(f"no sentinel knows the master of {t.service!r}: {last}")

    def _reply(self, data: bytes) -> Any:
        reply = super()._reply(data)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("READONLY"):  # a replica now: reconnect
            with self._lock:
                self._reset()
        return reply


def sync_transport_for(url: str, spin_us: float, quiet_threads: int) -> SyncWire | SyncClusterWire | None:
    """The blocking lean wire for a `redis+sentinel://` or `redis+cluster://` URL (None for others,
    and for TLS, which it does not speak)."""
    target = parse_redis_url(url)
    if target.kind == "server" or target.tls:
        return None
    params = WireParams(username=target.username, password=target.password, db=target.db)
    if target.kind == "cluster":
        return SyncClusterWire(target.hosts, params, spin_us, quiet_threads)
    return SyncSentinelWire(params, target, spin_us, quiet_threads)


def sentinel_params(client: Any, timeout_s: float = 30.0) -> WireParams:
    """The wire's parameters for the master behind a sentinel-managed redis-py client (the
    address is found at each connect)."""
    kw = client.connection_pool.connection_kwargs
    return WireParams(username=kw.get("username"), password=kw.get("password"), db=int(kw.get("db") or 0),
                      connect_timeout_s=float(kw.get("socket_connect_timeout") or 5.0), timeout_s=timeout_s)


async def watch_failover(client: Any) -> None:
    """Until cancelled: on a sentinel's `+switch-master` for this client's service, move every
    `SentinelWire` of the service to the new master at once (a failed call would move it too,
    later). Sentinels that do not answer are tried again after a second."""
    pool = sentinel_pool(client)
    if pool is None:
        return
    service = pool.service_name
    while True:
        for sentinel in pool.sentinel_manager.sentinels:
            try:
                async with sentinel.pubsub() as pubsub:
                    await pubsub.subscribe("+switch-master")
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        data = message and str(message.get("data") or "")
                        if data and data.split(" ", 1)[0] == service:
                            for wire in list(_WIRES):
                                if wire.service == service:
                                    wire.moved()
            except (redis_errors().RedisError, OSError):
                continue
        await asyncio.sleep(1.0)




async def xread_streams(redis: Any, streams: dict[str, str], count: int, block_ms: int) -> list[Any]:
    """XREAD of `streams` (key -> last id seen), as redis-py's `xread` answers it, on one server or
    a Redis Cluster, where streams of different slots cannot share a read: there each stream is
    read on its own (all at once; what is there already first, else a blocking read of each, the
    first to answer ending the others), and the caller merges them (positions per stream, so
    nothing is skipped or repeated)."""
    if not hasattr(redis, "get_node_from_key") or len(streams) < 2:
        return list(await redis.xread(streams, count=count, block=block_ms))
    ready = [r for r in await asyncio.gather(*(redis.xread({k: v}, count=count) for k, v in streams.items())) if r]
    if ready:
        return [row for reply in ready for row in reply]
    reads = [asyncio.ensure_future(redis.xread({k: v}, count=count, block=block_ms)) for k, v in streams.items()]
    try:
        done, _ = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for read in reads:
            if not read.done():
                read.cancel()
    return [row for read in done for row in (read.result() or [])]


__all__ = ["SentinelWire", "SyncSentinelWire", "connect_target", "sentinel_params", "sentinel_pool",
           "sync_transport_for", "watch_failover", "xread_streams"]

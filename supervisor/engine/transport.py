"""The one seam between the engine and Redis for script calls: `ScriptTransport` (asyncio) and
`SyncScriptTransport` (blocking), and the transports that are not the fast wire.

The broker and the clients call the transition scripts only through these protocols, so a new
way of reaching Redis (Cluster, Sentinel) is one more transport, chosen in `transport_for`:

- `supervisor.engine.wire.AsyncWire` / `SyncWire`: the lean hiredis connection, for redis:// and unix://.
- `supervisor.engine.topology.SentinelWire`: the same to a Sentinel group's master, wherever it is now.
- `supervisor.engine.cluster_wire.ClusterWire`: one per master of a Redis Cluster, calls routed by slot.
- `RedisPyTransport`: redis-py's asyncio client, for what the wire cannot speak (rediss:// TLS,
  redis-py's query options).
- `LoopTransport`: a blocking transport over an asyncio one run on an event-loop thread
  (`SyncClient` over redis-py).

A script is called by SHA. Each transport handles NOSCRIPT (Redis forgot the script, e.g. after
a restart) in one place: it loads the script and sends the call again, which is safe because a
NOSCRIPT call did not run. Errors are redis-py's exception types whatever the transport.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import hiredis

from supervisor.engine.cluster_wire import ClusterWire, cluster_wire_of
from supervisor.engine.topology import SentinelWire, sentinel_params, sentinel_pool
from supervisor.engine.wire import AsyncWire, Script, is_noscript, params_of, redis_errors

if TYPE_CHECKING:  # redis-py is imported by whoever made the client
    import redis.asyncio as aioredis

T = TypeVar("T")


class ScriptTransport(Protocol):
    """How the engine reaches Redis for scripts and blocking waits (asyncio)."""

    async def call(self, *cmd: Any) -> Any:
        """One command; its reply."""

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run `script` by SHA (loading it on NOSCRIPT); its reply."""

    async def evalsha_packed(self, script: Script, data: bytes) -> Any:
        """`evalsha` of a call packed once (`supervisor.engine.wire.PackedCall`): the hot path of enqueue."""

    async def evalsha_stream(self, script: Script, calls: Iterable[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Run `script` once per (key, args) of `calls`, pipelined, each sent as soon as it is made
        (`calls` may be a generator that prepares the next while Redis runs this one); the replies
        in order. The first error reply raises."""

    async def wait(self, key: str, timeout_s: float) -> bool:
        """BZPOPMIN `key` for up to `timeout_s`: True when something woke it."""

    async def wait_then_evalsha(self, wait_keys: list[str], timeout_s: float, script: Script,
                                keys: Sequence[str], args: Sequence[Any]) -> Any:
        """BZPOPMIN on `wait_keys` (one slot) for up to `timeout_s`, then `evalsha` however the
        wait ended, at best in one round trip (Redis runs the script the moment the wait ends);
        the script's reply."""

    def blocking(self) -> ScriptTransport:
        """A transport whose blocking waits hold up nothing else (one per waiting queue)."""

    async def close(self) -> None:
        """Close the connections this transport opened."""


class SyncScriptTransport(Protocol):
    """The blocking counterpart of `ScriptTransport`, for `SyncClient` (no waits)."""

    def call(self, *cmd: Any) -> Any: ...

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any: ...

    def evalsha_packed(self, script: Script, data: bytes) -> Any: ...

    def close(self) -> None: ...


def transport_for(client: aioredis.Redis, blocking: aioredis.Redis | None = None) -> ScriptTransport:
    """The transport for what `client` connects to: the lean wire when it can speak it, else
    redis-py itself (`blocking`, when given, carries the blocking waits)."""
    params = params_of(client)
    if params is not None:
        return AsyncWire(params)
    pool = sentinel_pool(client)
    if pool is not None and "SSL" not in pool.connection_class.__name__:
        return SentinelWire(sentinel_params(client), pool)
    if hasattr(client, "nodes_manager") and (wire := cluster_wire_of(client)) is not None:
        return wire  # a Redis Cluster: one lean connection per master
    return RedisPyTransport(client, blocking or client)


async def replicated_call(transport: ScriptTransport, script: Script, keys: Sequence[str], args: Sequence[Any],
                          timeout_ms: int) -> Any:
    """`evalsha`, and `WAIT 1 timeout_ms` behind it in the same write on the same connection, so
    the reply is given only once a replica has the script's writes (durability = "replicated").
    A replica that does not acknowledge in time raises TimeoutError: the write may be lost on
    a failover, so it is not acknowledged (a retry of an enqueue should carry an idempotency key)."""
    cmd = ("EVALSHA", script.sha, len(keys), *keys, *args)
    wait = ("WAIT", 1, timeout_ms)
    for _attempt in range(2):  # NOSCRIPT: loaded, then run again (it did not run)
        if isinstance(transport, AsyncWire):
            reply, acked = await transport.call_pipelined(cmd, wait)
        elif isinstance(transport, ClusterWire):
            reply, acked = await transport.evalsha_replicated(script, keys, args, wait)
        elif isinstance(transport, RedisPyTransport):
            async with transport.redis.pipeline(transaction=False) as pipe:
                pipe.execute_command(*cmd)
                # a Redis Cluster's pipeline sends each node's commands on one connection of its own:
                # the WAIT goes to the node of the script's key, behind it
                pipe.execute_command(*wait, **await _node_of(transport.redis, keys[0]))
                reply, acked = await pipe.execute(raise_on_error=False)
        else:
            raise TypeError(f"{type(transport).__name__} cannot wait for a replica")
        if isinstance(reply, redis_errors().NoScriptError) or (isinstance(reply, Exception) and is_noscript(reply)):
            await transport.call("SCRIPT", "LOAD", script.source)
            continue
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < 1:
            raise redis_errors().TimeoutError(
                f"no replica acknowledged the write within {timeout_ms} ms (durability = replicated): "
                "it may be lost if the master fails now; check the replica's link (INFO replication)")
        return reply
    raise redis_errors().ResponseError(f"NOSCRIPT after loading the script {script.sha}")


async def _node_of(redis: Any, key: str) -> dict[str, Any]:
    """`target_nodes` of a command that must reach the node of `key` on a Redis Cluster ({} elsewhere)."""
    if not hasattr(redis, "get_node_from_key"):
        return {}
    try:
        return {"target_nodes": redis.get_node_from_key(key)}
    except redis_errors().SlotNotCoveredError:  # no slot map yet: the first call of this client
        await redis.initialize()
        return {"target_nodes": redis.get_node_from_key(key)}


class RedisPyTransport:
    """`ScriptTransport` over redis-py's asyncio client. The clients belong to the caller:
    `close` leaves them open."""

    def __init__(self, redis: aioredis.Redis, blocking: aioredis.Redis | None = None) -> None:
        self.redis = redis
        self._blocking = blocking or redis

    async def call(self, *cmd: Any) -> Any:
        return await self.redis.execute_command(*cmd)  # type: ignore[no-untyped-call]

    async def _evalsha(self, script: Script, numkeys_keys_args: Sequence[Any]) -> Any:
        """EVALSHA, and on NOSCRIPT the script loaded and the call made again (the one place)."""
        try:
            return await self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", script.sha, *numkeys_keys_args)
        except redis_errors().NoScriptError:
            await self.redis.script_load(script.source)
        return await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "EVALSHA", script.sha, *numkeys_keys_args)

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._evalsha(script, (len(keys), *keys, *args))

    async def evalsha_packed(self, script: Script, data: bytes) -> Any:
        reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        reader.feed(data)
        cmd = reader.gets()  # ["EVALSHA", sha, numkeys, *keys, *args]
        return await self._evalsha(script, cmd[2:])

    async def evalsha_stream(self, script: Script, calls: Iterable[tuple[str, Sequence[Any]]]) -> list[Any]:
        sent: list[tuple[str, Sequence[Any]]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, args in calls:
                pipe.execute_command("EVALSHA", script.sha, 1, key, *args)
                sent.append((key, args))
            replies = await pipe.execute(raise_on_error=False)
        for i, reply in enumerate(replies):
            if isinstance(reply, redis_errors().NoScriptError):  # loaded by the first, then run again
                key, args = sent[i]
                replies[i] = await self._evalsha(script, (1, key, *args))
            elif isinstance(reply, Exception):
                raise reply
        return replies

    async def wait(self, key: str, timeout_s: float) -> bool:
        return await self._blocking.bzpopmin(key, timeout=timeout_s) is not None

    async def wait_then_evalsha(self, wait_keys: list[str], timeout_s: float, script: Script,
                                keys: Sequence[str], args: Sequence[Any]) -> Any:
        # two round trips: redis-py pipelines nothing behind a wait
        await self._blocking.bzpopmin(wait_keys, timeout=timeout_s)
        return await self.evalsha(script, keys, args)

    def blocking(self) -> RedisPyTransport:
        return self  # the blocking client's pool gives each waiting queue a connection of its own

    async def close(self) -> None:
        return None


class LoopTransport:
    """`SyncScriptTransport` over a `ScriptTransport` whose coroutines `run` runs to their end
    (on an event loop of another thread)."""

    def __init__(self, transport: ScriptTransport, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._transport, self._run = transport, run

    def call(self, *cmd: Any) -> Any:
        return self._run(self._transport.call(*cmd))

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._run(self._transport.evalsha(script, keys, args))

    def evalsha_packed(self, script: Script, data: bytes) -> Any:
        return self._run(self._transport.evalsha_packed(script, data))

    def close(self) -> None:
        return None  # the asyncio transport is closed by its owner


__all__ = ["LoopTransport", "RedisPyTransport", "ScriptTransport", "SyncScriptTransport", "replicated_call",
           "transport_for"]

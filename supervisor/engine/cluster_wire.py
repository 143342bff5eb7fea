"""The lean wire on a Redis Cluster: `ClusterWire`, a `ScriptTransport` with one pipelined
`AsyncWire` per master, each script call routed by the slot of its key.

Every key of one job type shares a hash tag, so each call goes to one node, found in the slot
map (`CLUSTER SLOTS`, read from any node that answers, the seeds last). The map is read again
when a node answers `MOVED` (the call is then sent again where the slot lives now), and before
the next call after a connection error (a master died: its replica takes over). A call answered
`ASK` (its slot is migrating and its key is on the new node already) is sent once to that node
behind `ASKING`; `TRYAGAIN` and `CLUSTERDOWN` are retried after short pauses for up to 3 s, then
raised as a lost connection (what callers already retry): in each case the
script did not run. Blocking waits use connections of their own (`blocking`), per node, sharing
the slot map. Reads and other commands stay with redis-py's cluster client. `SyncClusterWire` is
the blocking twin, for `SyncClient`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import hiredis

from supervisor.engine.wire import AsyncWire, Script, SyncWire, WireParams, is_noscript, redis_errors

_SLOTS = 16384
_RETRIES = 5
#: How long TRYAGAIN and CLUSTERDOWN (a slot migrating, a failover, a node late with its pings)
#: are retried before the call fails as a lost connection, which every caller already treats as
#: Redis being away for a while (producers retry, daemons keep their jobs and try again).
_BUSY_FOR_S = 3.0


def _cluster_busy(kind: str, exc: Exception, since: float) -> float:
    """The pause before retrying a call the cluster answered TRYAGAIN/CLUSTERDOWN to; raises a
    ConnectionError once it has answered so for `_BUSY_FOR_S`."""
    waited = time.monotonic() - since
    if waited >= _BUSY_FOR_S:
        raise redis_errors().ConnectionError(
            f"Redis Cluster answered {kind} for {waited:.1f} s ({exc}): a failover or a migration "
            "is taking long; the call was not carried out, retry it") from exc
    return min(0.2, 0.02 + waited / 10)


def key_slot(key: str) -> int:
    """The cluster slot of `key` (CRC16 of its hash tag, as Redis computes it)."""
    from redis.crc import key_slot as crc_slot  # noqa: PLC0415  (redis-py: loaded with the cluster client)

    return int(crc_slot(key.encode("utf-8", "surrogateescape")))


def parse_slots(reply: Any, host: str) -> list[tuple[str, int]] | None:
    """The master (host, port) of each slot from a `CLUSTER SLOTS` reply of the node at `host`;
    None while a slot has no master (a failover under way)."""
    slots: list[tuple[str, int]] = [("", 0)] * _SLOTS
    for start, end, master, *_ in reply:
        for slot in range(int(start), int(end) + 1):
            slots[slot] = (str(master[0]) or host, int(master[1]))
    return slots if all(port for _, port in slots) else None


class SlotMap:
    """Which master serves each slot, read with `CLUSTER SLOTS`; shared by a wire and its blocking twins."""

    def __init__(self, seeds: Sequence[tuple[str, int]], params: WireParams) -> None:
        self.seeds, self.params = list(seeds), params
        self.slots: list[tuple[str, int]] = []
        self.stale = True
        self._refreshed = 0.0
        self._lock = asyncio.Lock()

    async def node(self, key: str) -> tuple[str, int]:
        if self.stale:
            await self.refresh()
        return self.slots[key_slot(key)]

    async def refresh(self) -> None:
        """Read the map from the first node that answers (known masters first, then the seeds)."""
        async with self._lock:
            if not self.stale and time.monotonic() - self._refreshed < 0.05:
                return  # another caller just did
            last: Exception | None = None
            for host, port in [*dict.fromkeys(self.slots), *self.seeds]:
                probe = AsyncWire(replace(self.params, host=host, port=port, connect_timeout_s=1.0, timeout_s=2.0))
                try:
                    reply = await probe.call("CLUSTER", "SLOTS")
                except (redis_errors().RedisError, OSError) as exc:
                    last = exc
                    continue
                finally:
                    await probe.close()
                slots = parse_slots(reply, host)
                if slots is None:  # a slot no master serves: failing over
                    last = redis_errors().ConnectionError("the cluster has slots no master serves")
                    continue
                self.slots, self.stale, self._refreshed = slots, False, time.monotonic()
                return
            raise redis_errors().ConnectionError(f"no node of the cluster answered CLUSTER SLOTS: {last}")


class ClusterWire:
    """`ScriptTransport` over a Redis Cluster (see the module docstring)."""

    def __init__(self, seeds: Sequence[tuple[str, int]], params: WireParams, slot_map: SlotMap | None = None) -> None:
        self.params = params
        self.map = slot_map or SlotMap(seeds, params)
        self._wires: dict[tuple[str, int], AsyncWire] = {}

    def _wire(self, node: tuple[str, int]) -> AsyncWire:
        wire = self._wires.get(node)
        if wire is None:
            wire = self._wires[node] = AsyncWire(replace(self.params, host=node[0], port=node[1]))
        return wire

    async def _routed(self, key: str, send: Callable[[AsyncWire], Awaitable[Any]], cmd: tuple[Any, ...] = (),
                      script: Script | None = None) -> Any:
        """`send` on the wire of `key`'s master, following MOVED, ASK (with `cmd`), TRYAGAIN, CLUSTERDOWN."""
        since = time.monotonic()
        moved = 0
        while moved < _RETRIES:
            wire = self._wire(await self.map.node(key))
            try:
                return await send(wire)
            except redis_errors().ResponseError as exc:
                kind, _, where = str(exc).partition(" ")
                if kind == "MOVED":
                    self.map.stale = True
                    moved += 1
                    await asyncio.sleep(0.02 * moved)
                elif kind == "ASK" and cmd:
                    return await self._asking(where.split(" ")[-1], cmd, script)
                elif kind in ("TRYAGAIN", "CLUSTERDOWN"):
                    await asyncio.sleep(_cluster_busy(kind, exc, since))
                else:
                    raise
            except (redis_errors().ConnectionError, redis_errors().TimeoutError):
                self.map.stale = True  # a master gone: the next call reads the map again
                raise
        raise redis_errors().ResponseError(f"the slot of {key!r} kept moving")

    async def _asking(self, address: str, cmd: tuple[Any, ...], script: Script | None) -> Any:
        host, _, port = address.rpartition(":")
        wire = self._wire((host, int(port)))
        for _attempt in range(2):
            _, reply = await wire.call_pipelined(("ASKING",), cmd)
            if script is not None and isinstance(reply, Exception) and is_noscript(reply):
                await wire.call("SCRIPT", "LOAD", script.source)
                continue
            if isinstance(reply, Exception):
                raise reply
            return reply
        raise redis_errors().ResponseError("NOSCRIPT after loading the script on the importing node")

    async def call(self, *cmd: Any) -> Any:
        return await self._routed(str(cmd[1]) if len(cmd) > 1 else "", lambda w: w.call(*cmd), cmd)

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        cmd = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return await self._routed(keys[0], lambda w: w.evalsha(script, keys, args), cmd, script)

    async def evalsha_packed(self, script: Script, data: bytes) -> Any:
        reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        reader.feed(data)
        cmd = tuple(reader.gets())  # ("EVALSHA", sha, numkeys, key, ...): routed by its key
        return await self._routed(cmd[3], lambda w: w.evalsha_packed(script, data), cmd, script)

    async def evalsha_stream(self, script: Script, calls: Iterable[tuple[str, Sequence[Any]]]) -> list[Any]:
        # each node's wire pipelines the calls it is given at once: one stream per node, in order
        return list(await asyncio.gather(*(self.evalsha(script, [key], args) for key, args in calls)))

    async def evalsha_replicated(self, script: Script, keys: Sequence[str], args: Sequence[Any],
                                 wait: tuple[Any, ...]) -> tuple[Any, Any]:
        """The script and a WAIT behind it on the same connection (`transport.replicated_call`)."""
        cmd = ("EVALSHA", script.sha, len(keys), *keys, *args)

        async def send(wire: AsyncWire) -> tuple[Any, Any]:
            reply, acked = await wire.call_pipelined(cmd, wait)
            if isinstance(reply, Exception) and is_noscript(reply):  # loaded on that node, then again
                await wire.call("SCRIPT", "LOAD", script.source)
                reply, acked = await wire.call_pipelined(cmd, wait)
            if isinstance(reply, redis_errors().ResponseError) and str(reply).split(" ")[0] in (
                    "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"):
                raise reply
            return reply, acked

        result: tuple[Any, Any] = await self._routed(keys[0], send)
        return result

    async def wait(self, key: str, timeout_s: float) -> bool:
        result: bool = await self._routed(key, lambda w: w.wait(key, timeout_s))
        return result

    async def wait_then_evalsha(self, wait_keys: list[str], timeout_s: float, script: Script,
                                keys: Sequence[str], args: Sequence[Any]) -> Any:
        cmd = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return await self._routed(keys[0], lambda w: w.wait_then_evalsha(wait_keys, timeout_s, script, keys, args),
                                  cmd, script)

    def blocking(self) -> ClusterWire:
        """Connections of its own for blocking waits, per node, on the same slot map."""
        return ClusterWire(self.map.seeds, self.params, self.map)

    async def close(self) -> None:
        for wire in self._wires.values():
            await wire.close()


def cluster_wire_of(client: Any, timeout_s: float = 30.0) -> ClusterWire | None:
    """The lean wire for a redis-py `RedisCluster` (None for TLS, which it does not speak)."""
    kw = client.connection_kwargs
    if kw.get("ssl") or "SSL" in kw.get("connection_class", type(None)).__name__:
        return None
    seeds = [(node.host, int(node.port)) for node in client.nodes_manager.startup_nodes.values()]
    params = WireParams(username=kw.get("username"), password=kw.get("password"),
                        connect_timeout_s=float(kw.get("socket_connect_timeout") or 5.0), timeout_s=timeout_s)
    return ClusterWire(seeds, params)




class SyncClusterWire:
    """The blocking twin of `ClusterWire` (`SyncScriptTransport`, for `SyncClient`): one `SyncWire`
    per master, each call routed by its key's slot; the map is read again on MOVED and after a
    connection error. ASK, TRYAGAIN and CLUSTERDOWN (a slot migrating, a failover) are retried after
    a short pause until the slot has its owner: the call did not run."""

    def __init__(self, seeds: Sequence[tuple[str, int]], params: WireParams, spin_us: float = 0.0,
                 quiet_threads: int = 1) -> None:
        self.seeds, self.params = list(seeds), params
        self._spin = (spin_us, quiet_threads)
        self._slots: list[tuple[str, int]] = []
        self._wires: dict[tuple[str, int], SyncWire] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        last: Exception | None = None
        for host, port in [*dict.fromkeys(self._slots), *self.seeds]:
            probe = SyncWire(replace(self.params, host=host, port=port, connect_timeout_s=1.0, timeout_s=2.0),
                             spin_us=0)
            try:
                slots = parse_slots(probe.call("CLUSTER", "SLOTS"), host)
            except (redis_errors().RedisError, OSError) as exc:
                last = exc
                continue
            finally:
                probe.close()
            if slots is not None:
                self._slots = slots
                return
            last = redis_errors().ConnectionError("the cluster has slots no master serves")
        raise redis_errors().ConnectionError(f"no node of the cluster answered CLUSTER SLOTS: {last}")

    def _wire(self, key: str) -> SyncWire:
        with self._lock:
            if not self._slots:
                self._refresh()
            node = self._slots[key_slot(key)]
            wire = self._wires.get(node)
            if wire is None:
                wire = self._wires[node] = SyncWire(replace(self.params, host=node[0], port=node[1]), *self._spin)
            return wire

    def _routed(self, key: str, send: Callable[[SyncWire], Any]) -> Any:
        since = time.monotonic()
        moved = 0
        while moved < _RETRIES * 4:
            try:
                return send(self._wire(key))
            except redis_errors().ResponseError as exc:
                kind = str(exc).split(" ", 1)[0]
                if kind in ("MOVED", "ASK"):
                    if kind == "MOVED":
                        self._slots = []
                    moved += 1
                    time.sleep(0.02 * moved)
                elif kind in ("TRYAGAIN", "CLUSTERDOWN"):
                    time.sleep(_cluster_busy(kind, exc, since))
                else:
                    raise
            except (redis_errors().ConnectionError, redis_errors().TimeoutError):
                self._slots = []  # a master gone: the next call reads the map again
                raise
        raise redis_errors().ResponseError(f"the slot of {key!r} kept moving")

    def call(self, *cmd: Any) -> Any:
        return self._routed(str(cmd[1]) if len(cmd) > 1 else "", lambda w: w.call(*cmd))

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._routed(keys[0], lambda w: w.evalsha(script, keys, args))

    def evalsha_packed(self, script: Script, data: bytes) -> Any:
        reader = hiredis.Reader(encoding="utf-8", errors="surrogateescape")
        reader.feed(data)
        key = reader.gets()[3]  # EVALSHA sha numkeys key ...: routed by its key
        return self._routed(key, lambda w: w.evalsha_packed(script, data))

    def close(self) -> None:
        for wire in self._wires.values():
            wire.close()


__all__ = ["ClusterWire", "SlotMap", "SyncClusterWire", "cluster_wire_of", "key_slot"]

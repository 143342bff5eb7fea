"""Blocking reads for quick CLI commands: the read models run over a `SyncWire`, without
redis-py or an event loop.

The read models (`supervisor.engine.broker.read_job`, `supervisor.operators.admin.health`, ...) are `async def`
functions over a few calls of redis-py's asyncio client. `SyncReads` offers those calls, with
the replies shaped as that client (`decode_responses=True`) shapes them, over a blocking
`SyncWire`: its coroutines never suspend, so `run_blocking` runs a read model to its end with
one `send`. One copy of each read model serves the API (redis-py, asyncio) and the CLI, which
starts without importing redis-py (~0.18 s of CPU).

Only the calls those read models make are here; a read model that needs another adds it.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from supervisor.engine.wire import Script, SyncWire, WireParams

T = TypeVar("T")


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine whose awaits never suspend (blocking I/O, as `SyncReads`') to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the read waited on an event loop: run it under asyncio instead")


class SyncReads:
    """The subset of redis-py's asyncio client the read models use, over one blocking `SyncWire`.

    Errors are redis-py's types, as the wire raises them (ConnectionError, TimeoutError,
    ResponseError), so a read model's `except` clauses work the same over both.
    """

    def __init__(self, params: WireParams) -> None:
        self.wire = SyncWire(params, spin_us=0)  # a handful of reads: no CPU spent polling

    async def ping(self) -> bool:
        pong: bool = self.wire.call("PING") == "PONG"
        return pong

    async def hgetall(self, key: str) -> dict[str, str]:
        flat = self.wire.call("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def smembers(self, key: str) -> set[str]:
        return set(self.wire.call("SMEMBERS", key))

    async def zcard(self, key: str) -> int:
        return int(self.wire.call("ZCARD", key))

    async def mget(self, keys: list[str]) -> list[str | None]:
        return list(self.wire.call("MGET", *keys))

    async def zrangebyscore(self, key: str, min: float | str, max: float | str,  # noqa: A002 (redis-py's names)
                            withscores: bool = False) -> list[Any]:
        if not withscores:
            return list(self.wire.call("ZRANGEBYSCORE", key, min, max))
        flat = self.wire.call("ZRANGEBYSCORE", key, min, max, "WITHSCORES")
        return [(member, float(score)) for member, score in zip(flat[::2], flat[1::2], strict=True)]

    def register_script(self, source: str) -> _Script:
        return _Script(self.wire, Script(source))

    def pipeline(self, transaction: bool = False) -> _Pipeline:  # noqa: ARG002  (redis-py's signature)
        return _Pipeline(self)

    async def aclose(self) -> None:
        self.wire.close()


class _Script:
    """`register_script`'s callable: EVALSHA, loading the script on NOSCRIPT."""

    def __init__(self, wire: SyncWire, script: Script) -> None:
        self.wire, self.script = wire, script

    async def __call__(self, keys: list[str] | None = None, args: list[Any] | None = None) -> Any:
        return self.wire.evalsha(self.script, list(keys or ()), list(args or ()))


class _Pipeline:
    """`pipeline()`: the calls queued, then made one after another by `execute` (a CLI reads a
    few keys of a local Redis: a round trip each is nothing next to its start-up)."""

    def __init__(self, reads: SyncReads) -> None:
        self.reads = reads
        self.calls: list[Coroutine[Any, Any, Any]] = []

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for call in self.calls:
            call.close()  # not executed: never awaited

    def zcard(self, key: str) -> _Pipeline:
        self.calls.append(self.reads.zcard(key))
        return self

    async def execute(self) -> list[Any]:
        calls, self.calls = self.calls, []
        return [await call for call in calls]


__all__ = ["SyncReads", "run_blocking"]

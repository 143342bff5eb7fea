"""The releaser: delivers the release notices that settled jobs leave in their type's outbox.

A job that others wait on (dependents, a batch) writes a notice `<id> <state>` into its type's
outbox in the same script as its last transition (lua/lib.lua `notify_settled`), and publishes the
type's prefix on `js:outbox`. Each daemon runs one releaser: it hears the channel and drains that
outbox at once, and every `sweep_s` it drains every type's outbox anyway (a notice whose message
was lost, or left by a daemon that was SIGKILLed while delivering it: a claimed notice is leased,
`supervisor.engine.deps.NOTICE_LEASE_MS`, and another daemon takes it once the lease lapses).

Delivering a notice: settle each dependent (one script in its slot), settle the job's batch (and
enqueue the batch's callbacks when it is done), then remove the notice. Every step is idempotent,
so a delivery cut short is simply done again. Every `janitor_s` the releaser also cancels waiting
jobs whose producer died before opening their gate, and fires batches left due.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import structlog

from supervisor.engine import deps, keys
from supervisor.errors import SupervisorError
from supervisor.producers import workflows

if TYPE_CHECKING:
    from supervisor.producers.client import Client

log = structlog.get_logger(__name__)

#: A waiting job whose gate is still shut after this long was abandoned by its producer (ms).
ABANDONED_AFTER_MS = 10 * 60_000
_CHUNK = 500  # notices claimed (and delivered together) per call


def _type_of(prefix: str) -> str | None:
    """The type name in a queue prefix `js:{tag}:<name>:` (None: not one)."""
    head, sep, rest = prefix.partition("}:")
    if not sep or not head.startswith(f"{keys.PREFIX}:{{") or not rest.endswith(":"):
        return None
    return rest[:-1]


class Releaser:
    """Delivers notices (see the module docstring) through the daemon's `Client`."""

    def __init__(self, client: Client, *, sweep_s: float = 2.0, janitor_s: float = 30.0) -> None:
        self.client = client
        self.transport = client.broker.transport
        self.sweep_s, self.janitor_s = sweep_s, janitor_s

    async def run(self) -> None:
        """Until cancelled: drain outboxes when told, and sweep them all every `sweep_s`."""
        listener = asyncio.create_task(self._listen())
        try:
            last_janitor = 0.0
            loop = asyncio.get_running_loop()
            while True:
                try:
                    await self.sweep(janitor=loop.time() - last_janitor >= self.janitor_s)
                    if loop.time() - last_janitor >= self.janitor_s:
                        last_janitor = loop.time()
                except Exception as exc:  # noqa: BLE001 (Redis down, a bad entry: logged, the next sweep retries)
                    log.warning("releaser.sweep_failed", error=str(exc))
                await asyncio.sleep(self.sweep_s * random.uniform(0.8, 1.2))  # noqa: S311  (jitter, not crypto)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def _listen(self) -> None:
        """Drain a type's outbox as soon as a script says it wrote a notice there."""
        while True:
            pubsub = self.client.broker.redis.pubsub()
            try:
                await pubsub.subscribe(keys.OUTBOX_CHANNEL)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    names = set()
                    while msg is not None:  # what arrived meanwhile: one drain per type
                        name = _type_of(str(msg.get("data", "")))
                        if name is not None:
                            names.add(name)
                        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
                    for name in names:
                        await self.drain(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (Redis down: the sweep covers it; listen again)
                log.warning("releaser.listen_failed", error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def sweep(self, *, janitor: bool = False) -> None:
        names = await self.client.broker.type_names()
        # one pipelined EXISTS per key first: most outboxes and waiting sets are empty, and each
        # claim or sweep is a script call
        outboxes = await self._exist(keys.queue_prefix(n) + "outbox" for n in names)
        waiting = await self._exist(keys.index_key(n, "waiting") for n in names) if janitor else [0] * len(names)
        for name, has_notices, has_waiting in zip(names, outboxes, waiting, strict=True):
            if has_notices:
                await self.drain(name)
            if has_waiting and (n := await deps.sweep_waiting(self.transport, name, ABANDONED_AFTER_MS)):
                log.warning("releaser.abandoned_cancelled", job_name=name, jobs=n)
        if janitor:
            await self._fire_due_batches()

    async def _exist(self, wanted: Iterable[str]) -> list[int]:
        """EXISTS of each key, concurrently (the wire pipelines them)."""
        return list(await asyncio.gather(*(self.transport.call("EXISTS", key) for key in wanted)))

    async def drain(self, name: str) -> int:
        """Deliver every notice of `name`'s outbox that no one else is delivering; how many."""
        done = 0
        while True:
            notices = await deps.claim_notices(self.transport, name, _CHUNK)
            if not notices:
                return done
            try:
                await self.deliver(name, notices)
            except (SupervisorError, ValueError) as exc:  # a bad entry: logged, retried after its lease
                log.warning("releaser.notices_failed", job_name=name, notices=len(notices), error=str(exc))
                return done
            done += len(notices)

    async def deliver(self, name: str, notices: list[tuple[str, str, bool]]) -> None:
        """Settle the dependents of each notice (concurrently) and each batch (one call per batch),
        then remove the notices: a delivery cut short anywhere is simply done again."""
        by_batch: dict[str, list[str]] = {}
        linked = []
        for notice, batch, has_dependents in notices:
            job_id, _, state = notice.partition(" ")
            if has_dependents:
                linked.append(self._release_dependents(job_id, state))
            if batch:
                by_batch.setdefault(batch, []).extend((job_id, state))
        await asyncio.gather(*linked)
        for batch, pairs in by_batch.items():
            reply = await deps.batch_op(self.transport, batch, "settle", *pairs)
            if reply[0] == "fire":
                await workflows.fire(self.client, batch, reply)
        await deps.notices_done(self.transport, name, [n for n, _b, _d in notices])

    async def _release_dependents(self, job_id: str, state: str) -> None:
        async for child, child_name in deps.dependents(self.transport, job_id):
            await deps.settle(self.transport, child, child_name, job_id, state)

    async def _fire_due_batches(self) -> None:
        """Batches whose callbacks were due when the process firing them died: fired now."""
        batch_ids = cast(list[str], await self.client.broker.redis.zrange(deps.BATCH_INDEX, 0, -1))
        states = await asyncio.gather(*(self.transport.call("HGET", deps.batch_prefix(b) + "rec", "state")
                                        for b in batch_ids))  # pipelined: a batch is kept 30 days
        for batch_id, state in zip(batch_ids, states, strict=True):
            if state in ("closed", "firing"):
                reply: list[Any] = await deps.batch_op(self.transport, batch_id, "close")
                if reply[0] == "fire":
                    await workflows.fire(self.client, batch_id, reply)


__all__ = ["Releaser"]

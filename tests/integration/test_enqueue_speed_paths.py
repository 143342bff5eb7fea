"""The one-at-a-time enqueue fast path (a job without options of a plain type) and the paths
around it: what it stores must be what the general path stores, and every job the fast path
may not take (options, type defaults, unknown types, tracing) must still take the general one.
Real Redis, no mocks."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import hiredis
import pytest
import redis as syncredis
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from pydantic import BaseModel
from redis.exceptions import ResponseError

from supervisor.engine import keys, serving
from supervisor.engine.broker import Broker
from supervisor.engine.wire import PackedCall, Script, SyncWire, params_of
from supervisor.errors import InvalidPayload, UnknownJobType
from supervisor.observability.telemetry import Tracing
from supervisor.operators.admin import job_fields
from supervisor.producers.client import Client, EnqueueRequest, SyncClient
from tests.conftest import memory_tracing

PLAIN = "speed.plain"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
RECORD_FIELDS = {"name", "state", "payload", "score", "created", "ctx"}


def _meta(name: str, schema: dict[str, Any] | None = None, **policy: Any) -> dict[str, str]:
    return {"name": name, "schema": json.dumps(schema or {}), "source": "tests",
            "policy": json.dumps({"runtime": "inprocess", "concurrency": 1, **policy})}


@pytest.fixture
def r(redis_url: str) -> Iterator[syncredis.Redis]:
    client = syncredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _publish(r: syncredis.Redis, name: str, schema: dict[str, Any] | None = None, **policy: Any) -> None:
    """Publish a type as a daemon serving it does: its metadata, and a live instance serving it."""
    r.hset(keys.meta_key(name), mapping=_meta(name, schema, **policy))
    r.sadd(keys.TYPES_KEY, name)
    r.eval(serving.SERVED.source, 1, serving.served_key(name), "tests", "serve", 600_000, "")


async def _publish_async(redis: aioredis.Redis, name: str) -> None:
    await Broker(redis).publish_type(name, _meta(name))
    await serving.announce(redis, "tests", 600_000, serve=[name])


def _record(r: syncredis.Redis, job_id: str) -> dict[str, str]:
    return r.hgetall(keys.job_key(job_id))


def _events(r: syncredis.Redis, name: str) -> list[tuple[str, dict[str, str]]]:
    """Every job's event, a batch's entry read as one event per job (admin.job_fields)."""
    return [(sid, one) for sid, fields in r.xrange(keys.events_key(name)) for one in job_fields(fields)]


def _assert_fresh_record(r: syncredis.Redis, job_id: str, name: str, payload: Any, before_ms: int) -> None:
    rec = _record(r, job_id)
    assert set(rec) == RECORD_FIELDS, rec  # a plain job: no priority, deadline, key or idempotency fields
    assert rec["name"] == name and rec["state"] == "pending"
    assert json.loads(rec["payload"]) == payload
    assert before_ms - 1000 <= int(rec["created"]) <= int(time.time() * 1000) + 1000
    ctx = json.loads(rec["ctx"])
    assert set(ctx) == {"request_id", "trace_id", "traceparent"}
    assert ctx["traceparent"].startswith(f"00-{ctx['trace_id']}-") and ctx["traceparent"].endswith("-01")
    assert r.zscore(keys.index_key(name, "ready"), job_id) == float(rec["score"])


def test_sync_plain_enqueue_stores_the_record_event_and_order(r: syncredis.Redis, redis_url: str) -> None:
    # Given a published type without defaults
    _publish(r, PLAIN, SCHEMA)
    before = int(time.time() * 1000)
    # When three jobs are queued one at a time (the first one reads the type; the others take the fast path)
    with SyncClient(redis_url) as client:
        refs = [client.enqueue(PLAIN, {"n": i}) for i in range(3)]
        outcome = client.submit(PLAIN, {"n": 3})
        job = client.get(refs[1].id)
    # Then each has its record, in FIFO order in the ready set, with one `enqueued` event each
    assert all(ref.name == PLAIN and not ref.existing for ref in refs)
    assert outcome.outcome == "accepted" and outcome.job_id and outcome.key is None
    ids = [ref.id for ref in refs] + [outcome.job_id]
    for i, job_id in enumerate(ids):
        assert keys.tag_from_id(job_id) == keys.tag_for(PLAIN)
        _assert_fresh_record(r, job_id, PLAIN, {"n": i}, before)
    assert r.zrange(keys.index_key(PLAIN, "ready"), 0, -1) == ids
    ctxs = [json.loads(_record(r, i)["ctx"]) for i in ids]  # one random draw per job, none shared
    drawn = [i.split("-")[1] for i in ids] + [c["request_id"] for c in ctxs] + [c["trace_id"] for c in ctxs]
    assert len(set(drawn)) == len(drawn)
    events = _events(r, PLAIN)
    assert [e[1] for e in events] == [{"event": "enqueued", "id": i, "state": "pending", "attempt": "0",
                                       "request_id": c["request_id"], "trace_id": c["trace_id"]}
                                      for i, c in zip(ids, ctxs, strict=True)]
    # `created` is the event's clock: the ms part of its stream id
    assert [int(_record(r, i)["created"]) for i in ids] == [int(e[0].split("-")[0]) for e in events]
    assert job.state.value == "pending" and job.payload == {"n": 1} and job.created is not None
    assert r.zrange(keys.index_key(PLAIN, "marker"), 0, -1) == ["m"]


async def test_async_plain_enqueue_matches_the_batch_path(redis: aioredis.Redis, redis_url: str) -> None:
    # Given a published type without defaults
    await _publish_async(redis, PLAIN)
    async with Client(redis_url) as client:
        # When one job goes through the fast path and one through enqueue_many
        await client.enqueue(PLAIN, {"warm": True})  # reads the type's metadata
        one = await client.enqueue(PLAIN, {"x": 1})
        sub = await client.submit(PLAIN, {"x": 2})
        (many,) = await client.enqueue_many([EnqueueRequest(PLAIN, {"x": 3})])
        # Then both records have the same fields and the ready set keeps their order
        one_rec, many_rec = await redis.hgetall(keys.job_key(one.id)), await redis.hgetall(keys.job_key(many.id))
        assert set(one_rec) == set(many_rec) == RECORD_FIELDS
        assert sub.outcome == "accepted"
        ready = await redis.zrange(keys.index_key(PLAIN, "ready"), 0, -1)
        assert ready[-3:] == [one.id, sub.job_id, many.id]
        assert (await client.get(one.id)).payload == {"x": 1}


async def test_a_plain_job_is_claimed_with_its_payload_context_and_creation_time(
        redis: aioredis.Redis, redis_url: str) -> None:
    # Given a job queued by the fast path
    broker = Broker(redis)
    await _publish_async(redis, PLAIN)
    async with Client(redis_url) as client:
        await client.enqueue(PLAIN, {"warm": True})
        ref = await client.enqueue(PLAIN, {"x": 1})
    # When a worker claims the type's jobs
    batch = await broker.claim(PLAIN, "instance-1", 10, 30_000, 3)
    # Then it gets the job as the daemon expects it
    claimed = {j.id: j for j in batch.jobs}
    job = claimed[ref.id]
    assert json.loads(job.payload_json) == {"x": 1} and job.attempt == 1
    assert json.loads(job.context_json)["traceparent"].startswith("00-")
    assert abs(job.created_ms - batch.now_ms) < 10_000
    assert (await redis.hget(keys.job_key(ref.id), "state")) == "active"
    await broker.close()


def test_sync_enqueue_with_options_takes_the_general_path(r: syncredis.Redis, redis_url: str) -> None:
    # Given a plain type
    _publish(r, PLAIN)
    with SyncClient(redis_url) as client:
        client.enqueue(PLAIN, {})
        # When jobs carry options
        high = client.enqueue(PLAIN, {"p": 1}, priority=5)
        later = client.enqueue(PLAIN, {"d": 1}, delay=3600)
        first = client.enqueue(PLAIN, {"i": 1}, idempotency_key="order-7")
        again = client.enqueue(PLAIN, {"i": 2}, idempotency_key="order-7")
        again_outcome = client.submit(PLAIN, {"i": 3}, idempotency_key="order-7")
        keyed = client.submit(PLAIN, {"k": 1}, concurrency_key="tenant-1", deadline=60)
        child = client.enqueue(PLAIN, {"c": 1}, parent=high.id, context={"request_id": "req-1"})
    # Then each option shows in the record and the indexes
    assert _record(r, high.id)["priority"] == "5"
    assert r.zrange(keys.index_key(PLAIN, "ready"), 0, 0) == [high.id]  # priority first
    assert r.zscore(keys.index_key(PLAIN, "sched"), later.id) is not None
    assert again.id == first.id and again.existing and not first.existing
    assert again_outcome.outcome == "coalesced" and again_outcome.existing == first.id
    assert again_outcome.reason == "idempotency-key"
    assert _record(r, first.id)["payload"] == '{"i":1}'
    assert keyed.outcome == "accepted" and keyed.key == "tenant-1"
    keyed_rec = _record(r, keyed.job_id or "")
    assert keyed_rec["ckey"] == "tenant-1" and "deadline" in keyed_rec
    child_rec = _record(r, child.id)
    assert child_rec["parent"] == high.id and json.loads(child_rec["ctx"])["request_id"] == "req-1"


def test_type_defaults_keep_jobs_off_the_fast_path(r: syncredis.Redis, redis_url: str) -> None:
    # Given types whose policy sets a default priority, deadline or key policy
    _publish(r, "speed.urgent", priority=7)
    _publish(r, "speed.expiring", deadline=30)
    _publish(r, "speed.keyed", key_concurrency={"key": ["/tenant"], "max_active": 1})
    with SyncClient(redis_url) as client:
        # When jobs without options are queued (twice: the second one finds the type cached)
        urgent = [client.enqueue("speed.urgent", {}) for _ in range(2)]
        expiring = [client.enqueue("speed.expiring", {}) for _ in range(2)]
        keyed = [client.submit("speed.keyed", {"tenant": t}) for t in ("t1", "t2")]
    # Then every one got its type's defaults
    assert all(_record(r, ref.id).get("priority") == "7" for ref in urgent)
    assert all("deadline" in _record(r, ref.id) for ref in expiring)
    assert [(o.outcome, o.key) for o in keyed] == [("accepted", "t1"), ("accepted", "t2")]
    assert [_record(r, o.job_id or "").get("ckey") for o in keyed] == ["t1", "t2"]


def test_unknown_types_are_refused_or_listed_by_the_sync_client(r: syncredis.Redis, redis_url: str) -> None:
    # Given no instance published "speed.nobody"
    with SyncClient(redis_url) as client:
        # When it is queued without allow_unknown, twice
        for _ in range(2):
            with pytest.raises(UnknownJobType, match=r"speed.nobody"):
                client.enqueue("speed.nobody", {})
        # Then nothing is queued; with allow_unknown it is, and the type is listed
        assert r.zcard(keys.index_key("speed.nobody", "ready")) == 0
        refs = [client.enqueue("speed.nobody", {"a": i}, allow_unknown=True) for i in range(2)]
    with SyncClient(redis_url, allow_unknown=True) as lenient:
        refs.append(lenient.enqueue("speed.nobody", {"a": 2}))
    assert r.zrange(keys.index_key("speed.nobody", "ready"), 0, -1) == [ref.id for ref in refs]
    assert r.sismember(keys.TYPES_KEY, "speed.nobody")



def _meta_reads(r: syncredis.Redis) -> int:
    # One read of a type = one script call with two HGETALLs: its metadata, and who serves it.
    return int(r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)) // 2


async def test_an_unpublished_type_is_looked_up_once_per_five_seconds_not_per_job(
        r: syncredis.Redis, redis_url: str) -> None:
    # Given a type no instance published, queued with allow_unknown by both clients
    before = _meta_reads(r)
    with SyncClient(redis_url, allow_unknown=True) as sync:
        sync_refs = [sync.enqueue("speed.unpublished", {"i": i}) for i in range(20)]
        # Then its metadata was read once, not once per job, and every job is queued
        assert _meta_reads(r) - before == 1
        # And without allow_unknown it is still refused from the cached answer
        with pytest.raises(UnknownJobType, match=r"speed.unpublished"):
            sync.enqueue("speed.unpublished", {}, allow_unknown=False)
    async with Client(redis_url, allow_unknown=True) as client:
        refs = [await client.enqueue("speed.unpublished", {"i": i}) for i in range(20)]
        with pytest.raises(UnknownJobType, match=r"speed.unpublished"):
            await client.enqueue("speed.unpublished", {}, allow_unknown=False)
    assert _meta_reads(r) - before == 2
    queued = r.zrange(keys.index_key("speed.unpublished", "ready"), 0, -1)
    assert queued == [ref.id for ref in sync_refs + refs]

class Order(BaseModel):
    n: int


def _bad_payloads() -> list[Any]:
    cyclic: dict[str, Any] = {"n": 1}
    cyclic["self"] = cyclic
    return [{"n": "x"}, {}, '{"n": 1}', cyclic]


def _assert_refusals(r: syncredis.Redis, errors: list[str]) -> None:
    assert "'x' is not of type 'integer'" in errors[0]
    assert "'n' is a required property" in errors[1]
    assert errors[2] == "payload: '{\"n\": 1}' is not of type 'object'"  # JSON text is validated as text, as before
    assert errors[3] == "payload is not JSON: it contains itself, or nests too deep"
    payloads = [json.loads(_record(r, i)["payload"]) for i in r.zrange(keys.index_key(PLAIN, "ready"), 0, -1)]
    assert payloads == [{"n": 0}, {"n": 5}]  # nothing refused was queued


def test_the_sync_fast_path_validates_like_the_general_path(r: syncredis.Redis, redis_url: str) -> None:
    # Given a plain type with a schema, cached by the client
    _publish(r, PLAIN, SCHEMA)
    errors = []
    with SyncClient(redis_url) as client:
        client.enqueue(PLAIN, {"n": 0})
        # When bad payloads are queued
        for bad in _bad_payloads():
            with pytest.raises(InvalidPayload) as info:
                client.enqueue(PLAIN, bad)
            errors.append(info.value.detail)
        client.enqueue(PLAIN, Order(n=5))  # a model is sent as its JSON-mode dump
    # Then each refusal names the problem
    _assert_refusals(r, errors)


async def test_the_async_fast_path_validates_like_the_general_path(r: syncredis.Redis, redis_url: str) -> None:
    _publish(r, PLAIN, SCHEMA)
    errors = []
    async with Client(redis_url) as client:
        await client.enqueue(PLAIN, {"n": 0})
        for bad in _bad_payloads():
            with pytest.raises(InvalidPayload) as info:
                await client.enqueue(PLAIN, bad)
            errors.append(info.value.detail)
        await client.enqueue(PLAIN, Order(n=5))
    _assert_refusals(r, errors)


def test_payload_text_and_values_without_schema(r: syncredis.Redis, redis_url: str) -> None:
    # Given a plain type without a schema
    _publish(r, PLAIN)
    with SyncClient(redis_url) as client:
        client.enqueue(PLAIN, {})
        # Then text must be JSON, is stored as given, and values JSON lacks become their str()
        for bad in ('{"n": 1', "nope"):
            with pytest.raises(InvalidPayload, match="payload is not JSON"):
                client.enqueue(PLAIN, bad)
        text = client.enqueue(PLAIN, '{"n": 6}')
        odd = client.enqueue(PLAIN, {"on": date(2024, 1, 2), "é": 1.5})
    assert _record(r, text.id)["payload"] == '{"n": 6}'
    assert _record(r, odd.id)["payload"] == '{"on":"2024-01-02","\\u00e9":1.5}'


def test_a_fast_path_enqueue_wakes_an_idle_daemon(r: syncredis.Redis, redis_url: str) -> None:
    # Given an idle daemon's wait on the type's marker (and a producer that has the type cached)
    _publish(r, PLAIN)
    marker = keys.index_key(PLAIN, "marker")
    with SyncClient(redis_url) as client:
        client.enqueue(PLAIN, {})
        r.delete(marker)
        waiter = syncredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            started = time.monotonic()
            woke: list[Any] = []
            t = threading.Thread(target=lambda: woke.append(waiter.bzpopmin(marker, timeout=5)))
            t.start()
            time.sleep(0.2)  # the BZPOPMIN is blocked before the enqueue
            # When one job is queued
            client.enqueue(PLAIN, {"x": 1})
            t.join(6)
        finally:
            waiter.close()
        # Then the wait ends at once, and the marker is back only after the next enqueue
        assert woke and woke[0] is not None and time.monotonic() - started < 3
        assert r.exists(marker) == 0
        client.enqueue(PLAIN, {"x": 2})
        client.enqueue(PLAIN, {"x": 3})
        assert r.zrange(marker, 0, -1, withscores=True) == [("m", 0.0)]


def test_a_forgotten_script_is_loaded_again_by_both_clients(r: syncredis.Redis, redis_url: str) -> None:
    _publish(r, PLAIN)
    with SyncClient(redis_url) as client:
        client.enqueue(PLAIN, {})
        r.script_flush()  # as after a Redis restart
        ref = client.enqueue(PLAIN, {"after": "flush"})
    assert _record(r, ref.id)["state"] == "pending"

    async def go() -> str:
        async with Client(redis_url) as aclient:
            await aclient.enqueue(PLAIN, {})
            r.script_flush()
            return (await aclient.enqueue(PLAIN, {"after": "flush"})).id

    assert _record(r, asyncio.run(go()))["state"] == "pending"


def test_tracing_on_takes_the_general_path_with_a_span(r: syncredis.Redis, redis_url: str) -> None:
    # Given a plain type the client has cached, then tracing turned on
    _publish(r, PLAIN)
    exporter = InMemorySpanExporter()
    tracing = Tracing()
    with SyncClient(redis_url, tracing=tracing) as client:
        client.enqueue(PLAIN, {})
        tracing.install(memory_tracing(exporter).provider)
        # When a job without options is queued
        ref = client.enqueue(PLAIN, {"traced": True})
    # Then it has its producer span, and the job carries that span's context
    (span,) = [s for s in exporter.get_finished_spans() if s.name == f"enqueue {PLAIN}"]
    ctx = json.loads(_record(r, ref.id)["ctx"])
    assert ctx["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")


def test_packed_call_packs_like_hiredis() -> None:
    script = Script("return 1")
    call = PackedCall(script, ["k:ready"], ["k:", "j:", "t", 1, 3], tail=3)
    tail = ("abc-1", '{"é":"ü"}', "")
    assert call.pack(*tail) == hiredis.pack_command(("EVALSHA", script.sha, 1, "k:ready", "k:", "j:", "t", 1, 3, *tail))
    with pytest.raises(ValueError, match="3 more arguments"):
        call.pack("only one")


def test_sync_wire_reports_refused_credentials_and_selects_the_database(r: syncredis.Redis, redis_url: str) -> None:
    # Given a user with a password, and the SyncClient's wire built from URLs with right and wrong ones
    r.execute_command("ACL", "SETUSER", "speed-user", "on", ">s3cret", "~*", "+@all")
    try:
        base = redis_url.rsplit("/", 1)[0].replace("redis://", "redis://speed-user:s3cret@")
        good = params_of(syncredis.Redis.from_url(base + "/2"))
        bad = params_of(syncredis.Redis.from_url(base.replace("s3cret", "wrong") + "/2"))
        assert good is not None and bad is not None
        # When each connects
        wire, refused = SyncWire(good), SyncWire(bad)
        wire.call("SET", "where", "db2")
        # Then the refusal is Redis's own answer, not a later NOAUTH, and SELECT took effect
        with pytest.raises(ResponseError, match=r"WRONGPASS|invalid"):
            refused.call("PING")
        wire.close()
        refused.close()
        db2 = syncredis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/2", decode_responses=True)
        assert db2.get("where") == "db2"
        db2.flushdb()
        db2.close()
    finally:
        r.execute_command("ACL", "DELUSER", "speed-user")


def test_with_tracing_off_the_fast_path_continues_the_callers_trace(r: syncredis.Redis, redis_url: str) -> None:
    # Given a plain type, no tracer, and a caller inside a span it received (a propagated context)
    _publish(r, PLAIN)
    caller = SpanContext(trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7, is_remote=True,
                         trace_flags=TraceFlags(1))
    with SyncClient(redis_url) as client:
        client.enqueue(PLAIN, {})
        # When a job without options is queued inside that span, and one outside it
        with trace.use_span(NonRecordingSpan(caller)):
            inside = client.enqueue(PLAIN, {"in": True})
        outside = client.enqueue(PLAIN, {"in": False})
    # Then the first goes on with the caller's trace (a span id of its own), the second starts one
    ctx_in, ctx_out = (json.loads(_record(r, ref.id)["ctx"]) for ref in (inside, outside))
    assert ctx_in["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ctx_in["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert not ctx_in["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7")
    assert ctx_out["trace_id"] != ctx_in["trace_id"]


async def test_bulk_plain_jobs_are_stored_in_order_with_events_and_validated_first(
        r: syncredis.Redis, redis_url: str) -> None:
    # Given two published plain types, one with a schema
    _publish(r, PLAIN, SCHEMA)
    _publish(r, "speed.other")
    before = int(time.time() * 1000)
    async with Client(redis_url) as client:
        # When 450 jobs of both types are queued in one call (more than one chunk per type)
        reqs = [EnqueueRequest(PLAIN if i % 3 else "speed.other", {"n": i}) for i in range(450)]
        refs = await client.enqueue_many(reqs)
        # Then every job is queued once, in the order given per type, with its record and event
        assert [ref.name for ref in refs] == [q.name for q in reqs] and len({ref.id for ref in refs}) == 450
        for name in (PLAIN, "speed.other"):
            mine = [ref.id for ref in refs if ref.name == name]
            assert r.zrange(keys.index_key(name, "ready"), 0, -1) == mine
            assert [f["id"] for _, f in _events(r, name)] == mine
        for ref, req in zip(refs[:5], reqs, strict=False):
            _assert_fresh_record(r, ref.id, ref.name, req.payload, before)
        # And one bad payload refuses the whole call before anything is queued
        with pytest.raises(InvalidPayload, match="'n'"):
            await client.enqueue_many([EnqueueRequest(PLAIN, {"n": 1}), EnqueueRequest(PLAIN, {"m": 2})])
        assert r.zcard(keys.index_key(PLAIN, "ready")) == 300


async def test_bulk_plain_jobs_continue_the_callers_trace_or_start_one_each(
        r: syncredis.Redis, redis_url: str) -> None:
    # Given a plain type, no tracer, and a caller inside a span it received
    _publish(r, PLAIN)
    caller = SpanContext(trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736, span_id=0x00F067AA0BA902B7, is_remote=True,
                         trace_flags=TraceFlags(1))
    async with Client(redis_url) as client:
        # When a batch is queued inside that span, and one outside it
        with trace.use_span(NonRecordingSpan(caller)):
            inside = await client.enqueue_many([(PLAIN, {"n": i}) for i in range(3)])
        outside = await client.enqueue_many([(PLAIN, {"n": i}) for i in range(3)])
    # Then every job of the first goes on with the caller's trace; each of the second starts its own
    ctx_in = [json.loads(_record(r, ref.id)["ctx"]) for ref in inside]
    ctx_out = [json.loads(_record(r, ref.id)["ctx"]) for ref in outside]
    assert {c["trace_id"] for c in ctx_in} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    assert len({c["trace_id"] for c in ctx_out} | {"4bf92f3577b34da6a3ce929d0e0e4736"}) == 4
    assert all(c["traceparent"] == f"00-{c['trace_id']}-{c['traceparent'][36:52]}-01" for c in ctx_out)

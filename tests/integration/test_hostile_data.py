"""Hostile data in Redis never breaks a connection or an answer.

Every kind of key of one job type (the job record's fields, its Redis type, the ready,
sched and active sets, idempotency keys, the types registry and the type's metadata,
presence, schedule state, the event stream, a job's log) is written with random bytes
and forged structures (hypothesis) while a real daemon serves the type. After each
example the client, the CLI's read models and the API answer: a record job-supervisor
did not write is `CorruptRecord` (code `record_corrupt`, HTTP 409, the key named),
never a 500 or a raw decode error. Then 100 normal jobs complete, and the daemon logged
no dropped connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as syncredis
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from supervisor.daemon.presence import INSTANCES_KEY, instance_key
from supervisor.daemon.scheduler import SPECS_KEY, last_fired_key
from supervisor.engine import keys
from supervisor.engine.states import FINISHED, State
from supervisor.errors import CorruptRecord, JobNotFound
from supervisor.producers.client import SyncClient
from tests.conftest import DaemonProcess, wait_until
from tests.integration.test_api_fuzz import _start as start_api  # `job-supervisor api`, a process

pytestmark = pytest.mark.slow
NAME = "h.echo"
TOKEN = "fuzz-token"  # start_api's
P = keys.queue_prefix(NAME)
#: What the daemon must never log: its connections stay up whatever the data.
BROKEN = ("redis.unavailable", "data_received", "Connection reset", "connection_lost")
RECORD_FIELDS = ["name", "state", "payload", "ctx", "history", "result", "progress", "error", "deliveries",
                 "created", "started", "finished", "priority", "score", "deadline", "lease", "worker", "idem",
                 "ckey", "kmax", "cancel", "parent", "an-unknown-field"]

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
HOSTILE = st.one_of(
    st.binary(max_size=48),  # random bytes
    st.binary(max_size=16).map(lambda b: b"\xff\xfe" + b),  # never UTF-8
    _json.map(lambda v: json.dumps(v).encode()),  # JSON of the wrong shape or type
    _json.map(lambda v: json.dumps(v).encode()).map(lambda b: b[: len(b) // 2]),  # truncated JSON
    st.sampled_from([b"", b"NaN", b"Infinity", b'"\\udc80"', b'[{"attempt": "x"}]', b"[1, 2]", b"{}",
                     b"99999999999999999999999", b"-1", b"1e400", b"pending", b"active", b"retry",
                     b'{"a": 1}', NAME.encode(), b"t.other"]),
)
KINDS = ["field", "field", "drop-field", "record-type", "ready", "sched", "active", "idem", "types", "meta",
         "presence", "schedules", "last-fired", "events", "log"]


@pytest.fixture
def served(use_handlers: Callable[..., Any], daemon: Callable[..., DaemonProcess],
           redis_url: str, tmp_path: Path) -> Iterator[tuple[DaemonProcess, SyncClient, httpx.Client, syncredis.Redis]]:
    use_handlers("hostile")
    d = daemon()
    raw = syncredis.Redis.from_url(redis_url)  # bytes in, bytes out: writes what a hostile party would
    server = start_api(redis_url, tmp_path)
    try:
        with SyncClient(redis_url) as client, httpx.Client(base_url=server.url, timeout=30,
                                                           headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            wait_until(lambda: raw.hget(keys.meta_key(NAME), "schema") and raw.hlen(SPECS_KEY), 15,
                       what="publication")
            yield d, client, api, raw
    finally:
        server.close()
        raw.close()


def _finished(client: SyncClient, job_id: str, timeout: float = 15.0) -> Any:
    return wait_until(lambda: (j := client.get(job_id)).finished_running and j, timeout, what=f"job {job_id}")


def _read_outcome(client: SyncClient, job_id: str) -> Any:
    """A job as the client reads it: the Job, or the CorruptRecord it raised (nothing else)."""
    try:
        return client.get(job_id)
    except (CorruptRecord, JobNotFound) as exc:
        return exc


def _check_answers(client: SyncClient, api: httpx.Client, job_ids: list[str]) -> None:
    """Every reader answers: a Job or CorruptRecord from the client, 200/404/409 from the API."""
    for job_id in job_ids:
        got = _read_outcome(client, job_id)
        r = api.get(f"/jobs/{job_id}")
        if isinstance(got, CorruptRecord):
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "record_corrupt"
            assert r.json()["error"]["key"] == got.key
        elif isinstance(got, JobNotFound):
            assert r.status_code == 404, r.text
        else:
            assert r.status_code == 200, r.text
        assert api.get(f"/jobs/{job_id}/logs").status_code in (200, 404, 409)
    client.list(NAME)
    client.list()
    for path in ("/jobs", f"/jobs?type={NAME}", "/types", "/workers", "/schedules", "/executions",
                 f"/executions?type={NAME}", "/health"):
        r = api.get(path)
        assert r.status_code < 500, (path, r.text)
        json.loads(r.text)


def _restore(raw: syncredis.Redis, saved: dict[str, bytes | None]) -> None:
    for key, dump in saved.items():
        raw.delete(key)
        if dump is not None:
            raw.restore(key, 0, dump, replace=True)


def test_hostile_values_in_every_key_are_reported_and_jobs_keep_completing(served: Any) -> None:
    d, client, api, raw = served
    first = client.enqueue(NAME, {"value": "seed"}, idempotency_key="seed")
    done = _finished(client, first.id)
    assert done.state is State.COMPLETED
    spec_id = next(iter(raw.hkeys(SPECS_KEY))).decode()
    instance = raw.zrange(INSTANCES_KEY, 0, 0)[0].decode()
    victims: list[tuple[str, str]] = []  # queued jobs whose record was forged: (id, field)

    # No shrinking: each example talks to a live daemon, so a failure is reported as found
    # (hypothesis prints it) rather than minimized for minutes.
    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")), deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(kind=st.sampled_from(KINDS), field=st.sampled_from(RECORD_FIELDS), value=HOSTILE,
           queued=st.booleans())
    def attack(kind: str, field: str, value: bytes, queued: bool) -> None:
        # A finished job, or a queued one the daemon claims after the forgery.
        if queued:
            target = client.enqueue(NAME, {"value": "victim"}, delay=0.3)
        else:
            target = client.enqueue(NAME, {"value": "target"})
            _finished(client, target.id)
        jk = keys.job_key(target.id)
        saved: dict[str, bytes | None] = {}
        for key in (keys.meta_key(NAME), SPECS_KEY, last_fired_key(NAME), instance_key(instance)):
            saved[key] = raw.dump(key)
        if kind == "field":
            raw.hset(jk, field, value)
        elif kind == "drop-field":
            raw.hdel(jk, field)
        elif kind == "record-type":
            raw.delete(jk)
            raw.set(jk, value)
        elif kind in ("ready", "sched", "active"):
            member = value or target.id.encode()
            raw.zadd(P + kind, {member: 0 if kind != "ready" else len(value)})
            raw.zadd(P + kind, {target.id: 0})  # a real id where it does not belong
        elif kind == "idem":
            raw.set(P + "idem:forged", value)
        elif kind == "types":
            raw.sadd(keys.TYPES_KEY, value)
        elif kind == "meta":
            raw.hset(keys.meta_key(NAME), field if field in ("name", "priority") else "policy", value)
            raw.hset(keys.meta_key(NAME), "retention_ms", value)
        elif kind == "presence":
            raw.set(instance_key(instance), value)
            raw.zadd(INSTANCES_KEY, {value or b"\xff": time.time()})
        elif kind == "schedules":
            raw.hset(SPECS_KEY, spec_id, value)
            raw.hset(SPECS_KEY, value or b"\xff", value)
        elif kind == "last-fired":
            raw.hset(last_fired_key(NAME), spec_id, value)
        elif kind == "events":
            raw.xadd(keys.events_key(NAME), {b"event": value or b"started", b"id": value, b"attempt": value,
                                             b"state": value, value or b"x": value})
        elif kind == "log":
            raw.rpush(keys.log_key(target.id), value)
        if queued:
            victims.append((target.id, field if kind == "field" else kind))
        try:
            _check_answers(client, api, [target.id, first.id])
            if kind == "idem":  # a forged idempotency key never names a job: a new one is made
                ref = client.enqueue(NAME, {"value": "idem"}, idempotency_key="forged")
                assert not ref.existing
                assert _finished(client, ref.id).state is State.COMPLETED
        finally:
            _restore(raw, saved)

    attack()

    # Every forged queued job was handled: finished, or reported corrupt; none left running.
    def settled(job_id: str) -> bool:
        got = _read_outcome(client, job_id)
        return not isinstance(got, type(done)) or got.state in FINISHED or got.state is not State.ACTIVE

    for job_id, _what in victims:
        wait_until(lambda job_id=job_id: settled(job_id), 15, what=f"forged job {job_id} settled")

    refs = [client.enqueue(NAME, {"value": f"after-{i}"}) for i in range(100)]
    for ref in refs:
        assert _finished(client, ref.id).state is State.COMPLETED
    assert d.proc.poll() is None, "the daemon exited"
    text = d.log_path.read_text(errors="replace")
    for needle in BROKEN:
        assert needle not in text, f"the daemon logged {needle!r}:\n" + "\n".join(
            line for line in text.splitlines() if needle in line)[:3000]


def test_a_claimed_job_whose_record_is_corrupt_fails_permanently_and_is_named(served: Any) -> None:
    d, client, api, raw = served
    bad_payload = client.enqueue(NAME, {"value": "x"}, delay=0.3)
    bad_ctx = client.enqueue(NAME, {"value": "y"}, delay=0.3)
    raw.hset(keys.job_key(bad_payload.id), "payload", b"\xff\xfe{not json")
    raw.hset(keys.job_key(bad_ctx.id), "ctx", b'{"request_id": "trunc')
    good = [client.enqueue(NAME, {"value": str(i)}) for i in range(10)]
    for ref in good:
        assert _finished(client, ref.id).state is State.COMPLETED
    # The record still holds the forged bytes, so readers report it corrupt ...
    with pytest.raises(CorruptRecord) as caught:
        _finished(client, bad_payload.id)
    assert caught.value.code == "record_corrupt"
    assert caught.value.key == keys.job_key(bad_payload.id)
    r = api.get(f"/jobs/{bad_payload.id}")
    assert r.status_code == 409
    assert r.json()["error"] == {"code": "record_corrupt", "key": keys.job_key(bad_payload.id),
                                 "message": r.json()["error"]["message"]}
    assert "payload" in r.json()["error"]["message"]
    listed = api.get("/jobs", params={"type": NAME}).json()  # a listing names it and lists the rest
    assert {c["key"] for c in listed["corrupt"]} == {keys.job_key(bad_payload.id), keys.job_key(bad_ctx.id)}
    assert {c["code"] for c in listed["corrupt"]} == {"record_corrupt"}
    assert {j["id"] for j in listed["jobs"]} >= {ref.id for ref in good}
    cli = subprocess.run([sys.executable, "-m", "supervisor", "jobs", "get", bad_payload.id],
                         env={**os.environ, "REDIS_URL": d.env["REDIS_URL"]}, capture_output=True, text=True,
                         timeout=60, check=False)
    assert cli.returncode == 1, cli.stderr
    assert "record_corrupt" in cli.stderr and keys.job_key(bad_payload.id) in cli.stderr
    # ... and the daemon failed both for good, each with the key named, without retrying them.
    for ref in (bad_payload, bad_ctx):
        state = wait_until(lambda ref=ref: raw.hget(keys.job_key(ref.id), "state") in (b"failed", b"dead")
                           and raw.hget(keys.job_key(ref.id), "state"), 15, what="failed")
        assert state == b"failed"
        assert b"record_corrupt" in raw.hget(keys.job_key(ref.id), "error")
        lines = [ln for ln in d.events("run.record_corrupt") if ln.get("job_id") == ref.id]
        assert lines and lines[0]["key"] == keys.job_key(ref.id)
    raw.hset(keys.job_key(bad_ctx.id), "ctx", "{}")
    assert client.get(bad_ctx.id).state is State.FAILED
    text = d.log_path.read_text(errors="replace")
    assert not any(needle in text for needle in BROKEN)

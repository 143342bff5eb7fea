"""The state table, the Lua scripts' copy of it, backoff, keys, Context.for_test."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import BaseModel

from supervisor import Backoff, Context, PermanentError, job
from supervisor.config import Settings
from supervisor.daemon.lanes import ServedType
from supervisor.engine.keys import job_key, new_job_id, queue_prefix, tag_from_id
from supervisor.engine.scripts import SCRIPT_NAMES, script_source
from supervisor.engine.states import FINISHED, TERMINAL, TRANSITIONS, State, can_transition
from supervisor.flow import RateLimit
from supervisor.handler import JobType
from supervisor.policy import PublishedType, TypePolicy


def test_state_table_matches_spec() -> None:
    assert {s.value for s in TRANSITIONS[State.PENDING]} == {"active", "cancelled", "expired"}
    assert {s.value for s in TRANSITIONS[State.RETRY]} == {"active", "cancelled", "dead", "expired"}
    assert {s.value for s in TRANSITIONS[State.FAILED]} == {"pending"}
    assert {s.value for s in TRANSITIONS[State.DEAD]} == {"pending", "dismissed"}
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert can_transition(State.ACTIVE, State.COMPLETED) and not can_transition(State.COMPLETED, State.PENDING)
    assert State.FAILED in FINISHED and State.ACTIVE not in FINISHED


def test_every_script_carries_the_generated_state_table() -> None:
    for name in SCRIPT_NAMES:
        src = script_source(name)
        for source, targets in TRANSITIONS.items():
            row = re.search(rf"\['{source.value}'\] = \{{([^}}]*)\}}", src)
            assert row, f"{name}.lua lacks the row for {source}"
            assert set(re.findall(r"\['(\w+)'\]", row.group(1))) == {t.value for t in targets}


def test_scripts_only_write_states_the_table_knows() -> None:
    known = {s.value for s in State}
    for name in SCRIPT_NAMES:
        body = script_source(name).split("} end\n", 1)[1]  # after the generated legal table
        written = set(re.findall(r"(?:'HSET', jk, |\{|name, )'state', '(\w+)'", body))
        assert written <= known, f"{name}.lua writes unknown state(s) {written - known}"


def test_scripts_carry_only_the_lib_definitions_they_use() -> None:
    # Redis runs a script's whole chunk per call: lib.lua's unused functions are left out, and
    # what a kept function uses is kept with it (claim -> key_leave -> wake), in lib.lua's order.
    claim = script_source("claim")
    assert "local function record_action" not in claim and "local function unpark" not in claim
    for kept in ("local function key_leave", "local function wake", "local function finish", "local function park"):
        assert kept in claim, kept
    assert claim.index("local function wake") < claim.index("local function key_leave")
    heartbeat = script_source("heartbeat")
    assert "local function hist_add" not in heartbeat and len(heartbeat) < len(claim) / 2
    revive = script_source("revive")  # actions.lua's functions are trimmed the same way
    assert "local function revive_job" in revive and "local function cancel_job" not in revive


def test_backoff_list_repeats_last_value() -> None:
    b = Backoff.parse([5, 30, 120])
    assert [b.delay(n) for n in (1, 2, 3, 4, 9)] == [5, 30, 120, 120, 120]


def test_exponential_backoff_has_jitter_and_cap() -> None:
    b = Backoff.parse({"base": 1, "max": 8})
    for attempt in range(1, 10):
        raw = min(8, 2 ** (attempt - 1))
        assert raw * 0.5 <= b.delay(attempt) <= raw
    assert len({round(b.delay(5), 6) for _ in range(20)}) > 1


@pytest.mark.parametrize("bad", [[], ["x"], [-1], {"unknown": 1}, "linear"])
def test_bad_backoff_names_the_fix(bad: object) -> None:
    with pytest.raises(ValueError, match="backoff="):
        Backoff.parse(bad)


def test_bad_decorator_options_are_reported() -> None:
    with pytest.raises(ValueError, match=r"max_deliver=0 must be a positive integer.*runtime='thread'"):
        job("x", max_deliver=0, runtime="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown option"):
        job("x", retries=3)


def test_job_ids_route_to_their_queue_slot() -> None:
    job_id = new_job_id("orders.charge-payment")
    tag = tag_from_id(job_id)
    assert f"{{{tag}}}" in job_key(job_id)
    assert f"{{{tag}}}" in queue_prefix("orders.charge-payment")
    with pytest.raises(ValueError, match="malformed job id"):
        tag_from_id("nope")


class Order(BaseModel):
    order_id: str


@job("unit.reserve")
async def reserve(payload: Order, ctx: Context) -> dict[str, str]:
    await ctx.progress(10, "checking", step="reserving")
    if ctx.cancelled:
        raise PermanentError("cancelled")
    child = await ctx.enqueue("unit.charge", {"order_id": payload.order_id})
    ctx.log.info("reserved")
    return {"child": child.id}


async def test_handler_is_testable_with_context_for_test() -> None:
    ctx = Context.for_test({"order_id": "o1"}, job_name="unit.reserve")
    result = await reserve(Order(order_id="o1"), ctx)
    assert result == {"child": "test-1"}
    assert ctx.recorded.progress_calls == [(10.0, "checking", "reserving")]
    child = ctx.recorded.enqueued[0]
    assert child.name == "unit.charge" and child.options["parent"] == ctx.job_id
    assert child.options["context"]["trace_id"] == ctx.context["trace_id"]


async def test_context_for_test_cancellation() -> None:
    ctx = Context.for_test({"order_id": "o1"})
    ctx.cancel()
    assert ctx.cancelled and ctx.cancel_event.is_set()
    with pytest.raises(PermanentError):
        await reserve(Order(order_id="o1"), ctx)


def test_payload_model_validates_like_the_annotation() -> None:
    jt = JobType.from_function(reserve, reserve.__supervisor_jobs__[0], "unit")
    assert jt.is_async and jt.takes_context
    assert jt.payload.schema["required"] == ["order_id"]
    assert jt.payload.from_json('{"order_id": "x"}') == Order(order_id="x")
    with pytest.raises(Exception, match="order_id"):
        jt.payload.from_json('{"order": 1}')


def test_decorator_options_become_the_type_policy() -> None:
    @job("unit.policy", deadline=60, rate_limit="5/s", key_concurrency={"key": ["/k"]}, retention=120)
    def handler(payload: dict) -> None:
        del payload

    (policy,) = handler.__supervisor_jobs__
    assert isinstance(policy, TypePolicy) and policy.name == "unit.policy"
    assert (policy.deadline, policy.rate_limit, policy.retention) == (60, RateLimit(5, 1000), 120)
    assert policy.key_concurrency is not None and policy.key_concurrency.key == ["/k"]
    assert policy.max_deliver is None and policy.runtime is None, "unset options wait for the settings"


def test_policy_defaults_come_from_the_settings_once() -> None:
    settings = Settings(default_runtime="process", default_concurrency=3, ack_wait=40, max_deliver=7, retention=99)
    resolved = TypePolicy(name="unit.p", concurrency=5).resolve(settings)
    assert (resolved.runtime, resolved.concurrency, resolved.ack_wait) == ("process", 5, 40)
    assert (resolved.max_deliver, resolved.retention, resolved.priority) == (7, 99, 0)
    assert resolved.backoff == Backoff() and resolved.misfire == "run-once" and resolved.timezone == "UTC"


def test_a_process_type_without_concurrency_gets_the_default_per_worker() -> None:
    # the default keeps every worker of the pool busy; a concurrency a type names is its total
    settings = Settings(default_concurrency=10, workers_concurrency=4)
    assert TypePolicy(name="unit.p", runtime="process").resolve(settings).concurrency == 40
    assert TypePolicy(name="unit.p", runtime="process", concurrency=6).resolve(settings).concurrency == 6
    assert TypePolicy(name="unit.p", runtime="inprocess").resolve(settings).concurrency == 10
    assert TypePolicy(name="unit.p").resolve(Settings(default_runtime="process", default_concurrency=3,
                                                      workers_concurrency=2)).concurrency == 6


def test_published_policy_reads_back_as_written() -> None:
    declared = TypePolicy(name="unit.p", deadline=30, priority=4, backoff=[1, 5], rate_limit="10/m",
                          key_concurrency={"key": ["t", "/t"]}, queue={"when_full": "coalesce"}, timeout=9)
    resolved = declared.resolve(Settings(retention=86_400))
    meta = PublishedType(resolved, {"type": "object"}, "jobs/x.py", check_formats=False).meta("i-1", 600)
    policy = json.loads(meta["policy"])
    assert policy["deadline"] == 30 and policy["rate_limit"] == "10/60s" and policy["backoff"] == [1, 5]
    assert policy["key_concurrency"] == {"key": ["t", "/t"], "max_active": 1, "stale_policy": "fail-stale"}
    assert (meta["retention_ms"], meta["dead_retention_ms"], meta["instance"]) == ("86400000", "600000", "i-1")
    back = PublishedType.read("unit.p", meta)
    assert back.schema == {"type": "object"} and back.check_formats is False and back.source == "jobs/x.py"
    # every published option reads back (the schedule's details are published with the schedule)
    assert back.policy == resolved.model_copy(update={"timezone": None, "misfire": None})


def test_published_policy_of_another_version_reads_leniently_or_raises() -> None:
    meta = {"policy": json.dumps({"runtime": "inprocess", "priority": 2, "deadline": None, "new_option": 1})}
    assert PublishedType.read("unit.p", meta).policy.priority == 2
    with pytest.raises(ValueError, match="priority"):
        PublishedType.read("unit.p", {"policy": json.dumps({"priority": "high"})})


def test_the_dispatcher_view_derives_its_numbers_from_the_policy() -> None:
    policy = TypePolicy(name="unit.p", ack_wait=2.5, rate_limit="20/5s").resolve(Settings())
    served = ServedType(policy, "jobs/x.py")
    assert served.policy is policy
    assert (served.ack_wait_ms, served.rate, served.rate_period_ms) == (2500, 20, 5000)
    with pytest.raises(ValueError, match="not resolved"):
        ServedType(TypePolicy(name="unit.p"), "jobs/x.py")

"""The enqueue pipeline's pure parts (supervisor.producers.enqueue): what counts as an option, and how a new
job's id and trace context are minted."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from supervisor.engine import keys
from supervisor.producers.enqueue import OPTION_NAMES, EnqueueOptions, EnqueueRequest, has_options, mint


def test_the_keyword_options_are_the_request_fields_and_allow_unknown() -> None:
    assert set(EnqueueOptions.__annotations__) == {*OPTION_NAMES, "allow_unknown"}
    assert set(OPTION_NAMES) == set(EnqueueRequest.__dataclass_fields__) - {"name", "payload"}


@pytest.mark.parametrize(("options", "expected"), [
    ({}, False),
    ({"allow_unknown": True}, False),  # not an option of the job
    ({"priority": 0, "delay": None, "context": {}}, False),  # nothing set
    ({"priority": 1}, True),
    ({"run_at": datetime(2030, 1, 1, tzinfo=UTC)}, True),
    ({"concurrency_key": "k", "allow_unknown": False}, True),
    ({"priorty": None}, True),  # a misspelt option goes to the general path, which refuses it
])
def test_has_options_for_keywords_and_requests_alike(options: dict[str, object], expected: bool) -> None:
    assert has_options(options) is expected
    fields = {k: v for k, v in options.items() if k in OPTION_NAMES}
    if len(fields) == len(options) - ("allow_unknown" in options):
        assert has_options(EnqueueRequest("t", {}, **fields)) is expected  # type: ignore[arg-type]


def test_mint_draws_an_id_of_the_types_tag_and_a_fresh_trace() -> None:
    job_id, context_json = mint("orders.charge")
    assert keys.tag_from_id(job_id) == keys.tag_for("orders.charge") and len(job_id.split("-")[1]) == 16
    ctx = json.loads(context_json)
    assert set(ctx) == {"request_id", "trace_id", "traceparent"}
    assert ctx["traceparent"] == f"00-{ctx['trace_id']}-{ctx['traceparent'][36:52]}-01"
    # From the caller's draw: the id takes the first 16 hex digits, the context the other 64
    bits = "ab" * 8 + "12" * 32
    job_id, context_json = mint("orders.charge", bits)
    assert job_id.endswith("-" + "ab" * 8) and json.loads(context_json)["request_id"] == "12" * 8
    # A given context is continued: its request id and trace stay
    given = {"request_id": "req-1", "traceparent": "00-" + "4b" * 16 + "-" + "00f067aa0ba902b7" + "-01"}
    ctx = json.loads(mint("orders.charge", given=given)[1])
    assert ctx["request_id"] == "req-1" and ctx["trace_id"] == "4b" * 16

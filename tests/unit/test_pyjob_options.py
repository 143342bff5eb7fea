"""What `ctx.enqueue` in a subprocess Python job sends on its `::submit` line (`runners.pyjob`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runners.pyjob import _protocol_options


def test_run_at_becomes_a_delay_and_the_daemons_own_options_stay_out() -> None:
    sent = _protocol_options({"run_at": datetime.now(UTC) + timedelta(seconds=60), "priority": 3,
                              "context": {"x": "y"}, "parent": "p", "batch": None})
    assert set(sent) == {"delay", "priority"} and 58 < sent["delay"] <= 60 and sent["priority"] == 3


def test_an_option_the_protocol_lacks_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="allow_unknown cannot reach the daemon"):
        _protocol_options({"allow_unknown": True})
    with pytest.raises(TypeError, match="run_at or delay"):
        _protocol_options({"run_at": datetime.now(UTC), "delay": 5})

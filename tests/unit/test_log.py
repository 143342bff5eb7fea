"""Logged exceptions carry their traceback but never a frame's local variables (secrets live there)."""

from __future__ import annotations

import io

import pytest
import structlog

from supervisor.observability import log


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_logged_tracebacks_leave_local_variables_out(fmt: str) -> None:
    out = io.StringIO()
    log.configure("info", fmt, stream=out)
    try:
        def charge(card: str) -> None:
            api_key = "sk_live_" + card.upper()  # noqa: F841 (a local the traceback must not show)
            raise RuntimeError("provider down")

        try:
            charge("-".join(["top", "secret"]))  # built at run time: not in any source line shown
        except RuntimeError:
            structlog.get_logger("t").exception("runner.error")
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert "provider down" in text and "charge" in text  # the trace is there
    assert "TOP-SECRET" not in text and "top-secret" not in text

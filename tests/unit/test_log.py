"""Logged exceptions carry their traceback but never a frame's local variables (secrets live there);
the libraries' optional imports the daemon never uses stay out of it; the daemon's batched lines
all arrive, in order."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading

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


_PROBE = """
import json, sys
from supervisor.observability.optional_imports import refuse_unused
refuse_unused(console_logs={console})
from supervisor.observability import log
import redis.asyncio, structlog
log.configure("info", {fmt!r})
try:
    raise RuntimeError("provider down")
except RuntimeError:
    structlog.get_logger("t").exception("runner.error")
sys.stdout.flush()
lean = ["rich.pretty" in sys.modules, "opentelemetry.sdk.metrics" in sys.modules]
import rich.pretty, opentelemetry.sdk.metrics  # handler code still gets both
print(json.dumps(lean), file=sys.stderr)
"""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_the_daemon_leaves_out_what_it_never_uses_and_still_logs_tracebacks(fmt: str) -> None:
    # Given the refusals `job-supervisor run` installs before importing the daemon
    probe = _PROBE.format(console=fmt == "console", fmt=fmt)
    # When structlog and redis-py are imported, and an exception is logged
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    # Then redis-py's OpenTelemetry metrics are never imported, rich's renderers only for console
    # logs, and the logged line still carries the traceback
    assert json.loads(done.stderr.splitlines()[-1]) == [fmt == "console", False], done.stderr
    if fmt == "json":
        frames = json.loads(done.stdout.splitlines()[0])["exception"][0]
        assert frames["exc_value"] == "provider down" and frames["frames"][0]["lineno"] == 9
    else:
        assert "Traceback" in done.stdout and "provider down" in done.stdout


class _Writes(io.StringIO):
    """A stream that counts the writes reaching it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_batched_lines_of_one_loop_pass_go_out_together_and_in_order() -> None:
    # Given the daemon's batching log stream
    out = _Writes()
    log.configure("info", "json", stream=out, batch=True)
    seen: list[str] = []
    try:
        async def main() -> None:
            logger = structlog.get_logger("t")
            # When 50 lines are logged in one pass of the event loop
            for i in range(50):
                logger.info("run.finished", n=i)
            assert out.getvalue() == ""  # held until the pass ends
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(out.getvalue())
            # and a line from another thread (a sync handler's) while the loop holds lines
            logger.info("run.finished", n=50)
            t = threading.Thread(target=lambda: logger.info("handler.line", n=51))
            t.start()
            t.join()
            seen.append(out.getvalue())
            logger.info("run.finished", n=52)  # pending when the loop ends

        async def again() -> None:  # a loop started later still gets its lines written each pass
            structlog.get_logger("t").info("run.finished", n=53)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(out.getvalue())

        asyncio.run(main())
        asyncio.run(again())
        log.flush()  # what the exit writes: nothing is left
    finally:
        structlog.reset_defaults()
    # Then the pass's lines reach the stream in one write, every line arrives once, in order
    assert out.writes >= 1 and len(seen[0].splitlines()) == 50
    assert [json.loads(x)["n"] for x in seen[0].splitlines()] == list(range(50))
    assert [json.loads(x)["n"] for x in seen[1].splitlines()] == list(range(52))  # the thread's line flushed the loop's
    assert [json.loads(x)["n"] for x in seen[2].splitlines()] == list(range(54))
    assert out.getvalue() == seen[2] and out.writes <= 4

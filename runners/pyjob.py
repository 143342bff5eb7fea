"""`python -m runners.pyjob JOBS_DIR NAME [MANIFEST]`: one Python job in a fresh process.

Runs the Python job types with `runtime="subprocess"`.

With MANIFEST (the daemon passes one), the handlers are imported from
the sources the daemon accepted (`supervisor.daemon.accepted`), not from the files of
JOBS_DIR as they are now: a broken edit leaves the last good version running.

The call itself is `runners.invoke`'s, as in every Python runtime; this
module owns only where its inputs come from and where its outcome goes.

Speaks the task protocol of SPEC §6, so the subprocess runner treats it like
any other task: payload JSON on stdin, `JOB_*` variables in the environment,
`::progress` / `::heartbeat` / `::result` lines on stdout, exit 0 / 65
(permanent) / 75 (retry) / other (retryable failure); a failure's stack trace
goes to stderr as one `::traceback "<JSON string>"` line before the error.
The process holds no Redis credentials: `ctx.enqueue` / `ctx.submit` become
`::submit` lines that the daemon carries out, answered on the reply pipe
(`runners.task_children`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runners.base import RunResult, RunStatus
from runners.invoke import call, prepare
from runners.task_children import OPTIONS, outcome_of_reply
from supervisor.daemon import accepted
from supervisor.daemon.registry import load_jobs
from supervisor.errors import HandlerImportError

EXIT = {RunStatus.COMPLETED: 0, RunStatus.PERMANENT: 65, RunStatus.RETRY: 75}


class _ProtocolSink:
    """Context calls become protocol lines on stdout."""

    def progress(self, percent: float, message: str | None, step: str | None) -> None:  # noqa: ARG002  (sink API)
        text = " ".join(p for p in (f"{percent:g}", message or "") if p)
        print(f"::progress {text}", flush=True)

    def heartbeat(self) -> None:
        print("::heartbeat", flush=True)

    def __init__(self) -> None:
        self._replies: Any = None

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        """A `::submit` line; the daemon's answer read from the reply pipe (`runners.task_children`)."""
        fd = os.environ.get("JOB_REPLY_FD")
        if not fd:
            raise RuntimeError("ctx.enqueue needs the daemon's reply pipe (JOB_REPLY_FD), which this run lacks")
        given = _protocol_options(options)
        print(f"::submit {name} {json.dumps(payload)} {json.dumps(given)}", flush=True)
        if self._replies is None:
            self._replies = open(f"/proc/self/fd/{fd}", encoding="utf-8")
        outcome = outcome_of_reply(name, self._replies.readline())
        from supervisor.producers.enqueue import ref_or_raise  # noqa: PLC0415  (rare: a run's start stays light)

        value: Any = outcome if submit else ref_or_raise(outcome)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return value

        async def done() -> Any:  # `await ctx.enqueue(...)` in an async handler
            return value

        return done()


def _protocol_options(options: dict[str, Any]) -> dict[str, Any]:
    """`ctx.enqueue`'s options as a `::submit` line carries them: `run_at` as a `delay` from now; the
    daemon sets `context` and `parent` itself; any other option the protocol lacks is a TypeError
    (dropping it would enqueue a different job than the same handler does in the other runtimes)."""
    given = {k: v for k, v in options.items() if v is not None and k not in ("context", "parent")}
    run_at = given.pop("run_at", None)
    if run_at is not None:
        if "delay" in given:
            raise TypeError("ctx.enqueue takes run_at or delay, not both")
        at = run_at if run_at.tzinfo else run_at.replace(tzinfo=UTC)  # naive: UTC, as Client.enqueue reads it
        given["delay"] = max((at - datetime.now(UTC)).total_seconds(), 0.0)
    unknown = sorted(set(given) - OPTIONS)
    if unknown:
        raise TypeError(f"ctx.enqueue option(s) {', '.join(unknown)} cannot reach the daemon from a subprocess "
                        f"Python job; it takes {', '.join(sorted(OPTIONS | {'run_at'}))}")
    return given


def main(argv: list[str]) -> int:
    jobs_dir, name = Path(argv[1]), argv[2]
    try:
        sources = accepted.load(Path(argv[3])) if len(argv) > 3 else None
    except HandlerImportError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    registry = load_jobs(jobs_dir, sources)
    err = registry.errors.get(next((p for p in registry.errors), ""), None)
    env = os.environ
    deadline = datetime.fromisoformat(env["JOB_DEADLINE"]).timestamp() if env.get("JOB_DEADLINE") else None
    context = {"request_id": env.get("JOB_REQUEST_ID", ""), "traceparent": env.get("TRACEPARENT", ""),
               "tracestate": env.get("TRACESTATE", "")}
    if context["traceparent"].count("-") == 3:
        context["trace_id"] = context["traceparent"].split("-")[1]
    jt = registry.get(name)
    ctx = prepare(jt, env.get("JOB_ID", ""), name, int(env.get("JOB_ATTEMPT", "1")), sys.stdin.read() or "{}",
                  context, deadline, _ProtocolSink(), f"{jobs_dir}" + (f": {err}" if err else ""))
    if isinstance(ctx, RunResult):
        result = ctx
    else:
        assert jt is not None  # prepare() found it
        result = call(jt, ctx)
    if result.status is RunStatus.COMPLETED:
        print("::result " + json.dumps(result.result, separators=(",", ":")), flush=True)
    else:
        if result.traceback is not None:  # the runner stores it as the attempt's stack trace
            print("::traceback " + json.dumps(result.traceback), file=sys.stderr)
        print(result.error or result.status.value, file=sys.stderr, flush=True)
    return EXIT.get(result.status, 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

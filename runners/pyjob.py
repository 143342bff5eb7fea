"""`python -m runners.pyjob JOBS_DIR NAME [MANIFEST]`: one Python job in a fresh process.

Runs the Python job types with `runtime="subprocess"`.

With MANIFEST (the daemon passes one), the handlers are imported from
the sources the daemon accepted (`supervisor.accepted`), not from the files of
JOBS_DIR as they are now: a broken edit leaves the last good version running.

Speaks the task protocol of SPEC §6, so the subprocess runner treats it like
any other task: payload JSON on stdin, `JOB_*` variables in the environment,
`::progress` / `::heartbeat` / `::result` lines on stdout, exit 0 / 65
(permanent) / 75 (retry) / other (retryable failure); a failure's stack trace
goes to stderr as one `::traceback "<JSON string>"` line before the error.
Child jobs cannot be enqueued from here (the process holds no Redis
credentials by design): use the `process` or `inprocess` runtime for
handlers that enqueue.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from runners.base import RunStatus
from runners.inprocess import outcome_of, outcome_of_exception
from supervisor import accepted
from supervisor.context import Context
from supervisor.errors import HandlerImportError, InvalidPayload
from supervisor.registry import load_jobs

EXIT = {RunStatus.COMPLETED: 0, RunStatus.PERMANENT: 65, RunStatus.RETRY: 75}


class _ProtocolSink:
    """Context calls become protocol lines on stdout."""

    def progress(self, percent: float, message: str | None, step: str | None) -> None:
        text = " ".join(p for p in (f"{percent:g}", message or "") if p)
        print(f"::progress {text}", flush=True)

    def heartbeat(self) -> None:
        print("::heartbeat", flush=True)

    def enqueue(self, name: str, payload: Any, options: dict[str, Any], submit: bool) -> Any:
        raise RuntimeError(
            "ctx.enqueue is not available with runtime='subprocess' (the process holds no Redis "
            "credentials); use runtime='process' or 'inprocess' for handlers that enqueue child jobs"
        )


def main(argv: list[str]) -> int:
    jobs_dir, name = Path(argv[1]), argv[2]
    try:
        sources = accepted.load(Path(argv[3])) if len(argv) > 3 else None
    except HandlerImportError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    registry = load_jobs(jobs_dir, sources)
    jt = registry.get(name)
    if jt is None:
        err = registry.errors.get(next((p for p in registry.errors), ""), None)
        print(f"no handler for {name!r} in {jobs_dir}" + (f": {err}" if err else ""), file=sys.stderr)
        return 1
    try:
        payload = jt.payload.from_json(sys.stdin.read() or "{}")
    except InvalidPayload as exc:
        print(str(exc), file=sys.stderr)
        return 65
    env = os.environ
    deadline = datetime.fromisoformat(env["JOB_DEADLINE"]) if env.get("JOB_DEADLINE") else None
    context = {"request_id": env.get("JOB_REQUEST_ID", ""), "traceparent": env.get("TRACEPARENT", ""),
               "tracestate": env.get("TRACESTATE", "")}
    if context["traceparent"].count("-") == 3:
        context["trace_id"] = context["traceparent"].split("-")[1]
    ctx = Context(job_id=env.get("JOB_ID", ""), job_name=name, attempt=int(env.get("JOB_ATTEMPT", "1")),
                  payload=payload, context=context, deadline=deadline, sink=_ProtocolSink(),
                  is_async=jt.is_async)
    args = (payload, ctx) if jt.takes_context else (payload,)
    try:
        value = asyncio.run(jt.handler(*args)) if jt.is_async else jt.handler(*args)
    except Exception as exc:  # noqa: BLE001 (every handler failure maps to an outcome)
        result = outcome_of_exception(exc)
    else:
        result = outcome_of(value)
    if result.status is RunStatus.COMPLETED:
        print("::result " + json.dumps(result.result, separators=(",", ":")), flush=True)
    else:
        if result.traceback is not None:  # the runner stores it as the attempt's stack trace
            print("::traceback " + json.dumps(result.traceback), file=sys.stderr)
        print(result.error or result.status.value, file=sys.stderr, flush=True)
    return EXIT.get(result.status, 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

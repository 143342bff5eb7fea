"""Child jobs from any language: the task protocol's `::enqueue` and `::submit` lines.

A task prints `::enqueue NAME PAYLOAD_JSON [OPTIONS_JSON]` (or `::submit ...`) on stdout; the
daemon creates the child through the callback the composition root hands the runner (the same
one a Python handler's `ctx.enqueue` uses), in the order the lines came, and writes one reply
line per command on the task's reply pipe, whose file descriptor is `JOB_REPLY_FD`:

    accepted <child id>                 a new child job
    existing <child id>                 this line of an earlier attempt created it already
    coalesced <job id> <reason>         (submit) folded into a live job of its concurrency key
    replaced <child id> <replaced id>   (submit) queued in place of the key's oldest queued job
    rejected - <reason>                 (submit) its concurrency key refused it
    error - <message>                   the line or the job was refused (unknown type, bad payload, ...)

Options: `idempotency_key`, `delay`, `priority`, `deadline`, `concurrency_key`, `depends_on`,
`on_dependency_failure`, `batch`. A child continues the task's request and trace, records the
task's job as its `parent`, and gets the idempotency key `<parent job id>:child:<n>` (n: the
line's position among this Run's `::enqueue`/`::submit` lines, from 1) unless the line gives
one: a re-delivered task that prints the same lines creates no second child. A refused
`::enqueue` fails the Run (as an exception in a handler's `ctx.enqueue` would); a refused
`::submit` is only its reply. The Run's outcome is reported after every child it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import structlog

from runners.base import RunRequest
from runners.invoke import ChildEnqueue
from supervisor.context import child_context
from supervisor.errors import SupervisorError
from supervisor.flow import SubmitOutcome

log = structlog.get_logger("runners.command")

#: The options a `::enqueue` / `::submit` line may give (those of `Client.enqueue` that make sense there).
OPTIONS = frozenset({"idempotency_key", "delay", "priority", "deadline", "concurrency_key", "depends_on",
                     "on_dependency_failure", "batch"})
_DECODER = json.JSONDecoder()


def parse_line(rest: str) -> tuple[str, Any, dict[str, Any]]:
    """`NAME PAYLOAD_JSON [OPTIONS_JSON]` as (name, payload, options); ValueError naming the problem."""
    name, _, tail = rest.strip().partition(" ")
    if not name:
        raise ValueError("no job type: write `::enqueue NAME PAYLOAD_JSON [OPTIONS_JSON]`")
    tail = tail.strip() or "{}"
    try:
        payload, end = _DECODER.raw_decode(tail)
        more = tail[end:].strip()
        options = json.loads(more) if more else {}
    except ValueError as exc:
        raise ValueError(
            f"not JSON after the job type ({exc}): write `::enqueue NAME PAYLOAD_JSON [OPTIONS_JSON]`") from None
    if not isinstance(options, dict):
        raise ValueError("the options must be a JSON object, e.g. {\"delay\": 5}")
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}: use {sorted(OPTIONS)}")
    return name, payload, options


def outcome_of_reply(name: str, line: str) -> SubmitOutcome:
    """A reply line as `submit`'s outcome (the task side: `runners.pyjob`); SupervisorError for `error`."""
    word, _, rest = line.strip().partition(" ")
    ident, _, detail = rest.partition(" ")
    if word == "accepted":
        return SubmitOutcome("accepted", ident, name)
    if word == "existing":
        return SubmitOutcome("coalesced", ident, name, existing=ident, reason="idempotency-key")
    if word == "coalesced":
        return SubmitOutcome("coalesced", ident, name, existing=ident, reason=detail or None)
    if word == "replaced":
        return SubmitOutcome("replaced", ident, name, existing=detail or None, reason="queue-depth")
    if word == "rejected":
        return SubmitOutcome("rejected", None, name, reason=detail or None)
    raise SupervisorError(f"child job {name!r} refused: {detail or line.strip() or 'no reply'}")


class TaskChildren:
    """The child jobs one Run asks for (see the module docstring)."""

    def __init__(self, request: RunRequest, enqueue: ChildEnqueue) -> None:
        self.request, self._enqueue = request, enqueue
        self.read_fd, self._write_fd = os.pipe()
        self._writer: asyncio.WriteTransport | None = None
        self._last: asyncio.Future[None] | None = None
        self.position = 0
        self.failure: str | None = None  # why an `::enqueue` was refused (the Run fails)
        self._read_open = True

    def env(self) -> dict[str, str]:
        return {"JOB_REPLY_FD": str(self.read_fd)}

    def started(self) -> None:
        """The task holds the read end now: ours closes (the task's exit then ends the pipe)."""
        if self._read_open:
            self._read_open = False
            with contextlib.suppress(OSError):
                os.close(self.read_fd)

    def command(self, word: str, rest: str) -> None:
        """A `::enqueue` / `::submit` line: queued behind the ones before it."""
        self.position += 1
        before = self._last
        self._last = asyncio.ensure_future(self._carry_out(before, self.position, word == "submit", rest))

    async def _carry_out(self, before: asyncio.Future[None] | None, n: int, submit: bool, rest: str) -> None:
        if before is not None:
            await before
        try:
            reply = await self._create(n, submit, rest)
        except Exception as exc:  # noqa: BLE001 (any refusal is the task's to hear about, not the daemon's)
            reply = f"error - {type(exc).__name__}: {exc}"
            if not submit and self.failure is None:
                self.failure = f"::enqueue line {n} was refused: {exc}"
        await self._reply(reply.replace("\n", " "))

    async def _create(self, n: int, submit: bool, rest: str) -> str:
        name, payload, options = parse_line(rest)
        req = self.request
        options.setdefault("idempotency_key", f"{req.job_id}:child:{n}")
        options["context"] = child_context(req.context, req.job_id)
        options["parent"] = req.job_id
        out = await self._enqueue(name, payload, options, True)
        if out.outcome == "rejected":
            if not submit and self.failure is None:
                self.failure = f"::enqueue line {n}: {name} rejected by its concurrency key ({out.reason})"
            return f"rejected - {out.reason}"
        if out.outcome == "coalesced" and out.reason == "idempotency-key":
            return f"existing {out.job_id}"
        if out.outcome == "coalesced":
            return f"coalesced {out.job_id} {out.reason}"
        if out.outcome == "replaced":
            return f"replaced {out.job_id} {out.existing}"
        return f"accepted {out.job_id}"

    async def _reply(self, line: str) -> None:
        if self._writer is None:
            loop = asyncio.get_running_loop()
            pipe = os.fdopen(self._write_fd, "wb", buffering=0)
            self._writer, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, pipe)
        if not self._writer.is_closing():
            self._writer.write((line + "\n").encode())

    async def finish(self) -> None:
        """Every child asked for exists (or was refused) and its reply was written; the pipe closes."""
        if self._last is not None:
            with contextlib.suppress(Exception):
                await self._last
        self.close()

    def close(self) -> None:
        """Close the pipe now (idempotent); children still being made are abandoned (a cancelled Run:
        their idempotency keys make the Run's next attempt create them once)."""
        if self._last is not None and not self._last.done():
            self._last.cancel()
        if self._writer is not None:
            self._writer.close()
        elif self._write_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
        self._write_fd = -1
        self.started()  # (if the task never started)


__all__ = ["OPTIONS", "TaskChildren", "outcome_of_reply", "parse_line"]

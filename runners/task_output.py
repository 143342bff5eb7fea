"""A task's output, line by line: the task protocol's commands, its log, its result and its stack trace.

Lines `::progress 40 resizing`, `::heartbeat`, `::result {json}`,
`::traceback "<JSON string>"`, `::enqueue` and `::submit` (`runners.task_children`)
are commands; every other line is the job's log
(capped, with one `[log truncated]` line in place of the rest). Without
`::result`, a last stdout line that is JSON is the result; a failed Run's stack
trace is its `::traceback`, else its last stderr lines (bounded). See SPEC §6
and `runners.command`, which starts the program.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from runners.base import TRACEBACK_MAX_BYTES, RunEvents, bounded_text
from runners.task_children import TaskChildren

log = structlog.get_logger("runners.command")

LOG_TRUNCATED = "[log truncated]"
_MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer line is cut (a `::result` line included)


class TaskOutput:
    """Splits the child's output into lines and acts on each (protocol commands, log, result)."""

    def __init__(self, events: RunEvents, log_cap_bytes: int, children: TaskChildren | None = None) -> None:
        self._events = events
        self._children = children  # `::enqueue` / `::submit` lines go there (None: not offered)
        self._cap = log_cap_bytes
        self._buffers: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self._logged = 0
        self.truncated = False
        self.has_result = False
        self.result: Any = None
        self.result_error: str | None = None
        self.last_stdout: str | None = None
        self.stderr_tail: deque[str] = deque()  # the last stderr lines, about TRACEBACK_MAX_BYTES in all
        self._tail_size = 0
        self.traceback: str | None = None  # what a `::traceback` line said

    def feed(self, fd: int, data: bytes) -> None:
        buf = self._buffers[fd]
        buf += data
        if b"\n" in data:
            *lines, rest = buf.split(b"\n")
            self._buffers[fd] = buf = bytearray(rest)
            for raw in lines:
                self._line(fd, bytes(raw))
        while len(buf) > _MAX_LINE_BYTES:  # no newline in sight: cut it
            self._line(fd, bytes(buf[:_MAX_LINE_BYTES]))
            del buf[:_MAX_LINE_BYTES]

    def flush(self, fd: int) -> None:
        """The stream ended: a last line without a newline is still a line."""
        buf = self._buffers[fd]
        if buf:
            self._line(fd, bytes(buf))
            buf.clear()

    def _line(self, fd: int, raw: bytes) -> None:
        stream = "stdout" if fd == 1 else "stderr"
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if text.startswith("::") and self._command(text):
            return
        if stream == "stdout":
            if text.strip():
                self.last_stdout = text
        else:
            line = text[-TRACEBACK_MAX_BYTES:]
            self.stderr_tail.append(line)
            self._tail_size += len(line) + 1
            while self._tail_size > TRACEBACK_MAX_BYTES and len(self.stderr_tail) > 1:
                self._tail_size -= len(self.stderr_tail.popleft()) + 1
        self._log(text, stream)

    def _command(self, text: str) -> bool:
        """Act on a protocol command; False when `text` is not one (it is then a log line)."""
        word, _, rest = text[2:].partition(" ")
        rest = rest.strip()
        if word == "progress":
            percent_s, _, message = rest.partition(" ")
            try:
                percent = float(percent_s)
            except ValueError:
                return False
            if math.isnan(percent):
                return False
            self._call(self._events.progress, min(max(percent, 0.0), 100.0), message.strip() or None, None)
            return True
        if word == "heartbeat" and not rest:
            self._call(self._events.heartbeat)
            return True
        if word == "result":
            try:
                self.result = json.loads(rest)
            except ValueError as exc:
                self.result_error = f"the task printed an invalid ::result line ({exc}): {rest[:200]!r}"
                self.has_result = False
                return False
            self.has_result = True
            self.result_error = None
            return True
        if word in ("enqueue", "submit") and self._children is not None:
            self._children.command(word, rest)
            return True
        if word == "traceback":
            try:
                trace = json.loads(rest)
            except ValueError:
                return False
            if not isinstance(trace, str):
                return False
            self.traceback = bounded_text(trace, head=4 * 1024)
            return True
        return False

    def trace(self) -> str | None:
        """A failed Run's stack trace: its `::traceback`, else its last stderr lines (bounded)."""
        if self.traceback is not None:
            return self.traceback
        return bounded_text("\n".join(self.stderr_tail)) if self.stderr_tail else None

    def _log(self, text: str, stream: str) -> None:
        if self.truncated:
            return
        size = len(text.encode("utf-8", errors="replace")) + 1
        if self._logged + size > self._cap:
            self.truncated = True
            self._call(self._events.log, LOG_TRUNCATED, stream)
            return
        self._logged += size
        self._call(self._events.log, text, stream)

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a broken sink must not break the Run
            log.exception("run.events_failed", callback=getattr(fn, "__name__", repr(fn)))

    def final_result(self) -> Any:
        """`::result` when given, else the last stdout line when it is JSON, else None."""
        if self.has_result:
            return self.result
        if self.last_stdout is not None:
            try:
                return json.loads(self.last_stdout)
            except ValueError:
                return None
        return None


class OutputProtocol(asyncio.SubprocessProtocol):
    def __init__(self, output: TaskOutput) -> None:
        self._output = output
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if fd in (1, 2):
            self._output.feed(fd, bytes(data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:  # noqa: ARG002  (asyncio's signature)
        if fd in (1, 2):
            self._output.flush(fd)

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002  (asyncio's signature)
        self.closed.set()

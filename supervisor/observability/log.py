"""structlog configuration, done once per process.

JSON lines on stdout when it is not a TTY (journald keeps them as they are), a
readable console on a TTY. Every line carries the context variables bound
where a scope starts (job id, name, attempt, trace id, request id inside a job).

The daemon writes a line per job at the default level (`run.finished`): with `batch`, lines
logged from a thread that runs an event loop are written together once per pass of that loop
(one write instead of one per line, for the process and for journald), and any line from
another thread, or at exit, writes out what is pending first, so the order holds.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import threading
import time
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream: Any = None, batch: bool = False) -> None:
    """Configure structlog (and stdlib logging of libraries) for this process; `batch`: the lines
    of one event-loop pass are written together (see the module docstring)."""
    import structlog  # noqa: PLC0415 (see LazyLogger)

    out: Any = _LogStream(stream or sys.stdout, batch)  # a TextIO for structlog and logging
    console = is_console(fmt, out)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    # Tracebacks without local variables, on both renderers: a frame's locals may hold a
    # payload's secret, a task's environment or a token, and logs must never carry them.
    renderer: Any = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False))
        if console else structlog.processors.JSONRenderer(serializer=_json_line))
    tail: list[Any] = [] if console else [structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False))]
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),  # one write per line (print makes two)
        cache_logger_on_first_use=True,
    )
    # Libraries log through the stdlib (uvicorn, OpenTelemetry exporters): render their
    # records with the same processors, so journald gets one JSON object per line too.
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))


def _timestamp(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """`timestamp`: UTC, ISO 8601 with microseconds (`2026-12-06T15:07:39.262799Z`), the date
    and time formatted once per second (structlog's TimeStamper builds a datetime per line)."""
    now = time.time()
    sec = int(now)
    if sec != _STAMP[0]:
        _STAMP[:] = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
    event["timestamp"] = f"{_STAMP[1]}.{int((now - sec) * 1_000_000):06d}Z"
    return event


_STAMP: list[Any] = [None, ""]  # the second last formatted, and its text


def _json_line(event: dict[str, Any], default: Any = None, **_: Any) -> str:
    """structlog's JSON rendering with one encoder made once (`json.dumps` builds one per call
    when given `default`)."""
    enc = _ENCODERS.get(default)
    if enc is None:
        enc = _ENCODERS[default] = json.JSONEncoder(default=default).encode
    return enc(event)


_ENCODERS: dict[Any, Any] = {}


def flush() -> None:
    """Write out the lines a batching stream holds (before the process exits without atexit)."""
    for stream in _BATCHING:
        stream.flush_pending()


def is_console(fmt: str, stream: Any = None) -> bool:
    """Whether log format `fmt` renders for a person (structlog's console renderer) on `stream`
    (default stdout): "console", or "auto" on a TTY; else JSON lines."""
    return fmt == "console" or (fmt == "auto" and _LogStream(stream or sys.stdout).isatty())


class _LogStream:
    """Where log lines go: a write or flush that fails because the reader went away (a closed
    pipe, a stopped journald) points fd 1 at /dev/null and drops the line, instead of raising
    into the code that logged (a signal handler among them: the daemon must still drain and
    exit on SIGTERM, and exit 0 without a reader)."""

    # structlog keeps a lock per stream in a WeakKeyDictionary
    __slots__ = ("__weakref__", "_batch", "_inner", "_lock", "_pending", "_scheduled")

    def __init__(self, inner: Any, batch: bool = False) -> None:
        self._inner = inner
        self._batch = batch
        self._pending: list[str] = []  # with batch: lines of this loop pass, not yet written
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop whose pass will write them
        self._lock = threading.RLock()
        if batch:
            _BATCHING.append(self)

    def write(self, text: str) -> int:
        if self._batch:
            with self._lock:
                self._pending.append(text)
            return len(text)
        try:
            return int(self._inner.write(text))
        except (OSError, ValueError):
            self._lost()
            return len(text)

    def flush(self) -> None:
        if self._batch:
            loop = asyncio._get_running_loop()  # noqa: SLF001 (the C fast path; None in a thread without a loop)
            if loop is not None:
                if self._scheduled is not loop:  # once per pass: the lines of the pass go out together
                    self._scheduled = loop  # (a loop that stopped before its pass ended is not waited for)
                    loop.call_soon(self.flush_pending)
                return
            self.flush_pending()
            return
        try:
            self._inner.flush()
        except (OSError, ValueError):
            self._lost()

    def flush_pending(self) -> None:
        with self._lock:
            self._scheduled = None
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            try:
                self._inner.write(text)
                self._inner.flush()
            except (OSError, ValueError):
                self._lost()

    def isatty(self) -> bool:
        try:
            return bool(self._inner.isatty())
        except ValueError:
            return False

    def _lost(self) -> None:
        # The stream's buffer still holds what failed; with fd 1 on /dev/null the next flush,
        # and the one at exit, succeed. Any other stream (a test's) is simply no longer written.
        inner: Any = self._inner
        if any(inner is std for std in (sys.stdout, sys.__stdout__)):
            import os  # noqa: PLC0415

            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.close(devnull)
                inner.flush()
            except (OSError, ValueError):
                pass
        self._inner = _NULL


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


_NULL = _Null()
_BATCHING: list[_LogStream] = []  # streams with lines to write out at exit
atexit.register(flush)


class LazyLogger:
    """`structlog.get_logger(name)`, with structlog imported at the first line logged.

    For modules a quick CLI command imports without logging anything (telemetry, presence,
    the client): importing structlog costs ~0.04 s of CPU (it loads rich's tracebacks).
    """

    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            import structlog  # noqa: PLC0415

            logger = self._logger = structlog.get_logger(self._name)
        return getattr(logger, attr)

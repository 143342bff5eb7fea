"""structlog configuration, done once per process.

JSON lines on stdout when it is not a TTY (journald keeps them as they are), a
readable console on a TTY. Every line carries the context variables bound
where a scope starts (job id, name, attempt, trace id, request id inside a job).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog (and stdlib logging of libraries) for this process."""
    import structlog  # noqa: PLC0415 (see LazyLogger)

    out: Any = _LogStream(stream or sys.stdout)  # a TextIO for structlog and logging
    console = is_console(fmt, out)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks without local variables, on both renderers: a frame's locals may hold a
    # payload's secret, a task's environment or a token, and logs must never carry them.
    renderer: Any = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False))
        if console else structlog.processors.JSONRenderer())
    tail: list[Any] = [] if console else [structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False))]
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
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


def is_console(fmt: str, stream: Any = None) -> bool:
    """Whether log format `fmt` renders for a person (structlog's console renderer) on `stream`
    (default stdout): "console", or "auto" on a TTY; else JSON lines."""
    return fmt == "console" or (fmt == "auto" and _LogStream(stream or sys.stdout).isatty())


class _LogStream:
    """Where log lines go: a write or flush that fails because the reader went away (a closed
    pipe, a stopped journald) points fd 1 at /dev/null and drops the line, instead of raising
    into the code that logged (a signal handler among them: the daemon must still drain and
    exit on SIGTERM, and exit 0 without a reader)."""

    __slots__ = ("__weakref__", "_inner")  # structlog keeps a lock per stream in a WeakKeyDictionary

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            return int(self._inner.write(text))
        except (OSError, ValueError):
            self._lost()
            return len(text)

    def flush(self) -> None:
        try:
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

"""A dependency-free client for systemd's sd_notify protocol (SPEC §10).

This module owns the datagrams the daemon sends to its service manager:
READY=1 after start, STATUS= lines, STOPPING=1 when the drain begins,
WATCHDOG=1 keep-alives and EXTEND_TIMEOUT_USEC= while a slow start or stop is
still making progress. See sd_notify(3).

Outside systemd (no ``NOTIFY_SOCKET``) every method is a cheap no-op, so
callers never need to check. Sending never raises: a lost notification must
not take the daemon down, and systemd itself treats the protocol as
best-effort.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence

import structlog

__all__ = ["Notifier"]

log = structlog.get_logger(__name__)


class Notifier:
    """Sends sd_notify messages to the socket systemd gave us.

    Args:
        socket_path: The ``NOTIFY_SOCKET`` value: a filesystem path, or an
            abstract socket name starting with ``@``. None disables sending.
        watchdog_usec: The ``WATCHDOG_USEC`` value, if any.
        watchdog_pid: The ``WATCHDOG_PID`` value, if any: the watchdog is
            meant for that process only.
    """

    def __init__(
        self,
        socket_path: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address = _address(socket_path) if socket_path else None
        self._socket_path = socket_path or None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Build a notifier from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        Args:
            environ: Where to read them; defaults to `os.environ`.

        Malformed watchdog values are treated as unset (and logged at debug):
        the daemon must start even if the unit sets something odd.
        """
        env = os.environ if environ is None else environ
        return cls(
            socket_path=env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_positive_int(env, "WATCHDOG_USEC"),
            watchdog_pid=_positive_int(env, "WATCHDOG_PID"),
        )

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    @property
    def socket_path(self) -> str | None:
        """The ``NOTIFY_SOCKET`` value in use, or None."""
        return self._socket_path

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call `watchdog`, in seconds, or None if no watchdog applies.

        Half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) recommends, so
        one late ping never trips the watchdog. None when ``WATCHDOG_USEC``
        is unset or ``WATCHDOG_PID`` names another process (the watchdog was
        set up for our parent, say, and pings from us would be ignored).
        """
        if self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd start-up is complete (``READY=1``), optionally with a status."""
        return self._send_fields([("READY", "1"), ("STATUS", status)])

    def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status`` (``STATUS=``)."""
        return self._send_fields([("STATUS", text)])

    def stopping(self, status: str | None = None) -> bool:
        """Tell systemd shutdown has begun (``STOPPING=1``), optionally with a status."""
        return self._send_fields([("STOPPING", "1"), ("STATUS", status)])

    def watchdog(self) -> bool:
        """Send a keep-alive ping (``WATCHDOG=1``)."""
        return self._send_fields([("WATCHDOG", "1")])

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the current start/stop timeout fires.

        Sends ``EXTEND_TIMEOUT_USEC=``; systemd (>= 236) then allows that much
        time from now, so a long drain that is making progress can keep
        calling this instead of being killed at ``TimeoutStopSec``.
        """
        usec = max(0, int(seconds * 1_000_000))
        return self._send_fields([("EXTEND_TIMEOUT_USEC", str(usec))])

    def notify(self, **fields: str | int | float | bool) -> bool:
        """Send arbitrary fields in one datagram: ``notify(STATUS="x", MAINPID=42)``.

        Values are sent as text; booleans become ``1``/``0``. Newlines in a
        value are replaced by spaces because they would end the field.

        Returns:
            True if a datagram was sent; False when disabled, empty or failed.
        """
        return self._send_fields(list(fields.items()))

    def _send_fields(self, fields: Sequence[tuple[str, str | int | float | bool | None]]) -> bool:
        lines: list[str] = []
        for key, value in fields:
            if value is None:
                continue
            text = str(int(value)) if isinstance(value, bool) else str(value)
            lines.append(f"{key}={text.replace(chr(10), ' ')}")
        if not lines:
            return False
        return self._send("\n".join(lines))

    def _send(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            # A fresh socket per message, as libsystemd does: nothing to leak
            # or share across fork(), and these messages are rare.
            # MSG_DONTWAIT: a service manager that stops reading must never block the
            # daemon's loop; a dropped WATCHDOG=1 is harmless at twice the required rate.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            log.debug("sdnotify.send_failed", socket=self._socket_path, error=str(exc),
                      message=message)
            return False
        return True


def _address(socket_path: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: the kernel wants a leading NUL.
    if socket_path.startswith("@"):
        return b"\0" + socket_path[1:].encode("utf-8")
    return socket_path


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        log.debug("sdnotify.bad_env", name=name, value=raw)
        return None
    return value if value > 0 else None

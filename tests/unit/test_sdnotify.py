"""sd_notify client: exact datagrams on a real AF_UNIX socket, no-op outside systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.daemon.sdnotify import Notifier

pytestmark = pytest.mark.timeout(10)

#: Every receive is bounded: a missing datagram fails the test, never hangs it.
RECV_DEADLINE_S = 5.0


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd, named by NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(RECV_DEADLINE_S)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield sock
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def assert_nothing_pending(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(RECV_DEADLINE_S)


def test_sends_exact_datagrams(notify_socket: socket.socket) -> None:
    # Given a notifier built from the environment systemd would set
    notifier = Notifier.from_env()
    assert notifier.enabled

    # When each kind of message is sent, Then each arrives as exactly one datagram
    assert notifier.ready()
    assert recv(notify_socket) == "READY=1"
    assert notifier.status("draining 3 jobs")
    assert recv(notify_socket) == "STATUS=draining 3 jobs"
    assert notifier.stopping()
    assert recv(notify_socket) == "STOPPING=1"
    assert notifier.watchdog()
    assert recv(notify_socket) == "WATCHDOG=1"
    assert notifier.extend_timeout(15)
    assert recv(notify_socket) == "EXTEND_TIMEOUT_USEC=15000000"
    assert notifier.extend_timeout(0.25)
    assert recv(notify_socket) == "EXTEND_TIMEOUT_USEC=250000"
    assert_nothing_pending(notify_socket)


def test_ready_and_stopping_with_status_share_one_datagram(notify_socket: socket.socket) -> None:
    # Given a notifier
    notifier = Notifier.from_env()

    # When ready and stopping carry a status
    notifier.ready(status="serving 4 job types")
    notifier.stopping(status="draining")

    # Then each is one datagram with newline-separated fields
    assert recv(notify_socket) == "READY=1\nSTATUS=serving 4 job types"
    assert recv(notify_socket) == "STOPPING=1\nSTATUS=draining"


def test_notify_arbitrary_fields(notify_socket: socket.socket) -> None:
    # Given a notifier
    notifier = Notifier.from_env()

    # When sending several fields, a bool and a value with a newline
    assert notifier.notify(STATUS="line one\nline two", MAINPID=42, READY=True)

    # Then they arrive in order, the newline flattened so it cannot start a field
    assert recv(notify_socket) == "STATUS=line one line two\nMAINPID=42\nREADY=1"
    # And an empty notify sends nothing
    assert not notifier.notify()
    assert_nothing_pending(notify_socket)


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given systemd's abstract-namespace form "@name" (Linux)
    name = f"job-supervisor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(RECV_DEADLINE_S)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)

        # When notifying
        assert Notifier.from_env().ready()

        # Then the datagram reaches the abstract socket
        assert recv(sock) == "READY=1"


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no NOTIFY_SOCKET (not started by systemd)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()

    # Then every call is a quiet no-op
    assert not notifier.enabled
    assert notifier.socket_path is None
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.stopping()
    assert not notifier.watchdog()
    assert not notifier.extend_timeout(5)
    assert not notifier.notify(STATUS="x")


def test_send_failure_never_raises(tmp_path: Path) -> None:
    # Given a NOTIFY_SOCKET that names nothing (systemd went away)
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})

    # When sending, Then it reports failure instead of raising
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval_s == 15.0


def test_watchdog_interval_for_our_pid_only() -> None:
    # Given WATCHDOG_PID naming us, then another process
    ours = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}

    # Then only our own pid gets an interval
    assert Notifier.from_env(ours).watchdog_interval_s == 1.0
    assert Notifier.from_env(other).watchdog_interval_s is None


@pytest.mark.parametrize("value", [None, "", "0", "-5", "soon"])
def test_watchdog_interval_none_when_unset_or_invalid(value: str | None) -> None:
    env: dict[str, str] = {} if value is None else {"WATCHDOG_USEC": value}
    assert Notifier.from_env(env).watchdog_interval_s is None

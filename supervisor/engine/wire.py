"""A lean Redis connection for the hot path: hiredis packs every command and parses every reply.

redis-py stays the client for everything else (reads, admin, TLS). The transition scripts,
the daemon's blocking waits and enqueues, a few calls per job batch or one per `enqueue`, go through
this module instead, because redis-py spends ~100 µs of Python per command on the asyncio
path (a Task per send under a socket timeout, packing in Python, a pool checkout): measured
on a 2-core box, 21-argument EVALSHA round trips ran at 5,500/s through redis-py and 15,900/s
through an `asyncio.Protocol` fed to a `hiredis.Reader` (BENCHMARKS.md).

- `AsyncWire`: one connection, shared by every coroutine of a process. Calls are pipelined
  as they come (replies are matched in order), so a claim and a completion issued by two
  loops travel together instead of taking turns.
- `SyncWire`: a blocking socket for `SyncClient`, guarded by a lock (no event-loop thread hop).
  It polls for a reply for a short while before it sleeps (`SyncWire` says when and why).
- `PackedCall`: a script call whose fixed part is packed once, for one-at-a-time enqueue.

`AsyncWire` and `SyncWire` are the fast implementations of `supervisor.engine.transport`'s protocols.
Both speak redis:// and unix:// with AUTH and SELECT taken from the redis-py client they
are built from (`params_of`) or from the URL itself (`WireParams.from_url`, so a quick CLI
command never imports redis-py); for rediss:// (TLS) both return None and the caller keeps
using redis-py. A script is called by SHA and loaded on NOSCRIPT (`_reload`, the one place
each wire handles it), which is safe to repeat: NOSCRIPT means it did not run. Errors are
redis-py's exception types, so callers handle one family: `ConnectionError` when the link drops
(every call in flight fails; the next call reconnects), `TimeoutError` when Redis does not answer within `timeout_s`
(the connection is dropped: a late reply must never be read as another call's), and
`ResponseError` for an error reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis

if TYPE_CHECKING:
    from redis.exceptions import ResponseError


@cache
def redis_errors() -> ModuleType:
    """redis-py's exception module: the one family of errors the wire raises (see above).

    Imported on first use (an error, an error reply), not with this module: importing
    redis-py costs ~0.18 s of CPU (redis 8 loads redis.asyncio and OpenTelemetry's metrics
    SDK), more than the rest of a quick CLI command that reads through a `SyncWire`.
    """
    import redis.exceptions  # noqa: PLC0415

    return redis.exceptions


#: How replies are decoded: bytes that are not UTF-8 (a foreign or hostile value in a key) become
#: lone surrogates instead of an exception inside the reader, which would drop the connection
#: every call shares; the record parsers then report them (`supervisor.engine.records`). Done by hiredis
#: in C: nothing is added to the common path.
_DECODE_ERRORS = "surrogateescape"


@dataclass(frozen=True, slots=True)
class WireParams:
    """Where and how to connect: TCP host/port or a unix socket path, credentials, database."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    connect_timeout_s: float = 5.0
    timeout_s: float = 30.0

    @classmethod
    def from_url(cls, url: str, connect_timeout_s: float = 5.0, timeout_s: float = 30.0) -> WireParams | None:
        """What `params_of` gives for a redis-py client made from `url`, read without redis-py
        (redis-py's own URL rules); None for what the caller should leave to redis-py: rediss://
        (TLS), a query option other than `db`, a port or db that is not a number."""
        scheme, sep, _ = url.partition("://")
        if not sep or scheme.lower() not in ("redis", "unix"):
            return None
        tcp = scheme.lower() == "redis"
        parts = urlparse(url)
        query = {name: values[0] for name, values in parse_qs(parts.query).items() if values}
        if query.keys() - {"db"}:
            return None
        try:
            port = parts.port
            if "db" in query:
                db = int(query["db"])
            elif tcp and parts.path:
                db = int(unquote(parts.path).replace("/", "") or 0)
            else:
                db = 0
        except ValueError:
            return None
        return cls(
            host=unquote(parts.hostname) if tcp and parts.hostname else "127.0.0.1",
            port=(port or 6379) if tcp else 6379,
            path=None if tcp else unquote(parts.path) or None,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=db, connect_timeout_s=connect_timeout_s, timeout_s=timeout_s,
        )


def params_of(client: Any, timeout_s: float = 30.0) -> WireParams | None:
    """The connection parameters of a redis-py client, or None when the wire cannot speak them (TLS; a
    Sentinel group's master, which has no fixed address: `supervisor.engine.topology.SentinelWire`)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or "SSL" in pool.connection_class.__name__ or hasattr(pool, "sentinel_manager"):
        return None
    kw = pool.connection_kwargs
    return WireParams(
        host=kw.get("host") or "127.0.0.1", port=int(kw.get("port") or 6379), path=kw.get("path"),
        username=kw.get("username"), password=kw.get("password"), db=int(kw.get("db") or 0),
        connect_timeout_s=float(kw.get("socket_connect_timeout") or 5.0), timeout_s=timeout_s,
    )


class Script:
    """A Lua script called by SHA (loaded on first NOSCRIPT)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # Redis's script id


class PackedCall:
    """An EVALSHA of one shape, its leading keys and arguments packed to RESP once.

    For a hot path that repeats a call with only its last few arguments changing:
    `pack(*tail)` encodes just those (str values), about 3x cheaper than packing the
    whole command each time. `SyncWire.evalsha_packed` / `AsyncWire.evalsha_packed` send it.
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, script: Script, keys: Sequence[str], args: Sequence[Any], tail: int) -> None:
        cmd = ("EVALSHA", script.sha, len(keys), *keys, *args)
        packed = hiredis.pack_command(cmd)
        self._head = b"*%d\r\n" % (len(cmd) + tail) + packed[packed.index(b"\r\n") + 2:]
        self._tail = tail

    def pack(self, *tail: str) -> bytes:
        """The whole command, with `tail` (as many values as declared) as its last arguments."""
        if len(tail) != self._tail:
            raise ValueError(f"this call takes {self._tail} more arguments, not {len(tail)}")
        parts = [self._head]
        for value in tail:
            data = value.encode()
            parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
        return b"".join(parts)


def _evalsha(script: Script, keys: Sequence[str], args: Sequence[Any]) -> bytes:
    packed: bytes = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
    return packed


def _hello(params: WireParams) -> list[tuple[Any, ...]]:
    cmds: list[tuple[Any, ...]] = []
    if params.password is not None:
        cmds.append(("AUTH", params.username, params.password) if params.username else ("AUTH", params.password))
    if params.db:
        cmds.append(("SELECT", params.db))
    return cmds


def _error(reply: hiredis.ReplyError) -> ResponseError:
    error: ResponseError = redis_errors().ResponseError(str(reply))
    return error


def _raised(reply: Any) -> Any:
    """A reply of a `SyncWire`: raised as a ResponseError when it is an error reply."""
    if isinstance(reply, hiredis.ReplyError):
        raise _error(reply)
    return reply


def is_noscript(exc: BaseException) -> bool:
    return isinstance(exc, redis_errors().ResponseError) and str(exc).startswith("NOSCRIPT")


class _Protocol(asyncio.Protocol):
    """Feeds replies to the futures of the calls, oldest first."""

    def __init__(self, wire: AsyncWire) -> None:
        self.wire = wire
        self.reader = hiredis.Reader(encoding="utf-8", errors=_DECODE_ERRORS)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.wire._waiting  # noqa: SLF001 (the protocol is the wire's other half)
        while (reply := reader.gets()) is not False:
            fut, _sent = waiting.popleft()
            if fut.done():  # the caller was cancelled; its reply is read and dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                fut.set_exception(_error(reply))
            elif isinstance(reply, list) and hiredis.ReplyError in set(map(type, reply)):
                fut.set_result([_error(r) if isinstance(r, hiredis.ReplyError) else r for r in reply])
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.wire._lost(self, exc)  # noqa: SLF001  (the wire's own protocol)


class AsyncWire:
    """One pipelined Redis connection for asyncio code (see the module docstring)."""

    def __init__(self, params: WireParams) -> None:
        self.params = params
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        p = self.params
        try:
            async with asyncio.timeout(p.connect_timeout_s):
                if p.path:
                    _, proto = await loop.create_unix_connection(lambda: _Protocol(self), p.path)
                else:
                    _, proto = await loop.create_connection(lambda: _Protocol(self), p.host, p.port)
                    sock = proto.transport.get_extra_info("socket") if proto.transport else None
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                self._protocol = proto
                for cmd in _hello(p):
                    await self._send_packed(proto, hiredis.pack_command(cmd))
        except TimeoutError:
            self._drop(redis_errors().TimeoutError(f"connecting to Redis took over {p.connect_timeout_s:g}s"))
            raise redis_errors().TimeoutError(f"connecting to Redis took over {p.connect_timeout_s:g}s") from None
        except OSError as exc:
            self._drop(None)
            raise redis_errors().ConnectionError(f"cannot connect to Redis at {self._where()}: {exc}") from exc
        except redis_errors().ResponseError:  # AUTH or SELECT refused: a settings problem, reported as Redis said it
            self._drop(None)
            raise
        return proto

    def _where(self) -> str:
        return self.params.path or f"{self.params.host}:{self.params.port}"

    async def _ready(self) -> _Protocol:
        proto = self._protocol
        if proto is not None:
            return proto
        if self._closed:
            raise redis_errors().ConnectionError("the connection is closed")
        if self._connecting is None:  # one connect for every caller that arrives meanwhile
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, fut: asyncio.Future[_Protocol]) -> None:
        self._connecting = None
        if not fut.cancelled():
            fut.exception()  # retrieved here; every caller gets it from its own await

    def _send_packed(self, proto: _Protocol, data: bytes) -> asyncio.Future[Any]:
        assert proto.transport is not None
        proto.transport.write(data)
        return self._expect(proto.loop)

    def _expect(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """A future for the next reply written for (replies come in the order of the commands)."""
        fut = loop.create_future()
        self._waiting.append((fut, loop.time()))
        if self._watchdog is None:
            self._arm_watchdog(loop)
        return fut

    def _arm_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watchdog = loop.call_later(min(self.params.timeout_s, 1.0), self._check_timeout)

    async def call(self, *cmd: Any) -> Any:
        """Send one command and return its reply."""
        proto = self._protocol or await self._ready()
        return await self._send_packed(proto, hiredis.pack_command(cmd))

    async def evalsha_packed(self, script: Script, data: bytes) -> Any:
        """Run `data`, an EVALSHA of `script` packed by a `PackedCall`, loading the script first
        if the server does not have it."""
        proto = self._protocol or await self._ready()
        try:
            return await self._send_packed(proto, data)
        except redis_errors().ResponseError as exc:
            if not is_noscript(exc):
                raise
        return await self._reload(script, data)

    async def _reload(self, script: Script, data: bytes) -> Any:
        """After NOSCRIPT for `data` (an EVALSHA of `script`): load the script, send `data` again.
        The one place this wire handles NOSCRIPT: the call did not run, so running it is safe."""
        await self.call("SCRIPT", "LOAD", script.source)
        proto = self._protocol or await self._ready()
        return await self._send_packed(proto, data)

    async def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script by SHA, loading it first if the server does not have it."""
        return await self.evalsha_packed(script, _evalsha(script, keys, args))

    async def evalsha_stream(self, script: Script, calls: Iterable[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Run `script` once per (key, args), each written as soon as `calls` makes it (it may
        prepare the next while Redis runs this one); the replies in order (`ScriptTransport`)."""
        proto = self._protocol or await self._ready()
        sent = []
        for key, args in calls:  # no await in between: the connection cannot change under us
            data = hiredis.pack_command(("EVALSHA", script.sha, 1, key, *args))
            sent.append((self._send_packed(proto, data), data))
        replies = []
        for fut, data in sent:
            try:
                replies.append(await fut)
            except redis_errors().ResponseError as exc:
                if not is_noscript(exc):
                    raise
                replies.append(await self._reload(script, data))
        return replies

    async def wait(self, key: str, timeout_s: float) -> bool:
        """BZPOPMIN `key` for up to `timeout_s`: True when something woke it."""
        self._outlast(timeout_s)
        return await self.call("BZPOPMIN", key, timeout_s) is not None

    async def wait_then_evalsha(self, wait_keys: list[str], timeout_s: float, script: Script,
                                keys: Sequence[str], args: Sequence[Any]) -> Any:
        """BZPOPMIN `wait_keys`, and the script right behind it in the same write: Redis runs the
        script the moment the wait ends, whatever ended it."""
        self._outlast(timeout_s)
        data = _evalsha(script, keys, args)
        wait: tuple[Any, ...] = ("BZPOPMIN", *wait_keys, timeout_s)
        _, reply = await self._pipelined(hiredis.pack_command(wait) + data, 2)
        if isinstance(reply, redis_errors().ResponseError):
            if not is_noscript(reply):
                raise reply
            return await self._reload(script, data)  # the wait is over; the script runs now
        return reply

    def _outlast(self, timeout_s: float) -> None:
        """This wire's own timeout must outlast a blocking wait of `timeout_s`."""
        if self.params.timeout_s < timeout_s + 10:
            self.params = replace(self.params, timeout_s=timeout_s + 10)

    def blocking(self) -> AsyncWire:
        """A connection of its own for blocking waits (one per waiting queue)."""
        return AsyncWire(self.params)

    async def call_pipelined(self, *cmds: tuple[Any, ...]) -> list[Any]:
        """Send `cmds` back to back and return their replies in order; an error reply is
        returned as its exception (a dropped connection raises). Redis runs a command queued
        behind a blocking one as soon as that one returns, without waiting for us."""
        return await self._pipelined(b"".join(hiredis.pack_command(cmd) for cmd in cmds), len(cmds))

    async def _pipelined(self, data: bytes, count: int) -> list[Any]:
        """`call_pipelined` of `data`, `count` packed commands.

        One write for all of them, and the replies awaited in turn rather than gathered: they
        come in one read, so the caller resumes one event-loop pass after they arrive (the
        latency of an idle fetch loop's wake-up rides on this).
        """
        proto = self._protocol or await self._ready()
        assert proto.transport is not None
        proto.transport.write(data)
        futures = [self._expect(proto.loop) for _ in range(count)]
        replies: list[Any] = []
        try:
            for fut in futures:
                try:
                    replies.append(await fut)
                except redis_errors().ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            for fut in futures:  # a dropped connection or a cancelled caller: nothing left waits on these
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # retrieved: no "never retrieved" warning
            raise
        return replies

    def _check_timeout(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        oldest = self._waiting[0][1]
        if loop.time() - oldest > self.params.timeout_s:
            self._drop(redis_errors().TimeoutError(
                f"Redis at {self._where()} did not answer within {self.params.timeout_s:g}s"))
            return
        self._arm_watchdog(loop)

    def _drop(self, exc: Exception | None) -> None:
        proto, self._protocol = self._protocol, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        self._fail_waiting(exc or redis_errors().ConnectionError(f"lost the connection to Redis at {self._where()}"))

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if self._protocol is proto:
            self._protocol = None
        self._fail_waiting(redis_errors().ConnectionError(
            f"lost the connection to Redis at {self._where()}" + (f": {exc}" if exc else "")))

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for fut, _ in waiting:
            if not fut.done():
                fut.set_exception(exc)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def close(self) -> None:
        self._closed = True
        proto, self._protocol = self._protocol, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


#: Default of `SyncWire(spin_us=...)` and `SyncClient(reply_spin_us=...)`.
DEFAULT_SPIN_US = 200.0
#: Spinning stops for this many calls after this many spins in a row ended without a reply.
_SPIN_MISSES, _SPIN_PAUSE_CALLS = 8, 1000


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class SyncWire:
    """A blocking Redis connection for code without an event loop; safe to share between threads.

    The socket is in blocking mode with the kernel's send and receive timeouts (SO_SNDTIMEO,
    SO_RCVTIMEO), so a call costs one send and one receive system call (Python's own socket
    timeout would `poll()` before each).

    **Reply spinning.** A local Redis answers an enqueue in tens of microseconds, about what
    it costs the kernel to put a sleeping thread to sleep and wake it again. So after a send the
    wire polls the socket (non-blocking receives) for up to `spin_us` before it sleeps in a
    blocking receive; one-at-a-time enqueue ran 15-35 % faster that way on a 2-core VM
    (BENCHMARKS.md). It spins only when it cannot slow anyone down: the machine gives the
    process 2 or more CPUs (on one, the spinning would take the CPU Redis needs), and no other
    Python thread is alive besides the caller and `SyncClient`'s own loop thread (a spinning
    thread takes the GIL back between polls, so other threads would wait). When the reply
    misses the window 8 times in a row (a remote or busy Redis), spinning pauses for 1,000
    calls. `spin_us=0` turns it off.
    """

    def __init__(self, params: WireParams, spin_us: float = DEFAULT_SPIN_US, quiet_threads: int = 1) -> None:
        self.params = params
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader(encoding="utf-8", errors=_DECODE_ERRORS)
        self._lock = threading.Lock()
        self._buf = bytearray(65536)  # recv_into: no fresh 64 KiB bytes object per reply
        self._spin_s = spin_us / 1e6 if spin_us > 0 and _cpus() >= 2 else 0.0
        self._quiet_threads = quiet_threads  # threads alive when the process is otherwise idle
        self._misses = 0  # spins in a row that ended without the reply
        self._paused = 0  # calls left before spinning is tried again

    def _connect(self) -> socket.socket:
        p = self.params
        try:
            if p.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(p.connect_timeout_s)
                sock.connect(p.path)
            else:
                sock = socket.create_connection((p.host, p.port), timeout=p.connect_timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except TimeoutError:
            raise redis_errors().TimeoutError(f"connecting to Redis took over {p.connect_timeout_s:g}s") from None
        except OSError as exc:
            where = p.path or f"{p.host}:{p.port}"
            raise redis_errors().ConnectionError(f"cannot connect to Redis at {where}: {exc}") from exc
        sock.settimeout(None)
        seconds = int(p.timeout_s)
        timeval = struct.pack("ll", seconds, int((p.timeout_s - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self._sock, self._reader = sock, hiredis.Reader(encoding="utf-8", errors=_DECODE_ERRORS)
        for cmd in _hello(p):
            reply = self._exchange(hiredis.pack_command(cmd))
            if isinstance(reply, hiredis.ReplyError):  # AUTH or SELECT refused: reported as Redis said it
                self._reset()
                raise _error(reply)
        return sock

    def _exchange(self, data: bytes) -> Any:
        """Send one packed command and read its reply (an error reply as a hiredis.ReplyError value)."""
        sock = self._sock or self._connect()
        reader, buf = self._reader, self._buf
        try:
            sock.sendall(data)
            reply = reader.gets()
            if reply is False and self._spin_s and self._may_spin():
                reply = self._spin(sock)
            while reply is False:
                got = sock.recv_into(buf)
                if not got:
                    raise OSError("Redis closed the connection")
                reader.feed(buf, 0, got)  # type: ignore[arg-type]  # hiredis reads any buffer; its stub says bytes
                reply = reader.gets()
            return reply
        except BlockingIOError:  # the kernel's SO_RCVTIMEO / SO_SNDTIMEO ran out
            self._reset()
            raise redis_errors().TimeoutError(f"Redis did not answer within {self.params.timeout_s:g}s") from None
        except OSError as exc:
            self._reset()
            raise redis_errors().ConnectionError(f"lost the connection to Redis: {exc}") from exc

    def _may_spin(self) -> bool:
        if self._paused:
            self._paused -= 1
            return False
        return threading.active_count() <= self._quiet_threads

    def _spin(self, sock: socket.socket) -> Any:
        """Poll for the reply for up to `spin_us`; False when it has not come (the caller sleeps)."""
        reader, buf, recv, dontwait = self._reader, self._buf, sock.recv_into, socket.MSG_DONTWAIT
        clock = time.perf_counter
        end = clock() + self._spin_s
        while True:
            try:
                got = recv(buf, 0, dontwait)
            except BlockingIOError:
                if clock() < end:
                    continue
                self._misses += 1
                if self._misses >= _SPIN_MISSES:
                    self._misses, self._paused = 0, _SPIN_PAUSE_CALLS
                return False
            if not got:
                raise OSError("Redis closed the connection")
            reader.feed(buf, 0, got)  # type: ignore[arg-type]  # hiredis reads any buffer; its stub says bytes
            reply = reader.gets()
            if reply is not False:
                self._misses = 0
                return reply

    def _reset(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def call(self, *cmd: Any) -> Any:
        return _raised(self._reply(hiredis.pack_command(cmd)))

    def _reply(self, data: bytes) -> Any:
        with self._lock:
            return self._exchange(data)

    def evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.evalsha_packed(script, _evalsha(script, keys, args))

    def evalsha_packed(self, script: Script, data: bytes) -> Any:
        """Run `data`, an EVALSHA of `script` packed by a `PackedCall`, loading the script first
        if the server does not have it."""
        reply = self._reply(data)
        if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
            self.call("SCRIPT", "LOAD", script.source)
            reply = self._reply(data)
        return _raised(reply)

    def close(self) -> None:
        with self._lock:
            self._reset()


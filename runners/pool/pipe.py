"""The daemon's end of a worker's pipe: non-blocking reads and batched, buffered writes.

The loop never waits on a worker. Reads take every readable message in one
callback (`loop.add_reader`); every message made for a worker in one loop
iteration goes in one write (`Outbox`), and what the pipe does not accept yet
waits in a buffer written by `loop.add_writer`, in order. A worker's death is
EOF here; what it wrote before dying is still read (`drain`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from runners.pool.protocol import unpack

READ_SIZE = 1 << 18  # bytes per read of a worker's pipe (far more than a burst of messages)
_NOTHING: tuple[Any, ...] = ()  # no complete message yet


class Outbox:
    """The pipes with messages to write at the end of this loop iteration (one write each)."""

    __slots__ = ("dirty", "handle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.dirty: list[PipeEnd] = []
        self.handle: asyncio.Handle | None = None

    def flush(self) -> None:
        self.handle = None
        dirty, self.dirty = self.dirty, []
        for end in dirty:
            data = b"".join(end.out)
            end.out.clear()
            end.write(data)


class PipeEnd:
    """One worker's socket as the daemon sees it (the base of `runners.pool.worker.Worker`).

    `open` is False once the worker is dead: nothing more is written then.
    """

    def __init__(self, fd: int, outbox: Outbox) -> None:
        os.set_blocking(fd, False)  # the loop never waits on a worker
        self.fd = fd
        self.outbox = outbox
        self.open = True
        self.reading = True
        self.rbuf = b""  # the start of a line not yet complete
        self.out: list[bytes] = []  # messages to write at the end of this loop iteration
        self.wbuf = bytearray()  # written when the pipe accepts more

    # --- writing ---------------------------------------------------------------------------

    def post(self, line: bytes) -> None:
        """Queue a message; everything queued in one loop iteration goes in one write."""
        if not self.open:
            return
        if not self.out:
            box = self.outbox
            box.dirty.append(self)
            if box.handle is None:
                box.handle = box.loop.call_soon(box.flush)
        self.out.append(line)

    def write(self, data: bytes) -> None:
        if not self.open:
            return
        if self.wbuf:  # earlier bytes still wait for room: keep the order
            self.wbuf += data
            return
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return  # the worker is gone; its sentinel reports it
        if n < len(data):
            self.wbuf += data[n:]
            self.outbox.loop.add_writer(self.fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            n = os.write(self.fd, self.wbuf)
        except BlockingIOError:
            return
        except OSError:
            n = len(self.wbuf)  # gone: drop what is left
        del self.wbuf[:n]
        if not self.wbuf:
            self.outbox.loop.remove_writer(self.fd)

    # --- reading ---------------------------------------------------------------------------

    def read(self) -> Any:
        """The complete messages readable now (a sequence, maybe empty); None at EOF (it stops reading)."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return _NOTHING
        except OSError:
            data = b""
        if not data:
            self.stop_reading()
            return None
        return self._feed(data)

    def drain(self) -> list[Any]:
        """What a dead worker wrote before it died (a result, a start, handed-back jobs)."""
        messages: list[Any] = []
        while self.reading:
            try:
                data = os.read(self.fd, READ_SIZE)
            except OSError:
                break
            if not data:
                break
            messages.extend(self._feed(data))
        return messages

    def _feed(self, data: bytes) -> Any:
        if self.rbuf:
            data = self.rbuf + data
        end = data.rfind(b"\n") + 1
        self.rbuf = data[end:]
        if not end:
            return _NOTHING
        return unpack(data[:end - 1])

    def stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.outbox.loop.remove_reader(self.fd)

    def close_pipe(self) -> None:
        """Stop every transfer and forget what was not written (the worker is dead)."""
        self.open = False
        self.stop_reading()
        if self.wbuf:
            self.outbox.loop.remove_writer(self.fd)
            self.wbuf.clear()
        self.out.clear()

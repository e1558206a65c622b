"""The least asyncio transport for a connected socket to a model server.

`loop.create_connection(sock=...)` builds a general transport and hands it over through
three callbacks and a future, two loop iterations after the request already went out
(connect.py sends it on the bare socket): about 45 us of the event loop per request
here, 30 of them more than this needs (docs/benchmarks.md). With eight requests arriving
together, every request's setup is on the way of the last one to the model server,
whose batch waits for it. This transport registers its reader at once and calls
`connection_made` before returning; it reads, writes what the socket did not take at
once, and closes as asyncio's own socket transport does: `connection_lost` always
comes from the loop, once, and the socket is closed after it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

#: As much as asyncio's own socket transports read at once.
READ_BYTES = 256 * 1024


class SocketTransport(asyncio.Transport):
    """`protocol` on the connected, non-blocking `sock` (the protocol is told at once)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._pending = bytearray()  # written but not yet taken by the socket
        self._reading = False
        self._closing = False
        self._lost_due = False  # connection_lost is scheduled (it comes once)
        protocol.connection_made(self)
        if not self._closing:  # the protocol may have closed it already
            loop.add_reader(self._fd, self._read_ready)
            self._reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sock if name == "socket" else default

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data or self._sock is None:
            return
        if not self._pending:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._force_close(exc)
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._pending += data

    def close(self) -> None:
        """Stop reading; the connection ends once what was written went out."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._pending:
            self._schedule_lost(None)

    def abort(self) -> None:
        """End the connection now; what was not sent yet is dropped."""
        self._force_close(None)

    # -- the loop's callbacks --------------------------------------------------------------

    def _read_ready(self) -> None:
        if self._sock is None:
            return
        try:
            data = self._sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        try:
            if data:
                self._protocol.data_received(data)
                return
            self._stop_reading()
            if not self._protocol.eof_received():
                self.close()
        except Exception as exc:  # noqa: BLE001 - as asyncio: the connection fails with it
            self._force_close(exc)

    def _write_ready(self) -> None:
        if self._sock is None:
            return
        try:
            sent = self._sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        del self._pending[:sent]
        if self._pending:
            return
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._schedule_lost(None)

    # -- internals -------------------------------------------------------------------------

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _force_close(self, exc: Exception | None) -> None:
        """End the connection now (abort, or a failure: `exc`)."""
        if self._lost_due:
            return
        if self._pending:
            self._pending.clear()
            self._loop.remove_writer(self._fd)
        self._closing = True
        self._stop_reading()
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: Exception | None) -> None:
        if not self._lost_due:
            self._lost_due = True
            self._loop.call_soon(self._lost, exc)

    def _lost(self, exc: Exception | None) -> None:
        sock, self._sock = self._sock, None
        try:
            self._protocol.connection_lost(exc)
        finally:
            if sock is not None:
                sock.close()

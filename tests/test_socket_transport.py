"""The model-server connection's own transport (manager/servers/socket_transport.py), on
real loopback sockets: what a protocol is told, and when."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from manager.servers.socket_transport import SocketTransport


def on_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on its own event loop (pytest sees the test's own parameters)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))
    return run


class Recorder(asyncio.Protocol):
    """Everything the transport tells its protocol, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keep_open_on_eof: bool = False) -> None:
        self.events: list[tuple[str, object]] = []
        self.data = bytearray()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.BaseTransport | None = None
        self._keep_open_on_eof = keep_open_on_eof

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.events.append(("data", len(data)))

    def eof_received(self) -> bool:
        self.events.append(("eof", None))
        self.eof.set_result(None)
        return self._keep_open_on_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


def connected(protocol: Recorder | None = None
              ) -> tuple[SocketTransport, Recorder, socket.socket]:
    """A transport on a fresh loopback connection: (it, its protocol, the server's end)."""
    loop = asyncio.get_running_loop()
    ours, theirs = pair()
    protocol = protocol or Recorder(loop)
    return SocketTransport(loop, ours, protocol), protocol, theirs


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: (ours, non-blocking; the server's end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    ours.setblocking(False)
    return ours, theirs


@on_loop
async def test_the_protocol_is_told_at_once_then_reads_until_the_server_closes() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = pair()
    protocol = Recorder(loop)
    transport = SocketTransport(loop, ours, protocol)
    # Told before the constructor returns: a request can be written at once.
    assert protocol.events == [("made", None)]
    assert transport.get_extra_info("socket") is ours
    theirs.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello")
    theirs.close()
    assert await asyncio.wait_for(protocol.lost, 10) is None
    assert bytes(protocol.data) == b"HTTP/1.0 200 OK\r\n\r\nhello"
    assert protocol.events[-2:] == [("eof", None), ("lost", None)]
    assert transport.is_closing()
    assert ours.fileno() == -1  # closed after connection_lost


@on_loop
async def test_what_the_socket_does_not_take_at_once_is_sent_when_it_can() -> None:
    loop = asyncio.get_running_loop()
    transport, protocol, theirs = connected()
    big = bytes(range(256)) * (32 << 10)  # 8 MiB: far more than the socket buffers hold
    transport.write(big)
    transport.write(b"the end")  # queued behind the rest, in order
    transport.close()  # ends the connection only once everything went out
    received = bytearray()
    theirs.setblocking(False)
    while len(received) < len(big) + 7:
        try:
            chunk = await loop.sock_recv(theirs, 1 << 20)
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    assert bytes(received) == big + b"the end"
    assert await asyncio.wait_for(protocol.lost, 10) is None
    theirs.close()


@on_loop
async def test_abort_drops_what_was_not_sent_and_tells_the_protocol_once() -> None:
    transport, protocol, theirs = connected()
    transport.write(b"x" * (8 << 20))
    transport.abort()
    transport.abort()
    transport.close()
    assert protocol.events[-1] == ("made", None)  # connection_lost comes from the loop
    assert await asyncio.wait_for(protocol.lost, 10) is None
    await asyncio.sleep(0)
    assert [e for e, _ in protocol.events].count("lost") == 1
    transport.write(b"after the end")  # ignored, as asyncio's transports do
    theirs.close()


@on_loop
async def test_a_reset_connection_is_lost_with_its_error() -> None:
    _transport, protocol, theirs = connected()
    # SO_LINGER 0: close sends RST instead of FIN.
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    theirs.close()
    error = await asyncio.wait_for(protocol.lost, 10)
    assert isinstance(error, ConnectionResetError)


@on_loop
async def test_a_protocol_that_fails_on_data_ends_the_connection_with_its_error() -> None:
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            raise ValueError("cannot parse this")

    _transport, protocol, theirs = connected(Failing(asyncio.get_running_loop()))
    theirs.sendall(b"garbage")
    error = await asyncio.wait_for(protocol.lost, 10)
    assert isinstance(error, ValueError)
    theirs.close()


@pytest.mark.parametrize("keep_open", [False, True])
@on_loop
async def test_the_protocol_decides_whether_an_end_of_stream_closes(keep_open: bool) -> None:
    transport, protocol, theirs = connected(
        Recorder(asyncio.get_running_loop(), keep_open_on_eof=keep_open))
    theirs.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(protocol.eof, 10)
    if keep_open:
        # Half-closed: it may still write; the connection ends when it closes it.
        transport.write(b"still here")
        assert theirs.recv(100) == b"still here"
        assert not protocol.lost.done()
        transport.close()
    assert await asyncio.wait_for(protocol.lost, 10) is None
    theirs.close()

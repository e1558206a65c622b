"""A connection to a model server with the request already on its way.

`loop.create_connection()` takes several loop iterations (the connect's writer wait,
`connection_made` and the waiter through call_soon) before anything can be written.
On Linux a loopback handshake is over when a non-blocking connect() returns, so the
request is sent on the bare socket at once and its transport is made afterwards
(socket_transport.py), while the server already works on the request (the gateway's
time to first token).
A connection still being established (another machine, a full accept queue, or loopback
on macOS, whose handshake ends on another kernel thread) waits for its handshake first:
Linux says so with EAGAIN from send(), macOS with ENOTCONN. A host name goes through
asyncio, which resolves it. A loopback server's connection opened ahead of the request
(standby.py) is used first when there is one.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import TypeVar, cast

from manager.servers.socket_transport import SocketTransport
from manager.servers.standby import standby

P = TypeVar("P", bound=asyncio.BaseProtocol)


async def connect_and_send(host: str, port: int, request: bytes, make: Callable[[], P],
                           connect_timeout_s: float) -> tuple[P, int]:
    """The protocol made by `make`, connected, and how many bytes of `request` were
    sent already (write the rest through its transport). Raises OSError when the
    server cannot be reached, TimeoutError after `connect_timeout_s`."""
    loop = asyncio.get_running_loop()
    ready = standby().take((host, port))
    if ready is not None:
        taken = await _sent_once_connected(_send_on, ready, request, connect_timeout_s)
        if taken is not None:
            return _transport(loop, ready, make, taken)
        ready.close()  # closed by the server just now: nothing went out, connect anew
    sock = _socket_for(host)
    if sock is None:  # a host name: asyncio resolves it
        _, protocol = await asyncio.wait_for(
            loop.create_connection(make, host, port), connect_timeout_s)
        return protocol, 0
    try:
        _start_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    sent = await _sent_once_connected(_send_now, sock, request, connect_timeout_s)
    return _transport(loop, sock, make, sent)


_Sent = TypeVar("_Sent", int, "int | None")


async def _sent_once_connected(send: Callable[[socket.socket, bytes], _Sent],
                               sock: socket.socket, request: bytes, timeout_s: float
                               ) -> _Sent:
    """What `send` sent of `request` on `sock`; when the handshake is still under way
    (NOT_YET), 0 once it is over (the transport sends it all). `sock` is closed when
    this raises."""
    try:
        sent = send(sock, request)
        if sent == NOT_YET:
            await asyncio.wait_for(_handshake(sock), timeout_s)
            sent = 0
    except BaseException:
        sock.close()
        raise
    return sent


def connection_open(host: str, port: int) -> Callable[[], None]:
    """A request's connection to the server is open: counted (standby.py keeps as many
    idle ones as were open at once). Returns what to call once when it ends."""
    standby().opened((host, port))
    return functools.partial(open_ahead, host, port)


def open_ahead(host: str, port: int) -> None:
    """A request's connection to the server ended: open its next one now (standby.py)."""
    standby().refill((host, port), _connecting)


def _transport(loop: asyncio.AbstractEventLoop, sock: socket.socket,
               make: Callable[[], P], sent: int) -> tuple[P, int]:
    """The protocol made by `make` on the connected `sock` (closed when that fails)."""
    try:
        protocol = make()
        SocketTransport(loop, sock, cast(asyncio.Protocol, protocol))
    except BaseException:
        sock.close()
        raise
    return protocol, sent


def _socket_for(host: str) -> socket.socket | None:
    """A non-blocking TCP socket for an IP address (None for a host name)."""
    family = _family(host)
    if family is None:
        return None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@functools.lru_cache(maxsize=64)
def _family(host: str) -> socket.AddressFamily | None:
    """The address family of an IP address, None for a host name (asked per request:
    parsing the address each time costs more than the connect's own Python work)."""
    try:
        version = ipaddress.ip_address(host).version
    except ValueError:
        return None
    return socket.AF_INET6 if version == 6 else socket.AF_INET


#: What `_send_now` and `_send_on` return for a connection whose handshake is still under way.
NOT_YET = -1


def _not_connected_yet(exc: OSError) -> bool:
    """send() or recv() on a socket still connecting: EAGAIN on Linux, ENOTCONN on macOS."""
    return isinstance(exc, BlockingIOError) or exc.errno == errno.ENOTCONN


def _send_now(sock: socket.socket, request: bytes) -> int:
    """Send what a connection takes of `request` at once: the bytes sent, or NOT_YET
    while it is still being established (nothing went out). Raises OSError when the
    connection failed."""
    try:
        return sock.send(request)
    except OSError as exc:
        if _not_connected_yet(exc):
            return NOT_YET
        raise


def _send_on(sock: socket.socket, request: bytes) -> int | None:
    """`_send_now` on an idle connection kept open: None when the server closed it."""
    try:
        return _send_now(sock, request)
    except OSError:
        return None


async def _handshake(sock: socket.socket) -> None:
    """Until the connecting `sock` is connected (it turns writable); raises OSError when
    the connection failed. Not a second connect(): on macOS that raises EISCONN once the
    handshake is over, and on Linux too if it ended since send() was tried."""
    loop = asyncio.get_running_loop()
    writable: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def turned_writable() -> None:
        if not writable.done():
            writable.set_result(None)

    loop.add_writer(fd, turned_writable)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


def _connecting(address: tuple[str, int]) -> socket.socket:
    """A socket to an IP address with its connect started. Raises OSError when it was
    refused at once."""
    sock = _socket_for(address[0])
    if sock is None:
        raise OSError(f"{address[0]} is not an IP address")
    try:
        _start_connect(sock, address)
    except OSError:
        sock.close()
        raise
    return sock


def _start_connect(sock: socket.socket, address: tuple[str, int]) -> None:
    """Start connecting the non-blocking `sock`; raises OSError when refused at once."""
    error = sock.connect_ex(address)
    if error not in (0, errno.EINPROGRESS):
        raise OSError(error, os.strerror(error))

"""A connection to a model server with the request already on its way.

`loop.create_connection()` takes several loop iterations (the connect's writer wait,
`connection_made` and the waiter through call_soon) before anything can be written.
On this machine a TCP handshake is over when a non-blocking connect() returns, so the
request is sent on the bare socket at once and its transport is made afterwards
(socket_transport.py), while the server already works on the request (the gateway's
time to first token).
A connection still being established (another machine, a full accept queue) waits for
its handshake first; a host name goes through asyncio, which resolves it. A loopback
server's connection opened ahead of the request (standby.py) is used first when there is
one.
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
        sent = _send_on(ready, request)
        if sent is not None:
            return _transport(loop, ready, make, sent)
        ready.close()  # closed by the server just now: nothing went out, connect anew
    sock = _socket_for(host)
    if sock is None:  # a host name: asyncio resolves it
        _, protocol = await asyncio.wait_for(
            loop.create_connection(make, host, port), connect_timeout_s)
        return protocol, 0
    try:
        sent = _send_at_once(sock, (host, port), request)
        if sent is None:  # the handshake is still under way
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), connect_timeout_s)
            sent = 0
    except BaseException:
        sock.close()
        raise
    return _transport(loop, sock, make, sent)


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


def _send_on(sock: socket.socket, request: bytes) -> int | None:
    """Send what an open connection takes of `request` at once (0 while it is still
    being established: its transport sends it then); None when the server closed it."""
    try:
        return sock.send(request)
    except BlockingIOError:
        return 0
    except OSError:
        return None


def _send_at_once(sock: socket.socket, address: tuple[str, int], request: bytes
                  ) -> int | None:
    """Start connecting and send what the socket takes of `request` at once; None when
    the connection is not established yet. Raises OSError when it was refused."""
    _start_connect(sock, address)
    try:
        return sock.send(request)
    except BlockingIOError:
        return None


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

"""A connection to each local model server, opened ahead of its next request.

mlx_lm speaks HTTP/1.0: every request needs a new connection, and the server's answer
to one begins with its accept loop waking and starting a thread for it. That start is
on the way to the first token: about half a millisecond of added time to first token
when requests follow each other, measured on a small machine through the gateway
(bench/gateway.py; docs/benchmarks.md also records a higher p95 with it). So when a
request's connection ends, the next one is opened at once (`refill`, through
connect.open_ahead): the server accepts it and parks a thread on it while nobody
waits, and the next request is written on it (`take`).

Only loopback servers get one: a connection idle across a network can be dropped by a
firewall without either end hearing of it, and a request written on it would wait for
an answer that never comes. A server that closes its side (it stopped, or was
restarted) makes the socket readable, and it is closed then (`loop.add_reader`), not
kept until the next request finds it dead; `take` checks once more anyway.

One `Standby` per event loop (the gateway's), made on first use; what it holds is closed
when the loop is collected.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

Address = tuple[str, int]


class Standby:
    """At most one idle, connected socket per server address, for the running loop (its
    methods are called on it)."""

    def __init__(self) -> None:
        self._socks: dict[Address, socket.socket] = {}

    def take(self, address: Address) -> socket.socket | None:
        """The address's idle connection, still open, or None; it is the caller's now."""
        sock = self._socks.pop(address, None)
        if sock is None:
            return None
        asyncio.get_running_loop().remove_reader(sock.fileno())
        if not _open_and_quiet(sock):
            sock.close()
            return None
        return sock

    def refill(self, address: Address,
               connect: Callable[[Address], socket.socket]) -> None:
        """Open the address's next connection with `connect` (a socket whose connect
        has started; OSError when refused), unless one is there or the server is not
        on loopback. Never raises: without it the next request connects as usual."""
        if address in self._socks or not _loopback(address[0]):
            return
        try:
            sock = connect(address)
        except OSError as exc:  # the server is gone: the next request will say so
            log.debug("no standby connection to %s:%s (%s)", *address, exc)
            return
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drop, address, sock)
        self._socks[address] = sock

    def __len__(self) -> int:
        return len(self._socks)

    def _drop(self, address: Address, sock: socket.socket) -> None:
        """The idle connection became readable: the server closed it (or refused it)."""
        asyncio.get_running_loop().remove_reader(sock.fileno())
        if self._socks.get(address) is sock:
            del self._socks[address]
        sock.close()


def _close_all(socks: dict[Address, socket.socket]) -> None:
    """The loop is gone (its selector with it): close what is left."""
    for sock in socks.values():
        sock.close()
    socks.clear()


# Values must not refer to their loop (a WeakKeyDictionary's values are strong).
_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Standby] = \
    weakref.WeakKeyDictionary()


def standby() -> Standby:
    """The running loop's standby connections (closed when the loop is collected)."""
    loop = asyncio.get_running_loop()
    found = _BY_LOOP.get(loop)
    if found is None:
        found = _BY_LOOP[loop] = Standby()
        weakref.finalize(loop, _close_all, found._socks)
    return found


def _open_and_quiet(sock: socket.socket) -> bool:
    """Connected (or still connecting), the server has not closed it and sent nothing."""
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"": the server closed it; bytes: unasked for
    except BlockingIOError:
        return True  # nothing to read: open and idle
    except OSError:
        return False  # refused or reset
    return False


@functools.lru_cache(maxsize=64)
def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolved by asyncio on each request


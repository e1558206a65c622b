"""Connections to each local model server, opened ahead of its next requests.

mlx_lm speaks HTTP/1.0: every request needs a new connection, and the server's answer
to one begins with its accept loop waking and starting a thread for it. That start is
on the way to the first token: about half a millisecond of added time to first token
when requests follow each other, measured on a small machine through the gateway
(bench/gateway.py), and for concurrent requests it comes once per request, one after
another, while the server's batch waits for the last of them. So when a request's
connection ends, the next one is opened at once (`refill`, through connect.open_ahead):
the server accepts it and parks a thread on it while nobody waits, and a next request is
written on it (`take`). As many are kept as the server's requests were open at once
lately (`opened` counts them): one for requests that follow each other, eight for eight
agents at once.

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
import errno
import functools
import ipaddress
import logging
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Address = tuple[str, int]


#: The most idle connections kept for one server (one parked thread each in mlx_lm).
MOST_IDLE = 8


@dataclass
class _Pool:
    """One server address's idle connections and how many of its requests are open."""

    idle: list[socket.socket] = field(default_factory=list)
    busy: int = 0  # request connections open now
    peak: int = 0  # the most open at once since the last time none was


class Standby:
    """Idle, connected sockets per server address, for the running loop (its methods are
    called on it): as many as the server's requests were open at once lately."""

    def __init__(self) -> None:
        self._pools: dict[Address, _Pool] = {}

    def take(self, address: Address) -> socket.socket | None:
        """One of the address's idle connections, still open, or None; it is the
        caller's now."""
        pool = self._pools.get(address)
        while pool is not None and pool.idle:
            sock = pool.idle.pop(0)  # the oldest: surely accepted, its thread parked
            asyncio.get_running_loop().remove_reader(sock.fileno())
            if _open_and_quiet(sock):
                return sock
            sock.close()
        return None

    def opened(self, address: Address) -> None:
        """A request's connection to the address is open (counted until `refill`)."""
        pool = self._pool(address)
        if pool is None:
            return
        pool.busy += 1
        pool.peak = 1 if pool.busy == 1 else max(pool.peak, pool.busy)

    def refill(self, address: Address,
               connect: Callable[[Address], socket.socket]) -> None:
        """A request's connection to the address ended: keep as many idle ones as its
        requests were open at once since none was (at least one, at most MOST_IDLE;
        while some stay open that is the most at once all along), opening one with
        `connect` (a socket whose connect has started; OSError when refused) or closing
        the newest. Never raises: without one the next request connects as usual."""
        pool = self._pool(address)
        if pool is None:
            return
        pool.busy = max(0, pool.busy - 1)
        want = min(max(pool.peak, 1), MOST_IDLE)
        while len(pool.idle) > want:  # fewer requests at once than before: let go
            self._close(pool.idle.pop())
        if len(pool.idle) == want:
            return
        try:
            sock = connect(address)
        except OSError as exc:  # the server is gone: the next request will say so
            log.debug("no standby connection to %s:%s (%s)", *address, exc)
            return
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drop, pool, sock)
        pool.idle.append(sock)

    def __len__(self) -> int:
        return sum(len(pool.idle) for pool in self._pools.values())

    def _pool(self, address: Address) -> _Pool | None:
        """The address's pool, made on first use; None for a server off loopback."""
        if not _loopback(address[0]):
            return None
        return self._pools.setdefault(address, _Pool())

    def _drop(self, pool: _Pool, sock: socket.socket) -> None:
        """An idle connection became readable: the server closed it (or refused it)."""
        if sock in pool.idle:
            pool.idle.remove(sock)
        self._close(sock)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()


def _close_all(pools: dict[Address, _Pool]) -> None:
    """The loop is gone (its selector with it): close what is left."""
    for pool in pools.values():
        for sock in pool.idle:
            sock.close()
        pool.idle.clear()


# Values must not refer to their loop (a WeakKeyDictionary's values are strong).
_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Standby] = \
    weakref.WeakKeyDictionary()


def standby() -> Standby:
    """The running loop's standby connections (closed when the loop is collected)."""
    loop = asyncio.get_running_loop()
    found = _BY_LOOP.get(loop)
    if found is None:
        found = _BY_LOOP[loop] = Standby()
        weakref.finalize(loop, _close_all, found._pools)
    return found


def _open_and_quiet(sock: socket.socket) -> bool:
    """Connected (or still connecting), the server has not closed it and sent nothing."""
    try:
        sock.recv(1, socket.MSG_PEEK)  # b"": the server closed it; bytes: unasked for
    except BlockingIOError:
        return True  # nothing to read: open and idle
    except OSError as exc:
        return exc.errno == errno.ENOTCONN  # still connecting (macOS), else refused or reset
    return False


@functools.lru_cache(maxsize=64)
def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: resolved by asyncio on each request


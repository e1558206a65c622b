"""Connections to the model servers opened ahead of need.

mlx_lm closes each connection after its answer, and a TCP handshake on the event loop
(several loop turns) is time a gateway client waits for its first token: `Connections`
keeps one connection per server open and unused, hands it to the next request
(`Upstream.open(..., connections=)`) and opens the next one in the background.
"""

from __future__ import annotations

import asyncio
import logging

from manager.servers.upstream import (
    CONNECT_TIMEOUT_S,
    READ_TIMEOUT_S,
    Target,
    _Reader,
    connect,
)

log = logging.getLogger(__name__)

#: A connection opened ahead of need is closed after this long unused.
SPARE_IDLE_S = 30.0
#: The most spare connections kept per server.
MOST_SPARES = 16

Key = tuple[str, int]


class Connections:
    """Connections opened ahead of need, per server: `take` hands one to a request and
    the pool is refilled in the background. As many are kept as requests recently came
    together (up to MOST_SPARES): mlx_lm admits requests to a running batch only between
    bursts of generation, so if one request of a burst came on a spare and the others had
    to connect first, it would start a batch alone and they would wait for the next
    admission (hundreds of ms). A spare unused for SPARE_IDLE_S is closed, and one fewer
    kept. One per event loop and owner (the gateway); `close` ends them."""

    def __init__(self, read_timeout_s: float = READ_TIMEOUT_S,
                 idle_s: float = SPARE_IDLE_S, most: int = MOST_SPARES) -> None:
        self._read_timeout_s = read_timeout_s
        self._idle_s = idle_s
        self._most = most
        self._spares: dict[Key, list[tuple[_Reader, asyncio.TimerHandle]]] = {}
        self._opening: dict[Key, set[asyncio.Task[None]]] = {}
        self._want: dict[Key, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, target: Target) -> _Reader | None:
        """A spare connection to the server that is still open, else None (the request
        connects itself, and one more spare is kept from now on)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a transport serves only the loop that made it
            self._spares.clear()
            self._opening.clear()
            self._loop = loop
        key = (target.host, target.port)
        spares = self._spares.get(key, [])
        found = None
        while spares and found is None:
            reader, expiry = spares.pop()
            expiry.cancel()
            if reader.idle:
                found = reader
            else:
                reader.abort()
        if found is None:
            self._want[key] = min(self._most, self._want.get(key, 0) + 1)
        self._refill(key)
        return found

    def spares(self, target: Target) -> int:
        """Spare connections to the server ready now."""
        return len(self._spares.get((target.host, target.port), ()))

    def close(self) -> None:
        for tasks in self._opening.values():
            for task in tasks:
                task.cancel()
        self._opening.clear()
        for spares in self._spares.values():
            for reader, expiry in spares:
                expiry.cancel()
                reader.abort()
        self._spares.clear()

    def _refill(self, key: Key) -> None:
        opening = self._opening.setdefault(key, set())
        for _ in range(self._want.get(key, 1) - len(self._spares.get(key, ())) - len(opening)):
            task = asyncio.ensure_future(self._open(key))
            opening.add(task)
            task.add_done_callback(opening.discard)

    async def _open(self, key: Key) -> None:
        try:
            reader = await connect(Target(key[0], key[1], "/"), self._read_timeout_s,
                                   CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:  # the request that needs it will say so
            log.info("could not open a spare connection to %s:%s: %s", *key, exc)
            return
        expiry = asyncio.get_running_loop().call_later(self._idle_s, self._expire, key,
                                                       reader)
        self._spares.setdefault(key, []).append((reader, expiry))

    def _expire(self, key: Key, reader: _Reader) -> None:
        spares = self._spares.get(key, [])
        for n, (spare, _) in enumerate(spares):
            if spare is reader:
                del spares[n]
                break
        reader.abort()
        self._want[key] = max(1, self._want.get(key, 1) - 1)

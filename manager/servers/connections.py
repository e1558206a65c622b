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


class Connections:
    """One connection per server opened ahead of need (mlx_lm closes each after its
    answer): `take` hands it to a request and opens the next one in the background.
    One per event loop and owner (the gateway); `close` ends them."""

    def __init__(self, read_timeout_s: float = READ_TIMEOUT_S,
                 idle_s: float = SPARE_IDLE_S) -> None:
        self._read_timeout_s = read_timeout_s
        self._idle_s = idle_s
        self._spares: dict[tuple[str, int], tuple[_Reader, asyncio.TimerHandle]] = {}
        self._opening: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, target: Target) -> _Reader | None:
        """The server's spare connection if it is still open (else None); a new one is
        opened either way, for the next request."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a transport serves only the loop that made it
            self._spares.clear()
            self._opening.clear()
            self._loop = loop
        key = (target.host, target.port)
        found = self._spares.pop(key, None)
        if key not in self._opening:
            task = asyncio.ensure_future(self._open(key))
            self._opening[key] = task
        if found is None:
            return None
        reader, expiry = found
        expiry.cancel()
        if reader.idle:
            return reader
        reader.abort()
        return None

    def close(self) -> None:
        for task in self._opening.values():
            task.cancel()
        self._opening.clear()
        for reader, expiry in self._spares.values():
            expiry.cancel()
            reader.abort()
        self._spares.clear()

    async def _open(self, key: tuple[str, int]) -> None:
        try:
            reader = await connect(Target(key[0], key[1], "/"), self._read_timeout_s,
                                    CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:  # the request that needs it will say so
            log.info("could not open a spare connection to %s:%s: %s", *key, exc)
            return
        finally:
            self._opening.pop(key, None)
        old = self._spares.pop(key, None)
        if old is not None:
            old[1].cancel()
            old[0].abort()
        expiry = asyncio.get_running_loop().call_later(self._idle_s, self._expire, key)
        self._spares[key] = (reader, expiry)

    def _expire(self, key: tuple[str, int]) -> None:
        found = self._spares.pop(key, None)
        if found is not None:
            found[0].abort()

"""Stream pieces from a gateway worker thread to the event loop.

A worker thread talks to the model server; the event loop writes to the client. A
`Pipe` carries bytes and markers (`Loading`, `OPEN`, a `Failure`, `END`) between them,
and its `cancelled` flag (an Abort) goes the other way when the client leaves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from manager.api.wire import Failure
from manager.servers.abort import Abort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loading:
    message: str


class Open:
    """The server accepted the request: the client's status line can go out now,
    while the prompt is processed (as it would from the server itself)."""


OPEN = Open()


class End:
    pass


END = End()
Item = bytes | Loading | Open | Failure | End


class Pipe:
    """Pieces from a worker thread to the event loop: a deque, and a wake-up call only
    when the loop is waiting for one (pieces that arrive meanwhile ride along).
    `cancelled` tells the worker that nobody listens any more (the client left); setting
    it also closes the connection to the model server at once (see Abort)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[Item] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self.cancelled = Abort()

    def put(self, item: Item) -> None:
        """From the worker thread."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(wake, waiter)
            except RuntimeError as exc:  # the event loop is closed: the app stopped
                log.debug("gateway stream dropped at shutdown: %s", exc)
                self.cancelled.set()

    async def get(self, timeout: float | None) -> list[Item]:
        """Everything that arrived, waiting for at least one item; [] after `timeout`."""
        with self._lock:
            if self._items:
                items = list(self._items)
                self._items.clear()
                return items
            waiter = self._waiter = self._loop.create_future()
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            return []
        finally:
            with self._lock:
                if self._waiter is waiter:
                    self._waiter = None
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items


def wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Once:
    """A callable that runs its function once however often it is called (a key's slot
    is released by whichever of the request or its stream's worker ends last)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._done = False
        self.handed_over = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._fn()

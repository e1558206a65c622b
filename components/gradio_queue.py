"""Gradio's event queue, made to idle: its own defaults cost an idle dashboard ~6 % of a
core and every event ~20 ms of CPU (measured in docs/benchmarks.md, "Live updates").

- The queue's loops poll for new events every 1 ms and for progress every 10 ms, also
  when nobody is there. They now poll at `EVENT_POLL_S` / `PROGRESS_POLL_S` while
  someone is here (an HTTP request came in the last `WATCH_S`, or an event runs), and
  at `IDLE_EVENT_POLL_S` / `IDLE_PROGRESS_POLL_S` when nobody is (`QueuePace`). Every
  request wakes the pace at once (`QueueVisits`, an ASGI middleware), and a page's first
  queued event comes a page load (seconds of assets and config) after its first
  request, so the slow poll in progress is over by then. Gradio's loops are its own
  (they sleep a fixed time per pass); only their sleep lengths are ours.
- After every event Gradio rebuilds a pandas summary of up to 10,000 past events for
  its monitoring page, which this dashboard does not serve: it is kept short and
  never recomputed.

These are attributes of the one queue object of our Blocks (no global is touched).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import gradio as gr
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

#: How long the queue sleeps before it looks for a new event again, while someone is here.
EVENT_POLL_S = 0.05
#: The same for progress messages.
PROGRESS_POLL_S = 0.1
#: The same two while nobody is here (no request for WATCH_S, no event running).
IDLE_EVENT_POLL_S = 0.5
IDLE_PROGRESS_POLL_S = 2.0
#: Nobody is here once no request came for this long (an open page's live tick asks at
#: least every components.live.HOLD_S, 10 s).
WATCH_S = 15.0
#: Past events kept for Gradio's (unserved) monitoring summary.
ANALYTICS_KEPT = 100


class QueuePace:
    """Sets the queue's poll lengths: short while someone is here, long when nobody is.

    `visit()` runs on the event loop for every request; one timer, armed while the pace
    is fast, slows it down `WATCH_S` after the last visit once no event runs.
    """

    def __init__(self, queue: Any, watch_s: float = WATCH_S) -> None:
        self._queue = queue
        self._watch_s = watch_s
        self._last_visit = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self._set(fast=False)

    @property
    def fast(self) -> bool:
        return self._timer is not None

    def visit(self) -> None:
        """Someone is here (call on the event loop)."""
        loop = asyncio.get_running_loop()
        self._last_visit = loop.time()
        if self._timer is None:
            self._set(fast=True)
            self._timer = loop.call_later(self._watch_s, self._check)
            log.debug("queue polls fast: a request came")

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_for = loop.time() - self._last_visit
        running = any(job is not None for job in getattr(self._queue, "active_jobs", ()))
        if quiet_for < self._watch_s or running:
            wait = self._watch_s - quiet_for if quiet_for < self._watch_s else self._watch_s
            self._timer = loop.call_later(wait, self._check)
            return
        self._timer = None
        self._set(fast=False)
        log.debug("queue polls slowly: nobody for %g s", quiet_for)

    def _set(self, fast: bool) -> None:
        self._queue.sleep_when_free = EVENT_POLL_S if fast else IDLE_EVENT_POLL_S
        self._queue.progress_update_sleep_when_free = (
            PROGRESS_POLL_S if fast else IDLE_PROGRESS_POLL_S)


class QueueVisits:
    """ASGI middleware: every HTTP or websocket request tells the pace someone is here."""

    def __init__(self, app: ASGIApp, pace: QueuePace) -> None:
        self.app = app
        self.pace = pace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            self.pace.visit()
        await self.app(scope, receive, send)


def quiet_queue(blocks: gr.Blocks) -> QueuePace | None:
    """Tune the queue of `blocks` (call after mounting, before the server starts); the
    pace to wake with `QueueVisits` (None when Gradio has no queue object)."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        log.warning("Gradio has no queue object here; its idle polling stays as it is")
        return None
    queue.ANALYTICS_MAX_EVENTS = ANALYTICS_KEPT
    # The summary is recomputed only after this many new events: never, in practice.
    queue.ANAYLTICS_CACHE_FREQUENCY = 2**62
    return QueuePace(queue)

"""Gradio's event queue, made to idle: its own defaults cost an idle dashboard ~6 % of a
core and every event ~20 ms of CPU (measured in docs/benchmarks.md, "Live updates").

- The queue's loops poll every 1 ms (new events) and 10 ms (progress) while nothing
  happens; Gradio itself uses 50 ms and 100 ms on Windows. An event now waits at most
  `EVENT_POLL_S` to start, which no one notices next to a page's own round trip.
- After every event Gradio rebuilds a pandas summary of up to 10,000 past events for
  its monitoring page, which this dashboard does not serve: it is kept short and
  never recomputed.

These are attributes of the one queue object of our Blocks (no global is touched).
"""

from __future__ import annotations

import logging

import gradio as gr

log = logging.getLogger(__name__)

#: How long the idle queue sleeps before it looks for a new event again.
EVENT_POLL_S = 0.05
#: How long the idle queue sleeps before it looks for progress to send again.
PROGRESS_POLL_S = 0.1
#: Past events kept for Gradio's (unserved) monitoring summary.
ANALYTICS_KEPT = 100


def quiet_queue(blocks: gr.Blocks) -> None:
    """Tune the queue of `blocks` (call after mounting, before the server starts)."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        log.warning("Gradio has no queue object here; its idle polling stays as it is")
        return
    queue.sleep_when_free = EVENT_POLL_S
    queue.progress_update_sleep_when_free = PROGRESS_POLL_S
    queue.ANALYTICS_MAX_EVENTS = ANALYTICS_KEPT
    # The summary is recomputed only after this many new events: never, in practice.
    queue.ANAYLTICS_CACHE_FREQUENCY = 2**62

"""The page's send in two steps: a quick unqueued one checks the message and empties the
box, a queued one streams the turn. What the first hands the second waits here, under a
token the page carries in a component.

A gr.State would not do: the queued step reads a State when it runs, not when it is
sent, so a second send in between replaced the first one's message (it was lost, or sent
twice). The page reads a component's value when it sends the step.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass

from manager.chat.events import ChatOptions, PreparedMessage

log = logging.getLogger(__name__)

#: Messages waiting for their queued step; past this the oldest is dropped (its step
#: never ran: the page went away between the two).
MAX_WAITING = 1024


@dataclass(frozen=True)
class Taken:
    """A checked message, the chat that was open when it was sent and its claim on that
    chat (components.chat.page_views.PageViews.claim; None for a new chat)."""

    prepared: PreparedMessage
    options: ChatOptions
    chat_id: int | None
    claim: int | None


@dataclass(frozen=True)
class Refused:
    """The page's send was refused, and why (the queued step says it: the page shows an
    unqueued event's error as a bare "Error" on the box)."""

    message: str


class Outbox:
    """Taken and refused sends by token; safe to share between Gradio's threads."""

    def __init__(self, max_waiting: int = MAX_WAITING) -> None:
        self._max = max_waiting
        self._lock = threading.Lock()
        self._waiting: OrderedDict[str, Taken | Refused] = OrderedDict()

    def put(self, item: Taken | Refused) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._waiting[token] = item
            while len(self._waiting) > self._max:
                _, dropped = self._waiting.popitem(last=False)
                log.warning("a taken chat message was never streamed: dropped (%s)",
                            type(dropped).__name__)
        return token

    def pop(self, token: str | None) -> Taken | Refused | None:
        with self._lock:
            return self._waiting.pop(token, None) if token else None

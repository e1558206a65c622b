"""Transitions to subscribers: queued under the supervisor's lock, heard outside it.

The supervisor queues each transition while it holds its lock; when the outermost
holder in a thread lets go, the queue is delivered in order. A subscriber therefore
never runs under the lock and may query or command the supervisor.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from manager.servers.snapshot import Transition

log = logging.getLogger(__name__)

Listener = Callable[[Transition], None]


class Announcer:
    def __init__(self, lock: threading.Condition) -> None:
        self._lock = lock  # the supervisor's Condition (around its RLock)
        self._listeners: list[Listener] = []
        self._pending: list[Transition] = []
        self._delivering = threading.RLock()  # one deliverer at a time keeps the order
        self._local = threading.local()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def queue(self, transition: Transition) -> None:
        """Lock held: remember the transition and wake everyone waiting on the lock."""
        self._pending.append(transition)
        self._lock.notify_all()

    @contextmanager
    def changing(self) -> Iterator[None]:
        """The lock for a change; the transitions queued meanwhile are delivered once
        the outermost `changing` of this thread ends."""
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            with self._lock:
                yield
        finally:
            self._local.depth = depth
            if depth == 0:
                self.deliver()

    def deliver(self) -> None:
        with self._delivering:
            with self._lock:
                events, self._pending = self._pending, []
                listeners = list(self._listeners)
            for event in events:
                for listener in listeners:
                    try:
                        listener(event)
                    except Exception:  # noqa: BLE001 - one bad subscriber must not stop the rest
                        log.exception("subscriber %r failed on %s -> %s of %s", listener,
                                      event.old.value, event.new.value, event.profile.name)

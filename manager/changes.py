"""Version counters that move on every state change a page shows, and waits on them.

Each topic (servers, their samples, accounts, downloads) has a counter; whoever changes
that state bumps it. A page remembers the versions it last drew and asks "what moved
since?": nothing to draw while nothing moved, and no polling of the state itself.
Listeners (a page's wait on the event loop) hear every bump outside the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger(__name__)


class Topic(str, Enum):
    SERVERS = "servers"  # a server's state (Starting, Ready, Failed, Stopped, ...)
    SAMPLES = "samples"  # the monitor's new figures and log tails
    ACCOUNTS = "accounts"  # registrations, approvals, roles (the pending badge)
    DOWNLOADS = "downloads"  # a download's status or a step of its progress


@dataclass(frozen=True)
class Versions:
    """The counters at one moment, in Topic order."""

    values: tuple[int, ...]

    def of(self, topic: Topic) -> int:
        return self.values[_INDEX[topic]]

    def moved(self, since: Versions | None) -> frozenset[Topic]:
        """Topics whose counter differs from `since` (all of them when there is none)."""
        if since is None or len(since.values) != len(self.values):
            return frozenset(Topic)
        return frozenset(t for t, i in _INDEX.items() if self.values[i] != since.values[i])


_INDEX = {topic: index for index, topic in enumerate(Topic)}

Listener = Callable[[Topic], None]


class Changes:
    """Thread-safe counters; `bump` from any thread, `wait` or `subscribe` to hear it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._changed = threading.Condition(threading.Lock())
        self._values = [0] * len(_INDEX)
        self._at = [0.0] * len(_INDEX)
        self._listeners: list[Listener] = []

    def bump(self, topic: Topic) -> None:
        with self._changed:
            self._values[_INDEX[topic]] += 1
            self._at[_INDEX[topic]] = self._clock()
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(topic)
            except Exception:  # noqa: BLE001 - one bad listener must not stop the change
                log.exception("change listener %r failed on %s", listener, topic.value)

    def notifier(self, topic: Topic) -> Callable[[], None]:
        """A no-argument callable that bumps `topic` (for services that take a hook)."""
        return lambda: self.bump(topic)

    def versions(self) -> Versions:
        with self._changed:
            return Versions(tuple(self._values))

    def changed_at(self, topic: Topic) -> float:
        """Wall-clock time of the topic's last bump (0.0 before the first)."""
        with self._changed:
            return self._at[_INDEX[topic]]

    def wait(self, since: Versions | None, timeout: float) -> Versions:
        """Block until a counter moves past `since` or `timeout` s pass; the versions then."""
        with self._changed:
            self._changed.wait_for(
                lambda: Versions(tuple(self._values)).moved(since), max(0.0, timeout))
            return Versions(tuple(self._values))

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(topic)` on every bump, outside the lock; returns the unsubscribe."""
        with self._changed:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._changed:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    @property
    def listeners(self) -> int:
        """How many listeners wait now (a page waiting for news counts as one)."""
        with self._changed:
            return len(self._listeners)

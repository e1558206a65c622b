"""The one activity count of each server: leases held by requests, and the last use.

The idle timeout (Supervisor.reconcile) and the evictions of the placement both read
it; chat turns and gateway requests hold a lease while they use a server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from manager.errors import Conflict
from manager.servers.snapshot import Activity


@dataclass
class _Count:
    leases: int = 0
    last_used: float = 0.0  # monotonic


class Leases:
    """Thread-safe; one per supervisor (keyed by profile id, so a lease can be taken
    before the server exists: a gateway request holds it across the start)."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._now = monotonic  # the supervisor's clock (tests move it)
        self._lock = threading.Lock()
        self._counts: dict[int, _Count] = {}

    @contextmanager
    def lease(self, profile_id: int) -> Iterator[None]:
        """Held while a request uses the server: counts as busy, and as just used from
        its start to its end."""
        release = self.hold(profile_id)
        try:
            yield
        finally:
            release()

    def hold(self, profile_id: int) -> Callable[[], None]:
        """`lease` taken now; returns its release, to call once (the gateway's requests:
        no generator and context manager on each one's way to its first token)."""
        with self._lock:
            count = self._counts.get(profile_id)
            if count is None:
                count = self._counts[profile_id] = _Count()
            count.leases += 1
            count.last_used = self._now()
        return partial(self._release, count)

    def _release(self, count: _Count) -> None:
        with self._lock:
            count.leases -= 1
            count.last_used = self._now()

    def touch(self, profile_id: int) -> None:
        """Count as used now (a start, a server that became ready or was adopted)."""
        with self._lock:
            self._counts.setdefault(profile_id, _Count()).last_used = self._now()

    def of(self, profile_id: int) -> Activity:
        with self._lock:
            count = self._counts.get(profile_id) or _Count()
            return Activity(count.leases, count.last_used)

    def used_since(self, profile_id: int, since: float) -> bool:
        """Held now, or used after `since` (the supervisor's clock)."""
        found = self.of(profile_id)
        return bool(found.leases) or found.last_used > since

    def idle_for(self, profile_id: int, now: float) -> float | None:
        """Seconds since the last use; None while a lease is held."""
        found = self.of(profile_id)
        return None if found.leases else now - found.last_used

    def forget(self, profile_id: int) -> None:
        with self._lock:
            count = self._counts.get(profile_id)
            if count is not None and count.leases == 0:
                del self._counts[profile_id]


class ServerInUse(Conflict):
    """A stop the dashboard decided itself (idle, eviction, unload) found the server
    taken by a request since it looked (Supervisor.stop's `unused_since`)."""

"""What the supervisor knows about its servers, and the waits on it (the read side).

`ServerRegistry` holds one `ServerRun` per profile behind a lock, hands out copies
(snapshots), and lets callers sleep on the lock's Condition until a server gets where
they want it: every transition (Supervisor._transition, the write side) wakes them,
and so does a CancelEvent they handed in. Nothing here polls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from manager.accounts.permissions import Owned
from manager.errors import NotFound
from manager.servers.events import Announcer, Listener
from manager.servers.leases import Leases
from manager.servers.profiles import ProfileService
from manager.servers.run import ServerRun
from manager.servers.snapshot import (
    Activity,
    CancelEvent,
    Clock,
    ServerSnapshot,
    ready_or_raise,
    uses_model,
)
from manager.servers.states import ACTIVE_STATES, TRANSITIONAL_STATES, ServerState


class ServerRegistry:
    """Thread-safe; the base of the Supervisor (which alone changes the runs)."""

    def __init__(self, profiles: ProfileService, clock: Clock | None) -> None:
        self._profiles = profiles
        self.clock = clock or Clock()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._servers: dict[int, ServerRun] = {}
        self._events = Announcer(self._changed)
        #: The one activity count per server (idle stop here, evictions in placement).
        self.leases = Leases(lambda: self.clock.monotonic())
        self._closed = False

    # -- queries ---------------------------------------------------------------------------

    def snapshot(self, profile_id: int) -> ServerSnapshot | None:
        with self._lock:
            server = self._servers.get(profile_id)
            return self._snap(server) if server is not None else None

    def snapshots(self) -> list[ServerSnapshot]:
        """Every server this dashboard knows, stopped ones included, by profile name."""
        with self._lock:
            snaps = [self._snap(s) for s in self._servers.values()]
        return sorted(snaps, key=lambda s: (s.profile.name.casefold(), s.profile_id))

    def live_processes(self) -> list[tuple[int, int, float]]:
        """(profile_id, pid, create_time) of every server process that should be alive."""
        with self._lock:
            return [(s.profile.id, s.pid, s.create_time or 0.0) for s in self._servers.values()
                    if s.state in ACTIVE_STATES and s.pid is not None]

    def transitional(self) -> bool:
        """True while a server starts, stops or waits for an auto-restart."""
        with self._lock:
            return any(s.state in TRANSITIONAL_STATES for s in self._servers.values())

    def uses_model(self, path_or_repo: str) -> bool:
        """Is a server that runs (or will run again) using this model?"""
        return uses_model(self.snapshots(), path_or_repo)

    def owners(self, profile_id: int) -> Owned:
        """Who counts as owning a profile's server: the profile's creator and whoever
        started the current run (when a person did)."""
        with self._lock:
            server = self._servers.get(profile_id)
            if server is not None:
                return Owned.by(server.profile.owner_id, server.started_by)
        return Owned.by(self._profiles.get(profile_id).owner_id)

    # -- waiting ---------------------------------------------------------------------------

    def wait_for(self, profile_id: int, done: Callable[[ServerSnapshot | None], bool],
                 timeout: float, cancel: threading.Event | None = None
                 ) -> ServerSnapshot | None:
        """Sleep on the Condition until `done(snapshot)` holds, `timeout` s pass, `cancel`
        is set (a CancelEvent wakes the wait at once) or the supervisor closes. Returns
        the snapshot of that moment; the caller reads what happened from it."""
        forget_hook = cancel.on_set(self._wake_waiters) if isinstance(cancel, CancelEvent) \
            else None
        try:
            with self._changed:
                self._changed.wait_for(
                    lambda: self._closed or (cancel is not None and cancel.is_set())
                    or done(self._snap_of(profile_id)), max(0.0, timeout))
                return self._snap_of(profile_id)
        finally:
            if forget_hook is not None:
                forget_hook()

    def wait_ready(self, profile_id: int, timeout: float,
                   cancel: threading.Event | None = None) -> ServerSnapshot:
        """The snapshot of a READY server, waiting up to `timeout` s while it loads.

        Raises ServerLoading when it is still loading after that (or the wait was
        cancelled), ServerNotReady when it is stopped, stopping or failed.
        """
        snap = self.wait_for(profile_id, lambda s: s is None or s.state is not
                             ServerState.STARTING, timeout, cancel)
        return ready_or_raise(snap, self._name(profile_id), self.clock.time())

    # -- activity: the one lease count per server --------------------------------------------

    def lease(self, profile_id: int) -> AbstractContextManager[None]:
        """Held while a request uses the profile's server (a chat turn; a gateway request
        from before its start to its last byte): never idle-stopped nor evicted then."""
        return self.leases.lease(profile_id)

    def hold(self, profile_id: int) -> Callable[[], None]:
        """`lease` as a call that takes it and returns its release (Leases.hold)."""
        return self.leases.hold(profile_id)

    def activity(self, profile_id: int) -> Activity:
        return self.leases.of(profile_id)

    # -- subscribers -------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every transition, in order, outside the supervisor's
        lock (it may query or command the supervisor). Returns the unsubscribe call."""
        return self._events.subscribe(listener)

    # -- internals --------------------------------------------------------------------------

    def _wake_waiters(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _snap_of(self, profile_id: int) -> ServerSnapshot | None:
        server = self._servers.get(profile_id)
        return self._snap(server) if server is not None else None

    def _snap(self, server: ServerRun) -> ServerSnapshot:
        return server.snapshot(self.clock)

    def _name(self, profile_id: int) -> str:
        try:
            return self._profiles.get(profile_id).name
        except NotFound:
            return f"Profile {profile_id}"

    # -- idle limits ------------------------------------------------------------------------

    def set_idle_limit(self, profile_id: int, seconds: float | None) -> bool:
        """Idle seconds before this run of the server stops (None: the profile's idle
        timeout; negative: never). The next run starts with the profile's again.
        False when the server is not running."""
        with self._lock:
            server = self._servers.get(profile_id)
            if server is None or server.state not in ACTIVE_STATES:
                return False
            server.idle_limit_s = seconds
            return True

    def idle_limit(self, profile_id: int) -> float | None:
        """Idle seconds before the running server stops; None: never."""
        with self._lock:
            server = self._servers.get(profile_id)
            return server.idle_limit() if server is not None else None

    def _idle(self, server: ServerRun, now: float) -> bool:
        limit = server.idle_limit()
        if limit is None:
            return False
        idle = self.leases.idle_for(server.profile.id, now)
        return idle is not None and idle > limit

"""THE start policy: every start of a model server comes through here.

The Servers tab, the chat tab, the gateway and auto-start at boot all call
`Placement.start` / `ensure_started` (stop and restart too, so the rights are checked
in one place), never the supervisor directly. Three rules apply to every start:

- Rights: any active user may start a server; stopping and restarting are for the
  profile's owner, whoever started that run, and admins (checked by the supervisor).
- Single flight: starts go one at a time under a lock, and each re-checks the
  server's state once it holds the lock, so concurrent requests share one start. A
  start that finds the server stopping waits for it (on the supervisor's Condition).
- Memory budget: the model's estimate (capabilities.fit: weights + KV cache at the
  profile's context length) must fit beside the servers that hold memory (running,
  or backing off before a restart). When it does not, the least recently used idle
  servers that were started on demand (by the gateway) are stopped first, oldest use
  first; servers started by a person or by auto-start, and servers with a lease held
  (a request in flight), are never stopped. When it still does not fit,
  `InsufficientMemory` says why (the gateway answers 503, the tabs show it).

Idle timeouts are the supervisor's job; both read the one lease count per server
(Supervisor.lease / activity). A request may say how long the server it used stays
loaded (`keep_alive`, Ollama's API): heard for servers the gateway started, or that the
caller may stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, allowed, require
from manager.errors import Conflict, ManagerError, ValidationError
from manager.models.capabilities import (
    WEIGHTS_OVERHEAD_PERCENT,
    detect,
    fit,
    is_apple_silicon,
    memory_budget_bytes,
)
from manager.net import port_is_free
from manager.servers.leases import ServerInUse
from manager.servers.profiles import Profile, ProfileService
from manager.servers.states import PLACED_STATES, ServerState
from manager.servers.supervisor import MANAGER, CancelEvent, ServerSnapshot, Supervisor
from manager.units import format_bytes

log = logging.getLogger(__name__)

#: How long a start waits for a server that is stopping (an idle stop, an eviction).
STOPPING_WAIT_S = 30.0
_UNDERWAY = (ServerState.STARTING, ServerState.READY)


class InsufficientMemory(ManagerError):
    """The model does not fit in the memory budget, even after stopping idle servers."""


class StartFailed(ManagerError):
    """The server could not be started (busy port, missing model, shutting down...)."""


@dataclass(frozen=True)
class PlacementStats:
    """Per profile, since the dashboard started: on-demand starts and evictions."""

    starts: int = 0
    evictions: int = 0


def system_capacity(in_use_bytes: int) -> int:
    """Bytes all models together may use. On Apple Silicon a fixed share of RAM; elsewhere
    the RAM available now plus what the running servers are estimated to hold (available
    RAM already excludes them)."""
    budget = memory_budget_bytes()
    return budget if is_apple_silicon() else budget + in_use_bytes


class Placement:
    """Starts servers (for people, the gateway and auto-start) within the memory budget."""

    def __init__(self, supervisor: Supervisor, profiles: ProfileService, *,
                 capacity: Callable[[int], int] = system_capacity,
                 estimate: Callable[[Profile], int | None] | None = None) -> None:
        self._supervisor = supervisor
        self._profiles = profiles
        self._capacity = capacity
        self._estimate = estimate or self.estimate_bytes
        self._lock = threading.Lock()  # guards the dicts below
        self._start_lock = threading.Lock()  # one budget check + start at a time
        #: profile id -> started_at of the run started on demand (evictable).
        self._on_demand: dict[int, float | None] = {}
        self._stats: dict[int, PlacementStats] = {}
        self._estimates: dict[tuple[str, int | None], int | None] = {}
        self._fixed_budget: int | None = None

    # -- settings and queries -------------------------------------------------------------

    def set_budget(self, total_bytes: int | None) -> None:
        """A fixed budget for all models together; None = measured from the machine."""
        with self._lock:
            self._fixed_budget = total_bytes

    def stats(self) -> dict[int, PlacementStats]:
        with self._lock:
            return dict(self._stats)

    def started_on_demand(self, snap: ServerSnapshot) -> bool:
        """Is this server run one the gateway started (and not restarted by someone)?"""
        with self._lock:
            return snap.profile_id in self._on_demand and \
                self._on_demand[snap.profile_id] == snap.started_at

    def estimate_bytes(self, profile: Profile) -> int | None:
        """Memory the profile's model needs (weights + KV cache at its context)."""
        caps = detect(self._profiles.resolve_model(profile.model))
        verdict = fit(caps, profile.context_length, 1 << 62)  # the budget only sets the level
        if verdict.needed_bytes is not None:
            return verdict.needed_bytes
        # KV size unknown: the weights (with fit's overhead) are still a lower bound.
        if caps.weights_bytes is None:
            return None
        return caps.weights_bytes * WEIGHTS_OVERHEAD_PERCENT // 100

    def need_bytes(self, profile: Profile) -> int | None:
        """Memory this machine needs for the profile: for a distributed profile, the share
        of its ranks that run here (the other hosts hold the rest)."""
        dist = profile.distributed
        key = (profile.model, profile.context_length)
        with self._lock:
            need = self._estimates.get(key, -1)
        if need == -1:
            try:
                need = self._estimate(profile)
            except ManagerError as exc:
                log.info("memory estimate of %s unavailable: %s", profile.name, exc.message)
                need = None
            with self._lock:
                self._estimates[key] = need
        return need * dist.local_ranks // dist.size if need is not None and dist else need

    # -- starts, stops, leases ----------------------------------------------------------------

    def start(self, actor: User | None, profile_id: int, *, by: str | None = None
              ) -> ServerSnapshot:
        """A start someone asked for (Servers tab, chat tab, auto-start): within the
        budget, never evicted later. Conflict when it is already starting or ready."""
        profile = self._profiles.get(profile_id)
        require(actor, Action.SERVER_START, Owned.by(profile.owner_id))
        with self._start_lock:
            return self._start_held(actor, profile, by)

    def _start_held(self, actor: User | None, profile: Profile, by: str | None
                    ) -> ServerSnapshot:
        """`start`'s work; the caller holds the start lock."""
        snap = self._wait_while_stopping(profile)
        if snap is not None and snap.state in _UNDERWAY:
            raise Conflict(f"{profile.name} is already {snap.state.value}.")
        self._make_room(profile)
        return self._supervisor.start(profile.id, actor=actor, by=by)

    def check_startable(self, profile: Profile) -> None:
        """What would refuse a start of this stopped profile's server, said before a
        request commits to it (the Chat tab's box keeps the message): a model that is
        gone, a port another program holds, a model that would not fit in the memory
        budget even once every server the start may stop is stopped. Nothing is stopped
        here: the start makes its room itself."""
        self._profiles.resolve_model(profile.model)
        if not port_is_free(profile.host, profile.port):
            raise ValidationError(
                f"{profile.name} cannot start: port {profile.port} on {profile.host} is in "
                "use by another program. Stop that program or give the profile another "
                "port.", "port")
        need = self.need_bytes(profile)
        if need is not None:
            self._to_stop_for(profile, need)

    def ensure_started(self, actor: User | None, profile: Profile, *, by: str | None = None
                       ) -> bool:
        """Start the profile's server for a request unless it is starting or ready; True
        when this call started it. The run counts as on demand (evictable once idle).
        Does not wait for readiness (see wait_ready)."""
        require(actor, Action.SERVER_START, Owned.by(profile.owner_id))
        snap = self._supervisor.snapshot(profile.id)
        if snap is not None and snap.state in _UNDERWAY:
            return False
        with self._start_lock:
            # Another request may have started it while this one waited for the lock.
            snap = self._wait_while_stopping(profile)
            if snap is not None and snap.state in _UNDERWAY:
                return False
            self._make_room(profile)
            try:
                started = self._supervisor.start(profile.id, actor=actor, by=by)
            except ManagerError as exc:
                raise StartFailed(f"Could not start {profile.name}: {exc.message}") from exc
            with self._lock:
                self._on_demand[profile.id] = started.started_at
                old = self._stats.get(profile.id, PlacementStats())
                self._stats[profile.id] = PlacementStats(old.starts + 1, old.evictions)
            log.info("started %s on demand for %s", profile.name, by)
            return True

    def stop(self, actor: User | None, profile_id: int, *, by: str | None = None
             ) -> ServerSnapshot:
        """Stop (or dismiss a failed) server: its owners and admins only."""
        return self._supervisor.stop(profile_id, actor=actor, by=by)

    def restart(self, actor: User | None, profile_id: int, *, by: str | None = None
                ) -> ServerSnapshot:
        """Stop it if it runs, then start it again through the budget: one step for the
        other starts. A request that finds it stopping waits for the new run (else it
        started the server itself in between: the restart failed with a Conflict and the
        run counted as on demand)."""
        profile = self._profiles.get(profile_id)
        require(actor, Action.SERVER_RESTART, self._supervisor.owners(profile_id))
        require(actor, Action.SERVER_START, Owned.by(profile.owner_id))
        who = by or (actor.email if actor is not None else MANAGER)
        # A model that is gone is said before the running server is stopped for nothing.
        self._profiles.resolve_model(profile.model)
        with self._start_lock:
            snap = self._supervisor.snapshot(profile_id)
            if snap is not None and snap.state is not ServerState.STOPPED:
                try:
                    # The rights were checked above: the stop itself runs as the manager.
                    self._supervisor.stop(profile_id, by=who,
                                          reason=f"restart requested by {who}")
                except Conflict:
                    log.info("%s stopped before its restart could stop it", profile.name)
            return self._start_held(actor, profile, by)

    def auto_start(self) -> list[str]:
        """Start every auto-start profile that is not running; returns their names. A
        profile that cannot start is shown FAILED with the reason."""
        started = []
        for profile in self._profiles.list():
            if not profile.auto_start:
                continue
            snap = self._supervisor.snapshot(profile.id)
            if snap is not None and snap.state in PLACED_STATES:
                continue
            try:
                self.start(None, profile.id, by="auto-start")
                started.append(profile.name)
            except ManagerError as exc:
                log.warning("auto-start of %s failed: %s", profile.name, exc.message)
                self._supervisor.fail_to_start(profile.id, f"Auto-start failed: {exc.message}")
        return started

    def keep_alive(self, actor: User | None, profile_id: int, seconds: float | None) -> bool:
        """A request's say in how long the server stays loaded (Ollama's keep_alive),
        heard for a server the gateway started or one `actor` may stop: 0 stops it (in
        the background) unless another request uses it; a duration replaces its idle
        timeout for this run (negative: no idle stop). True when heard (0 and nothing
        running: it is unloaded already)."""
        if seconds is None:
            return False
        snap = self._supervisor.snapshot(profile_id)
        if snap is None or snap.state not in _UNDERWAY:
            return seconds == 0
        if not (self.started_on_demand(snap) or allowed(
                actor, Action.SERVER_STOP, self._supervisor.owners(profile_id))):
            log.info("keep_alive of a request for %s not heard: it was started by hand",
                     snap.profile.name)
            return False
        if seconds != 0:
            return self._supervisor.set_idle_limit(profile_id, seconds)
        if self._supervisor.activity(profile_id).leases:
            log.info("%s stays loaded: another request uses it", snap.profile.name)
            return False
        who = actor.email if actor is not None else MANAGER
        threading.Thread(target=self._unload, args=(snap, who), daemon=True,
                         name=f"unload-{profile_id}").start()
        return True

    def _unload(self, snap: ServerSnapshot, who: str) -> None:
        now = self._supervisor.snapshot(snap.profile_id)
        if now is None or now.started_at != snap.started_at or now.state not in _UNDERWAY:
            return
        try:  # not if a request holds it or took it since (checked under the lock)
            self._supervisor.stop(snap.profile_id, by=who,
                                  unused_since=self._supervisor.clock.monotonic(),
                                  reason=f"unloaded after a request with keep_alive 0 ({who})")
        except ServerInUse:
            log.info("%s stays loaded: another request uses it", snap.profile.name)
        except ManagerError as exc:
            log.info("unload of %s skipped: %s", snap.profile.name, exc.message)

    def lease(self, profile_id: int) -> AbstractContextManager[None]:
        """The supervisor's one lease count: held for a whole request (never evicted,
        never idle, and just used for the LRU order)."""
        return self._supervisor.lease(profile_id)

    def hold(self, profile_id: int) -> Callable[[], None]:
        """`lease` taken now; returns its release, to call once."""
        return self._supervisor.hold(profile_id)

    def wait_ready(self, profile_id: int, timeout: float,
                   cancel: CancelEvent | None = None) -> ServerSnapshot:
        """Wait (on the supervisor's Condition) until the server is READY; see
        Supervisor.wait_ready for what it raises."""
        return self._supervisor.wait_ready(profile_id, timeout, cancel)

    # -- internals ------------------------------------------------------------------------

    def _wait_while_stopping(self, profile: Profile) -> ServerSnapshot | None:
        snap = self._supervisor.wait_for(
            profile.id, lambda s: s is None or s.state is not ServerState.STOPPING,
            STOPPING_WAIT_S)
        if snap is not None and snap.state is ServerState.STOPPING:
            raise StartFailed(f"{profile.name} is still stopping after {STOPPING_WAIT_S:g} s. "
                              "Try again in a moment.")
        return snap

    def _make_room(self, profile: Profile) -> None:
        need = self.need_bytes(profile)
        if need is None:
            log.info("memory need of %s unknown: starting it without a budget check",
                     profile.name)
            return
        while True:
            checked = self._supervisor.clock.monotonic()  # what is idle is idle since then
            candidates = self._to_stop_for(profile, need)
            if not candidates:
                return
            self._evict(candidates[0], profile, checked)

    def _to_stop_for(self, profile: Profile, need: int) -> list[ServerSnapshot]:
        """The servers that may be stopped for `profile` (`need` bytes) to fit, least
        recently used first: none when it fits as things are. Raises InsufficientMemory
        when stopping all of them would not be enough (then nothing should be stopped)."""
        running = [s for s in self._supervisor.snapshots()
                   if s.state in PLACED_STATES and s.profile_id != profile.id]
        held = {s.profile_id: self.need_bytes(s.profile) or 0 for s in running}
        in_use = sum(held.values())
        with self._lock:
            fixed = self._fixed_budget
        capacity = fixed if fixed is not None else self._capacity(in_use)
        if in_use + need <= capacity:
            return []
        if need > capacity:
            raise InsufficientMemory(
                f"{profile.name} needs about {format_bytes(need)} of memory, more than the "
                f"whole budget of {format_bytes(capacity)}. Use a smaller (more quantised) "
                "model or a shorter context length in its profile.")
        candidates = self._eviction_candidates(running)
        freeable = sum(held[s.profile_id] for s in candidates)
        if not candidates or in_use - freeable + need > capacity:
            kept = ", ".join(f"{s.profile.name} (~{format_bytes(held[s.profile_id])}, "
                             f"{self._why_kept(s)})" for s in running)
            raise InsufficientMemory(
                f"{profile.name} needs about {format_bytes(need)} of memory but only "
                f"{format_bytes(max(0, capacity - in_use))} of the {format_bytes(capacity)} "
                f"budget is free, and only idle servers the gateway started may be "
                f"stopped to make room. Running: {kept}. Stop one on the Servers tab "
                "and try again.")
        return candidates

    def _evictable(self, snap: ServerSnapshot) -> bool:
        return (snap.state is ServerState.READY and self.started_on_demand(snap)
                and self._supervisor.activity(snap.profile_id).leases == 0)

    def _why_kept(self, snap: ServerSnapshot) -> str:
        if not self.started_on_demand(snap):
            return "started by hand"
        if snap.state is not ServerState.READY:
            return snap.state.value
        return "busy" if not self._evictable(snap) else "idle"

    def _eviction_candidates(self, running: list[ServerSnapshot]) -> list[ServerSnapshot]:
        """Idle servers started on demand, least recently used first."""
        candidates = [s for s in running if self._evictable(s)]
        return sorted(candidates,
                      key=lambda s: self._supervisor.activity(s.profile_id).last_used)

    def _evict(self, victim: ServerSnapshot, newcomer: Profile, victim_checked: float
               ) -> None:
        reason = f"stopped to make room for {newcomer.name} (least recently used)"
        log.info("evicting %s: %s", victim.profile.name, reason)
        try:
            self._supervisor.stop(victim.profile_id, by="placement", reason=reason,
                                  unused_since=victim_checked)
        except ManagerError as exc:
            log.info("eviction of %s skipped: %s", victim.profile.name, exc.message)
            if isinstance(exc, ServerInUse):
                return  # a request took it: still on demand, and not evicted
        with self._lock:
            old = self._stats.get(victim.profile_id, PlacementStats())
            self._stats[victim.profile_id] = PlacementStats(old.starts, old.evictions + 1)
            self._on_demand.pop(victim.profile_id, None)

"""Servers started on demand by the gateway: one start per profile, memory budget, LRU.

A gateway request for a profile whose server is stopped (or failed) starts it here.
Concurrent requests for the same profile share that one start: starts go one at a
time under a lock, and each re-checks the server's state once it holds the lock.

Before a start, the model's memory estimate (capabilities.fit: weights + KV cache at
the profile's context length) is checked against the budget. When the servers that
run would leave too little, the least recently used idle servers that the gateway
itself started are stopped first, oldest use first; servers someone started by hand
and servers with a request in flight are never stopped. When it still does not fit,
`InsufficientMemory` says why (the gateway answers 503).

Idle timeouts are the supervisor's job (its reconcile pass stops any server idle for
longer than its profile's idle timeout, whoever started it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from manager.errors import Conflict, ManagerError
from manager.models.capabilities import (
    WEIGHTS_OVERHEAD_PERCENT,
    detect,
    fit,
    human_bytes,
    is_apple_silicon,
    memory_budget_bytes,
)
from manager.servers.inference import InferenceClient
from manager.servers.profiles import Profile, resolve_model
from manager.servers.supervisor import ACTIVE_STATES, ServerSnapshot, ServerState, Supervisor

log = logging.getLogger(__name__)

#: How long a start waits for a server that is stopping (an idle stop, an eviction).
STOPPING_WAIT_S = 30.0


class InsufficientMemory(ManagerError):
    """The model does not fit in the memory budget, even after stopping idle servers."""


class StartFailed(ManagerError):
    """The server could not be started (busy port, missing model, shutting down...)."""


@dataclass(frozen=True)
class OnDemandStats:
    """Per profile, since the dashboard started: starts and evictions by the gateway."""

    starts: int = 0
    evictions: int = 0


def system_capacity(in_use_bytes: int) -> int:
    """Bytes all models together may use. On Apple Silicon a fixed share of RAM; elsewhere
    the RAM available now plus what the running servers are estimated to hold (available
    RAM already excludes them)."""
    budget = memory_budget_bytes()
    return budget if is_apple_silicon() else budget + in_use_bytes


def estimate_bytes(profile: Profile) -> int | None:
    """Memory the profile's model needs (weights + KV cache at its context), None if unknown."""
    caps = detect(resolve_model(profile.model))
    verdict = fit(caps, profile.context_length, 1 << 62)  # the budget only sets the level
    if verdict.needed_bytes is not None:
        return verdict.needed_bytes
    # KV size unknown: the weights (with fit's overhead) are still a lower bound.
    if caps.weights_bytes is None:
        return None
    return caps.weights_bytes * WEIGHTS_OVERHEAD_PERCENT // 100


class OnDemand:
    """Starts servers for gateway requests and keeps them within the memory budget."""

    def __init__(self, supervisor: Supervisor, inference: InferenceClient, *,
                 capacity: Callable[[int], int] = system_capacity,
                 estimate: Callable[[Profile], int | None] = estimate_bytes) -> None:
        self._supervisor = supervisor
        self._inference = inference
        self._capacity = capacity
        self._estimate = estimate
        self._lock = threading.Lock()  # guards the dicts below
        self._start_lock = threading.Lock()  # one budget check + start at a time
        #: profile id -> started_at of the server run this gateway started.
        self._started: dict[int, float | None] = {}
        self._leases: dict[int, int] = {}
        self._last_used: dict[int, float] = {}
        self._stats: dict[int, OnDemandStats] = {}
        self._estimates: dict[tuple[str, int | None], int | None] = {}
        self._fixed_budget: int | None = None

    # -- settings and queries -------------------------------------------------------------

    def set_budget(self, total_bytes: int | None) -> None:
        """A fixed budget for all models together; None = measured from the machine."""
        with self._lock:
            self._fixed_budget = total_bytes

    def stats(self) -> dict[int, OnDemandStats]:
        with self._lock:
            return dict(self._stats)

    def started_by_gateway(self, snap: ServerSnapshot) -> bool:
        """Is this server run one the gateway started (and not restarted by someone)?"""
        with self._lock:
            return snap.profile_id in self._started and \
                self._started[snap.profile_id] == snap.started_at

    def need_bytes(self, profile: Profile) -> int | None:
        key = (profile.model, profile.context_length)
        with self._lock:
            if key in self._estimates:
                return self._estimates[key]
        try:
            need = self._estimate(profile)
        except ManagerError as exc:
            log.info("memory estimate of %s unavailable: %s", profile.name, exc.message)
            need = None
        with self._lock:
            self._estimates[key] = need
        return need

    # -- requests -------------------------------------------------------------------------

    @contextmanager
    def lease(self, profile_id: int) -> Iterator[None]:
        """Held for a whole gateway request: its server counts as in use (never evicted)
        and as just used (LRU) from the start to the end of the request."""
        with self._lock:
            self._leases[profile_id] = self._leases.get(profile_id, 0) + 1
            self._last_used[profile_id] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._leases[profile_id] -= 1
                self._last_used[profile_id] = time.monotonic()

    def ensure_started(self, profile: Profile, *, by: str) -> bool:
        """Start the profile's server unless it is starting or ready; True when this call
        started it. Does not wait for readiness (see InferenceClient.ready_server)."""
        snap = self._supervisor.snapshot(profile.id)
        if snap is not None and snap.state in (ServerState.READY, ServerState.STARTING):
            return False
        with self._start_lock:
            # Another request may have started it while this one waited for the lock.
            snap = self._wait_while_stopping(profile.id)
            if snap is not None and snap.state in (ServerState.READY, ServerState.STARTING):
                return False
            self._make_room(profile)
            try:
                started = self._supervisor.start(profile.id, by=by)
            except Conflict as exc:
                snap = self._supervisor.snapshot(profile.id)
                if snap is not None and snap.state in (ServerState.READY, ServerState.STARTING):
                    log.info("on-demand start of %s: %s", profile.name, exc.message)
                    return False  # started meanwhile from the Servers tab
                # Another profile's server holds the port, for instance.
                raise StartFailed(f"Could not start {profile.name}: {exc.message}") from exc
            except ManagerError as exc:
                raise StartFailed(f"Could not start {profile.name}: {exc.message}") from exc
            with self._lock:
                self._started[profile.id] = started.started_at
                old = self._stats.get(profile.id, OnDemandStats())
                self._stats[profile.id] = OnDemandStats(old.starts + 1, old.evictions)
            log.info("started %s on demand for %s", profile.name, by)
            return True

    # -- internals ------------------------------------------------------------------------

    def _wait_while_stopping(self, profile_id: int) -> ServerSnapshot | None:
        deadline = time.monotonic() + STOPPING_WAIT_S
        while True:
            snap = self._supervisor.snapshot(profile_id)
            if snap is None or snap.state is not ServerState.STOPPING:
                return snap
            if time.monotonic() > deadline:
                raise StartFailed(f"{snap.profile.name} is still stopping after "
                                  f"{STOPPING_WAIT_S:g} s. Try again in a moment.")
            time.sleep(0.05)

    def _make_room(self, profile: Profile) -> None:
        need = self.need_bytes(profile)
        if need is None:
            log.info("memory need of %s unknown: starting it without a budget check",
                     profile.name)
            return
        while True:
            running = [s for s in self._supervisor.snapshots()
                       if s.state in ACTIVE_STATES and s.profile_id != profile.id]
            held = {s.profile_id: self.need_bytes(s.profile) or 0 for s in running}
            in_use = sum(held.values())
            with self._lock:
                fixed = self._fixed_budget
            capacity = fixed if fixed is not None else self._capacity(in_use)
            if in_use + need <= capacity:
                return
            if need > capacity:
                raise InsufficientMemory(
                    f"{profile.name} needs about {human_bytes(need)} of memory, more than the "
                    f"whole budget of {human_bytes(capacity)}. Use a smaller (more quantised) "
                    "model or a shorter context length in its profile.")
            candidates = self._eviction_candidates(running)
            freeable = sum(held[s.profile_id] for s in candidates)
            if not candidates or in_use - freeable + need > capacity:
                # Stopping what may be stopped would not be enough: stop nothing.
                kept = ", ".join(f"{s.profile.name} (~{human_bytes(held[s.profile_id])}, "
                                 f"{self._why_kept(s)})" for s in running)
                raise InsufficientMemory(
                    f"{profile.name} needs about {human_bytes(need)} of memory but only "
                    f"{human_bytes(max(0, capacity - in_use))} of the {human_bytes(capacity)} "
                    f"budget is free, and the gateway may only stop idle servers it started "
                    f"itself. Running: {kept}. Stop one on the Servers tab and try again.")
            self._evict(candidates[0], profile)

    def _evictable(self, snap: ServerSnapshot) -> bool:
        with self._lock:
            leased = self._leases.get(snap.profile_id, 0) > 0
        return (snap.state is ServerState.READY and self.started_by_gateway(snap)
                and not leased and self._inference.in_flight(snap.profile_id) == 0)

    def _why_kept(self, snap: ServerSnapshot) -> str:
        if not self.started_by_gateway(snap):
            return "started by hand"
        if snap.state is not ServerState.READY:
            return snap.state.value
        return "busy" if not self._evictable(snap) else "idle"

    def _eviction_candidates(self, running: list[ServerSnapshot]) -> list[ServerSnapshot]:
        """Idle servers the gateway started, least recently used first."""
        candidates = [s for s in running if self._evictable(s)]
        with self._lock:
            return sorted(candidates, key=lambda s: self._last_used.get(s.profile_id, 0.0))

    def _evict(self, victim: ServerSnapshot, newcomer: Profile) -> None:
        reason = f"stopped to make room for {newcomer.name} (least recently used)"
        log.info("evicting %s: %s", victim.profile.name, reason)
        try:
            self._supervisor.stop(victim.profile_id, by="gateway", reason=reason)
        except ManagerError as exc:
            log.info("eviction of %s skipped: %s", victim.profile.name, exc.message)
        with self._lock:
            old = self._stats.get(victim.profile_id, OnDemandStats())
            self._stats[victim.profile_id] = OnDemandStats(old.starts, old.evictions + 1)
            self._started.pop(victim.profile_id, None)

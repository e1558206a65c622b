"""What the supervisor hands out: snapshots, transitions, activity, its errors and clock."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from manager.errors import ManagerError
from manager.servers.profiles import Profile
from manager.servers.states import ACTIVE_STATES, PLACED_STATES, ServerState


class ServerNotReady(ManagerError):
    """A request for a server that cannot answer now (stopped, failed or loading)."""


class ServerLoading(ServerNotReady):
    """The server is still loading its model: try again shortly."""


class Clock:
    """Time for policy decisions; tests subclass it to move time forward."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class CancelEvent(threading.Event):
    """A threading.Event whose `set()` also wakes the waits it was handed to
    (Supervisor.wait_for): a waiter whose client went away stops at once, unpolled."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks_lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        with self._hooks_lock:
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    def on_set(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call `hook` when (or now, if) the event is set; returns the call that
        removes the hook again."""
        with self._hooks_lock:
            self._hooks.append(hook)
        if self.is_set():
            hook()

        def remove() -> None:
            with self._hooks_lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)

        return remove


@dataclass(frozen=True)
class ServerSnapshot:
    """A copy of one server's state for tabs, the CLI, chat and the gateway."""

    profile: Profile
    state: ServerState
    state_since: float  # wall clock
    model_path: str
    pid: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    #: The last log lines, captured when the server failed.
    failure_tail: str = ""
    log_path: str | None = None
    adopted: bool = False
    restart_at: float | None = None  # wall clock of a scheduled auto-restart (BACKOFF)
    #: The user who started this run; None for the manager (auto-start) or unknown.
    started_by: int | None = None

    @property
    def profile_id(self) -> int:
        return self.profile.id

    @property
    def base_url(self) -> str:
        """Where to reach the server from this machine."""
        host = self.profile.host
        if host in ("0.0.0.0", "localhost"):
            host = "127.0.0.1"
        elif host == "::" or ":" in host:
            host = "[::1]" if host == "::" else f"[{host}]"
        return f"http://{host}:{self.profile.port}"

    def uptime_s(self, now: float) -> float | None:
        if self.started_at is None or self.state not in ACTIVE_STATES:
            return None
        return max(0.0, now - self.started_at)


@dataclass(frozen=True)
class Transition:
    """One change of a server's state, as subscribers hear it."""

    profile: Profile
    old: ServerState
    new: ServerState
    reason: str
    at: float  # wall clock


@dataclass(frozen=True)
class Activity:
    """A server's use: requests holding it now, and when it was last used (monotonic)."""

    leases: int = 0
    last_used: float = 0.0


def ready_or_raise(snap: ServerSnapshot | None, name: str, now: float) -> ServerSnapshot:
    """The snapshot when the server is READY; else the error that says why not:
    ServerLoading while it loads, ServerNotReady when stopped, stopping or failed."""
    if snap is None or snap.state is ServerState.STOPPED:
        raise ServerNotReady(f"{name} is not running. Start it on the Servers tab.")
    name = snap.profile.name
    if snap.state is ServerState.READY:
        return snap
    if snap.state is ServerState.BACKOFF:
        raise ServerNotReady(f"{name} failed: {snap.reason}")
    if snap.state is ServerState.FAILED:
        raise ServerNotReady(f"{name} failed: {snap.reason} Restart it on the Servers tab.")
    if snap.state is ServerState.STOPPING:
        raise ServerNotReady(f"{name} is stopping.")
    waited = now - (snap.started_at or now)
    raise ServerLoading(f"{name} is still loading its model ({waited:.0f} s so far). "
                        "Try again in a moment.")


def uses_model(snaps: Iterable[ServerSnapshot], path_or_repo: str) -> bool:
    """Does a server that runs (or will run again) use this model: its folder, a folder
    above it such as an HF cache repo folder, or the repo id / path its profile names?"""
    wanted = path_or_repo.strip()
    target = Path(wanted).expanduser()
    for snap in snaps:
        if snap.state not in PLACED_STATES:
            continue
        named = snap.profile.model.strip()
        if named == wanted:
            return True
        # Repo ids are not case-sensitive (the hub, and the cache on macOS's disks); a
        # path is compared below by what stat says.
        if not target.is_absolute() and named.casefold() == wanted.casefold():
            return True
        if target.is_absolute() and snap.model_path:
            running = Path(snap.model_path)
            if running == target or target in running.parents \
                    or _same_or_inside(target, running):
                return True
    return False


def _same_or_inside(target: Path, running: Path) -> bool:
    """`running` is `target` or inside it, however either is spelled: through symlinks
    (macOS's /tmp and /var), in another case (macOS's disks ignore it)."""
    try:
        wanted = target.stat()
    except OSError:
        return False
    for folder in (running, *running.parents):
        try:
            if os.path.samestat(wanted, folder.stat()):
                return True
        except OSError:
            continue
    return False

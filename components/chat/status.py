"""What the Chat tab says about servers: the picker's choices and the status line."""

from __future__ import annotations

import time

from manager.servers.profiles import Profile
from manager.servers.supervisor import ACTIVE_STATES, ServerState
from manager.services import Services

_STATE_ICONS = {ServerState.READY: "🟢", ServerState.STARTING: "⏳",
                ServerState.STOPPING: "⏳", ServerState.FAILED: "🔴",
                ServerState.BACKOFF: "🟠", ServerState.STOPPED: "⚪"}


def server_state(services: Services, profile: Profile) -> ServerState:
    snap = services.supervisor.snapshot(profile.id)
    return snap.state if snap is not None else ServerState.STOPPED


def server_choices(services: Services) -> list[tuple[str, int]]:
    """Every profile, Ready servers first, labelled with its server's state."""
    rows = []
    for profile in services.profiles.list():
        state = server_state(services, profile)
        rank = 0 if state is ServerState.READY else 1 if state in ACTIVE_STATES else 2
        rows.append((rank, profile.name.casefold(),
                     (f"{profile.name} · {state.label}", profile.id)))
    return [choice for *_, choice in sorted(rows)]


def status_markdown(services: Services, profile: Profile | None, *, started: bool = False
                    ) -> str:
    if profile is None:
        if not services.profiles.list():
            return ("No servers to chat with yet: make a profile on the Profiles tab, or "
                    "press “Try a tool-use model” above.")
        return "Pick a server (a profile that is not running is started for you)."
    snap = services.supervisor.snapshot(profile.id)
    state = snap.state if snap is not None else ServerState.STOPPED
    icon = _STATE_ICONS.get(state, "")
    name = f"**{profile.name}**"
    if state is ServerState.READY:
        return f"{icon} {name} is ready."
    if state is ServerState.STARTING:
        waited = ""
        if snap is not None and snap.started_at is not None:
            waited = f" ({time.time() - snap.started_at:.0f} s so far)"
        lead = f"Started {name} for you: it" if started else f"{name}"
        return (f"{icon} {lead} is loading its model{waited}. You can type now: the message "
                "goes out when it is ready.")
    if state is ServerState.FAILED:
        reason = snap.reason if snap is not None else ""
        return f"{icon} {name} failed: {reason} Pick it again to restart it."
    if state is ServerState.BACKOFF:  # the reason says when it restarts by itself
        reason = snap.reason if snap is not None else ""
        return f"{icon} {name} failed: {reason} Pick it again to restart it now."
    if state is ServerState.STOPPING:
        return f"{icon} {name} is stopping."
    return f"{icon} {name} is stopped."

"""`mlx-manager start PROFILE`, `stop PROFILE` and `run PROFILE` (a chat in the terminal,
starting the profile on demand, like `ollama run`).

While a dashboard runs on the data dir they ask it (remote.py): its supervisor starts,
owns and stops the server, and `run`'s turns run in it (its tools, its leases). With no
dashboard they act on the data dir directly, holding it like a dashboard does (so none
starts and adopts mid-command): `start` leaves the server running for the next
dashboard to adopt, and `run` stops on leaving what it started for the chat.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, TextIO

from manager.cli.instance import hold_data_dir
from manager.cli.remote import find_dashboard
from manager.errors import ManagerError
from manager.servers.states import ServerState
from manager.settings import Settings

if TYPE_CHECKING:  # imported where used: the other commands and `--help` need none of it
    from manager.chat.events import ChatEvent
    from manager.cli.remote import Dashboard
    from manager.servers.snapshot import ServerSnapshot
    from manager.services import Services

#: How long a direct start is waited for at most: the supervisor's own start timeout
#: fails a server that never loads well before this.
DIRECT_WAIT_S = 3600.0
#: Each wait the dashboard is asked for (it answers sooner when the server settles).
REMOTE_WAIT_S = 30.0
#: Log lines of a failed server shown with its reason.
TAIL_LINES = 8
#: The exit code after Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED = 130


class StartFailed(ManagerError):
    pass


class HungUp(SystemExit):
    """The terminal closed (SIGHUP) or the command was asked to end (SIGTERM): raised in
    the main thread so that `run` stops what it started before the process ends."""


@contextlib.contextmanager
def ended_by_hangup() -> Iterator[None]:
    """SIGHUP and SIGTERM end the command through its `finally` blocks, not around them
    (their default action kills the process at once: a server `run` started stayed)."""

    def hang_up(signum: int, _frame: object) -> None:
        raise HungUp(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (a test calling in on a thread)
        return
    previous = {sig: signal.signal(sig, hang_up) for sig in (signal.SIGHUP, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def add_commands(sub: argparse._SubParsersAction,
                 data_dir_flag: Callable[..., None]) -> None:
    start = sub.add_parser("start", help="start a profile's model server (through the "
                                         "dashboard when one runs)")
    start.add_argument("profile", help="the profile's name (or id)")
    data_dir_flag(start, argparse.SUPPRESS)
    stop = sub.add_parser("stop", help="stop a profile's model server")
    stop.add_argument("profile", help="the profile's name (or id)")
    data_dir_flag(stop, argparse.SUPPRESS)
    run = sub.add_parser("run", help="chat with a profile's model in the terminal "
                                     "(starts it if needed; tools on)")
    run.add_argument("profile", help="the profile's name (or id)")
    run.add_argument("--verbose", action="store_true",
                     help="show token counts and speed after each answer")
    data_dir_flag(run, argparse.SUPPRESS)


def run(args: argparse.Namespace, settings: Settings, stdin: TextIO, out: TextIO,
        err: TextIO) -> int:
    dashboard = find_dashboard(settings.data_dir)
    if dashboard is not None:
        try:
            return _through(dashboard, args, stdin, out, err)
        finally:
            dashboard.close()
    from manager.services import Services

    with ended_by_hangup(), hold_data_dir(settings.data_dir, f"mlx-manager {args.command}"):
        services = Services.create(settings, run_servers=False)
        try:
            # In charge while it holds the data dir: knows what a dashboard left running.
            services.supervisor.adopt_or_reap()
            return _direct(services, args, stdin, out, err)
        finally:
            services.close(keep_servers=True)


# --- through a running dashboard ------------------------------------------------------------


def _through(dashboard: Dashboard, args: argparse.Namespace, stdin: TextIO, out: TextIO,
             err: TextIO) -> int:
    name = args.profile
    if args.command == "stop":
        server = dashboard.call("POST", "/servers/stop", {"profile": name})["server"]
        print(f"Stopped {server['profile']} (through {dashboard.label}).", file=out)
        return 0
    answer = dashboard.call("POST", "/servers/start", {
        "profile": name, "on_demand": args.command == "run", "wait": 0})
    server = answer["server"]
    if server["state"] == ServerState.STARTING.value:
        print(f"Starting {server['profile']}...", file=err, flush=True)
    try:
        while server["state"] == ServerState.STARTING.value:
            server = dashboard.call("POST", "/servers/wait",
                                    {"profile": name, "wait": REMOTE_WAIT_S})["server"]
    except KeyboardInterrupt:
        print(f"\nNo longer waiting; {dashboard.label} goes on starting "
              f"{server['profile']}.", file=err)
        return INTERRUPTED
    _check_ready(server["profile"], server["state"], server["reason"],
                 server.get("failure_tail") or "")
    if args.command == "start":
        already = "" if answer["started"] else "already running; "
        print(f"{server['profile']} is ready on port {server['port']} ({already}pid "
              f"{server['pid']}; run by {dashboard.label}).", file=out)
        return 0
    from manager.cli.chat_session import event_from_json

    chat_id = dashboard.call("POST", "/chats", {"profile": name})["chat"]

    def turns(text: str) -> Generator[ChatEvent, None, None]:
        lines = dashboard.stream(f"/chats/{chat_id}/turn", {"text": text})
        try:
            for line in lines:
                yield event_from_json(line)
        finally:
            lines.close()

    try:
        _repl(turns, args, stdin, out)
    finally:
        _forget_chat(dashboard, chat_id)
    return 0


def _forget_chat(dashboard: Dashboard, chat_id: int) -> None:
    try:
        dashboard.call("DELETE", f"/chats/{chat_id}")
    except ManagerError as exc:  # the dashboard forgets it anyway when it stops
        print(f"note: {exc.message}", file=sys.stderr)


# --- directly on the data dir ---------------------------------------------------------------


def _direct(services: Services, args: argparse.Namespace, stdin: TextIO, out: TextIO,
            err: TextIO) -> int:
    profile = services.profiles.find(args.profile)
    supervisor = services.supervisor
    if args.command == "stop":
        supervisor.stop(profile.id, by=f"mlx-manager {args.command}")
        print(f"Stopped {profile.name}.", file=out)
        return 0
    snap = supervisor.snapshot(profile.id)
    started = False
    if snap is None or snap.state not in (ServerState.READY, ServerState.STARTING):
        services.placement.start(None, profile.id, by=f"mlx-manager {args.command}")
        started = True
        print(f"Starting {profile.name}...", file=err, flush=True)
    try:
        snap = supervisor.wait_for(profile.id, lambda s: s is None
                                   or s.state is not ServerState.STARTING, DIRECT_WAIT_S)
    except (KeyboardInterrupt, HungUp) as exc:
        # Nobody would watch it load (no dashboard): what this started stops.
        how = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "hang-up"
        if started:
            supervisor.stop(profile.id, by=f"mlx-manager {args.command}",
                            reason=f"start interrupted ({how})")
        if isinstance(exc, HungUp):
            raise
        print(f"\nInterrupted{'; stopped ' + profile.name if started else ''}.", file=err)
        return INTERRUPTED
    if snap is None:
        raise StartFailed(f"{profile.name} has no server.")
    _check_snapshot(snap)
    if args.command == "start":
        already = "" if started else "already running; "
        print(f"{profile.name} is ready on port {profile.port} ({already}pid {snap.pid}). It "
              f"keeps running: `mlx-manager stop {profile.name}` stops it.", file=out)
        return 0
    from manager.cli.chat_session import TerminalChats

    chats = TerminalChats(services)
    chat_id = chats.open(profile)
    try:
        _repl(lambda text: chats.turn(chat_id, text), args, stdin, out)
    finally:
        if started:
            supervisor.stop(profile.id, by="mlx-manager run")
            print(f"Stopped {profile.name} (it was started for this chat; "
                  f"`mlx-manager start {profile.name}` keeps it running).", file=err)
    return 0


def _repl(turns: Callable[[str], Generator[ChatEvent, None, None]],
          args: argparse.Namespace, stdin: TextIO, out: TextIO) -> None:
    from manager.cli.terminal_chat import Repl

    Repl(turns, stdin=stdin, out=out, tty=out.isatty(),
         verbose=bool(getattr(args, "verbose", False))).run()


def _check_snapshot(snap: ServerSnapshot) -> None:
    _check_ready(snap.profile.name, snap.state.value, snap.reason, snap.failure_tail)


def _check_ready(name: str, state: str, reason: str, tail: str) -> None:
    if state == ServerState.READY.value:
        return
    lines = [line for line in tail.splitlines() if line.strip()][-TAIL_LINES:]
    said = "\n".join(f"  | {line}" for line in lines)
    raise StartFailed(f"{name} did not start ({state}): {reason or 'no reason given'}"
                      + (f"\nIts log ends with:\n{said}" if said else ""))

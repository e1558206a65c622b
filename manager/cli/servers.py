"""`mlx-manager profiles list|add|rm` and `mlx-manager status`.

They work on the data dir directly (the machine owner's rights, like `users`); a
running dashboard reads profiles from the same SQLite file, so it sees the change.
`status` reads what the dashboard records about its servers and measures the live
ones itself (memory of the whole process tree).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

import psutil

from manager.errors import ValidationError
from manager.servers.backends import Backend
from manager.servers.states import FAILED_STATES, ServerState
from manager.units import format_bytes, format_duration

if TYPE_CHECKING:  # the commands import what they use: `--help` needs none of it
    from manager.cli.remote import Dashboard
    from manager.services import Services

log = logging.getLogger(__name__)

_FLAG_OF_FIELD = {
    "name": "NAME", "model": "--model", "port": "--port", "host": "--host",
    "backend": "--backend", "context_length": "--context-length", "max_tokens": "--max-tokens",
    "temperature": "--temperature", "top_p": "--top-p", "thinking": "--thinking",
    "system_prompt": "--system-prompt", "description": "--description",
    "idle_timeout_minutes": "--idle-timeout",
}


def add_commands(sub: argparse._SubParsersAction,
                 command_group: Callable[..., Callable[[str, str], argparse.ArgumentParser]],
                 data_dir_flag: Callable[..., None]) -> None:
    """Adds `profiles` and `status` to the top-level subcommands."""
    action = command_group(sub, "profiles", "list, add and remove server profiles",
                           "profiles_command")

    action("list", "list profiles")
    add = action("add", "create a profile (the same checks as the Profiles tab)")
    add.add_argument("name")
    add.add_argument("--model", required=True,
                     help="a model folder, or the repo id of a downloaded model")
    add.add_argument("--port", type=int, help="default: the next free port from 8080")
    add.add_argument("--host", default="127.0.0.1",
                     help="address the server listens on (default 127.0.0.1; 0.0.0.0 = LAN)")
    add.add_argument("--backend", choices=[b.value for b in Backend],
                     help="default: mlx_vlm for vision models, else mlx_lm")
    add.add_argument("--description", default="")
    add.add_argument("--system-prompt", default="",
                     help="added to every request that has no system message")
    add.add_argument("--context-length", type=int)
    add.add_argument("--max-tokens", type=int)
    add.add_argument("--temperature", type=float)
    add.add_argument("--top-p", type=float)
    add.add_argument("--thinking", choices=["on", "off"], help="default: the model's own")
    add.add_argument("--idle-timeout", type=int, metavar="MINUTES",
                     help="stop the server after this long without requests")
    add.add_argument("--auto-start", action="store_true",
                     help="start it whenever the dashboard starts")
    add.add_argument("--auto-restart", action="store_true",
                     help="restart it after a crash (gives up after repeated quick failures)")
    rm = action("rm", "delete a profile (its server must be stopped)")
    rm.add_argument("name")

    status = sub.add_parser("status", aliases=["ps"], help="the servers the dashboard runs")
    data_dir_flag(status, argparse.SUPPRESS)


def run(args: argparse.Namespace, services: Services, out: TextIO) -> int:
    if args.command in ("status", "ps"):
        return _status(services, out)
    profiles = services.profiles
    if args.profiles_command == "list":
        rows = profiles.list()
        if not rows:
            _say(out, "No profiles yet. Add one with `mlx-manager profiles add NAME --model PATH`.")
            return 0
        _say(out, table([["NAME", "BACKEND", "HOST", "PORT", "AUTO-START", "MODEL"]] + [
            [p.name, p.backend.value, p.host, str(p.port), "yes" if p.auto_start else "no",
             p.model] for p in rows]))
        return 0
    if args.profiles_command == "add":
        from manager.servers.profiles import ProfileSpec

        spec = ProfileSpec(
            name=args.name, model=args.model, description=args.description,
            backend=Backend(args.backend) if args.backend else None, host=args.host,
            port=args.port, context_length=args.context_length, max_tokens=args.max_tokens,
            temperature=args.temperature, top_p=args.top_p,
            thinking=None if args.thinking is None else args.thinking == "on",
            system_prompt=args.system_prompt, auto_start=args.auto_start,
            auto_restart=args.auto_restart, idle_timeout_minutes=args.idle_timeout)
        try:
            profile = profiles.create(None, spec)
        except ValidationError as exc:
            flag = _FLAG_OF_FIELD.get(exc.field or "")
            raise ValidationError(f"{flag}: {exc.message}" if flag else exc.message,
                                  exc.field) from exc
        _say(out, f"Created profile {profile.name!r}: {profile.backend.value} on "
              f"{profile.host}:{profile.port}.")
        return 0
    profile = profiles.get_by_name(args.name)
    profiles.delete(None, profile.id)
    _say(out, f"Deleted profile {profile.name!r}.")
    return 0


def status_through(dashboard: Dashboard, out: TextIO) -> int:
    """`ps` while a dashboard runs: its supervisor's own view."""
    servers = [s for s in dashboard.call("GET", "/servers")["servers"]
               if s["state"] != ServerState.STOPPED.value]
    if not servers:
        _say(out, "No servers running.")
        return 0
    from manager.servers.process import tree_memory_bytes

    now = time.time()
    rows = [["PROFILE", "STATE", "PID", "PORT", "UPTIME", "MEMORY"]]
    for server in servers:
        proc = _process(server["pid"])
        memory = tree_memory_bytes(proc) if proc is not None else None
        uptime = format_duration(now - server["started_at"]) \
            if proc is not None and server["started_at"] else "-"
        rows.append([server["profile"], server["state"], str(server["pid"] or "-"),
                     str(server["port"] or "-"), uptime,
                     format_bytes(memory) if memory is not None else "n/a"])
    _say(out, table(rows))
    return 0


def _process(pid: int | None) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error as exc:
        log.debug("server process %s not readable: %s", pid, exc)
        return None


def _status(services: Services, out: TextIO) -> int:
    from manager.servers.process import live_process, tree_memory_bytes
    from manager.servers.records import read_records

    records = [r for r in read_records(services.store) if r.state is not ServerState.STOPPED]
    if not records:
        _say(out, "No servers running.")
        return 0
    now = time.time()
    rows = [["PROFILE", "STATE", "PID", "PORT", "UPTIME", "MEMORY"]]
    for record in records:
        proc = live_process(record) if record.state not in FAILED_STATES else None
        state = record.state.value
        if record.state not in FAILED_STATES and proc is None:
            state = f"gone (was {state})"
        memory = tree_memory_bytes(proc) if proc is not None else None
        uptime = format_duration(now - record.started_at) \
            if proc is not None and record.started_at else "-"
        rows.append([record.profile_name, state, str(record.pid or "-"),
                     str(record.port or "-"), uptime,
                     format_bytes(memory) if memory is not None else "n/a"])
    _say(out, table(rows))
    return 0


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )

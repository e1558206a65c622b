"""Model servers run at a lower CPU priority than the dashboard.

A server decodes flat out and keeps the cores busy; the dashboard (the gateway, the
pages) needs a core for a few microseconds at a time, and the client waits for each of
those moments: a request on its way to the server, every chunk on its way back. When the
dashboard wakes behind a busy server it waits in the kernel's run queue first
(~100 us a time on 2 cores, measured with /proc/PID/task/TID/schedstat). A server a
few nice steps below the dashboard (`Settings.server_nice`) lets it have the core at
once. That costs the server what the dashboard uses (a few % of a core while
streaming), and the server yields to the person's other programs too, as a background
job should.

Linux schedules each session as a group ("autogroup", on where the desktop does not put
programs in cgroups of their own); a server runs in a session of its own, so the group
gets the same nice steps as its threads (/proc/PID/autogroup).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from manager.settings import MAX_NICE

log = logging.getLogger(__name__)

_PROC = Path("/proc")
_AUTOGROUP_NICE = re.compile(r"\bnice\s+(-?\d+)")


def lower(pid: int, steps: int) -> None:
    """Put process `pid` (just spawned, in its own session) `steps` nice steps below this
    process. Best effort: a process that is gone or a system that refuses is logged, and
    the server runs at the priority it has."""
    if steps <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        target = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, 0) + steps)
        for tid in _threads(pid):  # Linux: nice is per thread; new threads inherit it
            os.setpriority(os.PRIO_PROCESS, tid, target)
        group = _PROC / str(pid) / "autogroup"
        if group.exists():
            group.write_text(str(min(MAX_NICE, _autogroup_nice(_PROC / "self" / "autogroup")
                                     + steps)))
    except OSError as exc:
        log.info("could not lower the CPU priority of pid %s: %s", pid, exc)


def _threads(pid: int) -> list[int]:
    """The thread ids of `pid` (Linux, /proc); elsewhere the process id, which macOS's
    setpriority applies to the whole process."""
    try:
        return sorted(int(tid) for tid in os.listdir(_PROC / str(pid) / "task"))
    except (FileNotFoundError, NotADirectoryError):
        return [pid]


def _autogroup_nice(path: Path) -> int:
    """The nice of this process's autogroup ("/autogroup-12 nice 0"); 0 when unknown."""
    try:
        found = _AUTOGROUP_NICE.search(path.read_text())
    except OSError:
        return 0
    return int(found.group(1)) if found else 0

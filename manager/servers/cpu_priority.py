"""Model servers run at a lower CPU priority than the dashboard.

A server decodes flat out and keeps the cores busy; the dashboard (the gateway, the
pages) needs a core for tens of microseconds at a time, and the client waits for each
of those moments: a request on its way to the server, every chunk on its way back. When
the dashboard wakes behind a busy server it waits in the kernel's run queue first
(~100 us a time on 2 cores, measured with /proc/PID/task/TID/schedstat). With the
server a few nice steps lower (`Settings.server_nice`) that wait was 68-87 us instead
of 101-114 (docs/benchmarks.md). It costs the server what the dashboard uses (a few %
of a core while streaming), and the server yields to the person's other programs too,
as a background job should.

Linux schedules each session as a group ("autogroup", where the desktop does not put
programs in cgroups of their own): there the threads' nice only orders the threads of
one session. A server runs in a session of its own, so its group gets the same steps
(/proc/PID/autogroup).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

from manager.settings import MAX_NICE

log = logging.getLogger(__name__)

_PROC = Path("/proc")
#: An autogroup's nice refused for now (EAGAIN) is tried again this often, this many times.
GROUP_RETRY_S = 0.1
GROUP_RETRIES = 100
THREAD_PASSES = 20  # a bound: a process that starts threads endlessly is not new
_AUTOGROUP_NICE = re.compile(r"\bnice\s+(-?\d+)")


def lower(pid: int, steps: int) -> None:
    """Put process `pid` (just spawned, leading a session of its own) `steps` nice steps
    below this process. Best effort: what the system refuses is logged, and the server
    runs at the priority it has."""
    if steps <= 0 or not hasattr(os, "setpriority"):
        return
    try:  # the main thread's: on Linux os.getpriority(.., 0) is the calling thread's
        own = os.getpriority(os.PRIO_PROCESS, os.getpid())
    except OSError as exc:
        log.info("could not read this process's CPU priority: %s", exc)
        return
    _lower_threads(pid, min(MAX_NICE, own + steps))
    group = _PROC / str(pid) / "autogroup"
    if group.exists() and _leads_a_session(pid):  # never the dashboard's own group
        value = min(MAX_NICE, (autogroup_nice("self") or 0) + steps)
        if not _set_group(group, value):
            threading.Thread(target=_retry_group, args=(group, value), daemon=True,
                             name=f"autogroup-{pid}").start()


def _lower_threads(pid: int, target: int) -> None:
    """Every thread of `pid` to `target`. Listed again until no new one shows up: a
    thread started meanwhile by one not yet lowered would keep the old nice (threads
    inherit their creator's)."""
    done: set[int] = set()
    for _ in range(THREAD_PASSES):
        fresh = set(thread_ids(pid)) - done
        if not fresh:
            return
        for tid in fresh:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, target)
            except ProcessLookupError:  # a thread that ended, or the whole process
                if tid == pid:
                    log.info("pid %s ended before its CPU priority was lowered", pid)
            except OSError as exc:
                log.info("could not lower the CPU priority of pid %s, thread %s: %s",
                         pid, tid, exc)
        done |= fresh


def _set_group(group: Path, value: int) -> bool:
    """Write the autogroup's nice; False when the kernel says to try again later."""
    try:
        group.write_text(str(value))
    except BlockingIOError:
        return False
    except OSError as exc:  # the process ended, or the system refuses
        log.info("could not lower the CPU priority of %s: %s", group.parent.name, exc)
    return True


def _retry_group(group: Path, value: int) -> None:
    """Linux takes one autogroup nice from an unprivileged user per 100 ms, machine-wide
    (EAGAIN otherwise): servers spawned together (ranks, spares, auto-starts) wait their
    turn here. There is nothing to wait on but the clock."""
    for _ in range(GROUP_RETRIES):
        time.sleep(GROUP_RETRY_S)
        if not group.exists() or _set_group(group, value):
            return
    log.warning("could not lower the CPU priority of pid %s's session: the kernel kept "
                "refusing", group.parent.name)


def _leads_a_session(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def thread_ids(pid: int) -> list[int]:
    """The thread ids of `pid` (Linux, /proc); elsewhere the process id, which macOS's
    setpriority applies to the whole process."""
    try:
        return [int(tid) for tid in os.listdir(_PROC / str(pid) / "task")]
    except (FileNotFoundError, NotADirectoryError):
        return [pid]


def autogroup_nice(pid: int | str) -> int | None:
    """The nice of the process's autogroup ("/autogroup-12 nice 0"); None where it
    cannot be read (no autogroups: not Linux). 0 when the file is empty: the default
    group (a process of init's session, never under a setsid, as services and CI jobs can
    be) is the root group itself, which weighs as nice 0."""
    try:
        text = (_PROC / str(pid) / "autogroup").read_text()
    except OSError:
        return None
    found = _AUTOGROUP_NICE.search(text)
    return int(found.group(1)) if found else 0

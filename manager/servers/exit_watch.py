"""Noticing a server's exit when it happens, not at the monitor's next tick.

The monitor's tick (every 1-5 s) runs the supervisor's reconcile pass, which notices a
server that exited. A crash of a READY server was therefore known up to a tick late
(2 s while a page watches, 5 s when nobody does), before any page could show it. Each
live server process now has one thread blocked on its exit (a pidfd on Linux, kqueue
on macOS: `wakeup.ChildWatch`), which asks for a tick at once when it ends. Where
neither works the ticks still notice exits, as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from manager.servers.supervisor import Supervisor
from manager.servers.wakeup import ChildWatch

log = logging.getLogger(__name__)

#: How often a watch looks whether it is still wanted (its server stopped being live, or
#: the watches were closed): the only wake of a watch whose server keeps running.
CHECK_S = 5.0

Key = tuple[int, float]  # (pid, create time): a pid that is reused is another process


class ExitWatches:
    """One watch per live server process; `on_exit()` is called when one ends."""

    def __init__(self, supervisor: Supervisor, on_exit: Callable[[], None]) -> None:
        self._supervisor = supervisor
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._watched: set[Key] = set()
        self._closed = threading.Event()

    def sync(self) -> None:
        """Watch every live server process not watched yet (call after changes). A process
        is watched once while it counts as live, so one that exited but is still listed
        (while its stop ends) is not watched again and again."""
        if self._closed.is_set():
            return
        live = {(pid, created): profile_id
                for profile_id, pid, created in self._supervisor.live_processes()}
        with self._lock:
            self._watched &= live.keys()  # forget processes no longer live
            new = [key for key in live if key not in self._watched]
            self._watched.update(new)
        for key in new:
            threading.Thread(target=self._await_exit, args=(key,),
                             name=f"exit-watch-{live[key]}", daemon=True).start()

    def close(self) -> None:
        """Stop watching (each watch ends within CHECK_S)."""
        self._closed.set()

    def watching(self) -> int:
        with self._lock:
            return len(self._watched)

    def _live(self, key: Key) -> bool:
        return any((pid, created) == key
                   for _, pid, created in self._supervisor.live_processes())

    def _await_exit(self, key: Key) -> None:
        pid = key[0]
        watch = ChildWatch(None, pid)
        try:
            if not watch.event_driven:
                return  # gone already, or no pidfd/kqueue here: the ticks notice it
            while not self._closed.is_set():
                if watch.wait(CHECK_S):
                    log.debug("server process %s exited: reconciling now", pid)
                    self._on_exit()
                    break
                if not self._live(key):
                    break
        finally:
            watch.close()

"""The warm spare interpreter: the next server start skips the imports.

Most of a small model's start is `import mlx_lm` (or mlx_vlm), not loading the model.
So the pool keeps one spare per backend in use: a fresh interpreter (spawned, never
forked: safe with Metal) in its own session that has already imported the server
module and waits for its orders on stdin (manager/servers/spare_main.py). The
supervisor hands the next start of that backend to the spare (`take`): the spare writes
into the server's log and runs the real server main in-process, exactly as
`python -m ...` would, and from then on it is that server (same stop, adoption, crash
handling). A replacement is started once that start has settled (`refill`), so its
imports do not compete with the server that is loading.

A spare that dies is replaced (not after MAX_QUICK_DEATHS deaths before it ever got
warm: its log tail says why). A spare exits by itself when its stdin ends, so a
dashboard that is killed leaves none behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from manager.accounts.auth import User
from manager.accounts.permissions import Action, require
from manager.servers import cpu_priority
from manager.servers.logs import read_tail
from manager.servers.process import child_env, server_module, terminate, write_header
from manager.servers.profiles import Backend
from manager.servers.spare_main import HANDED, WARM

log = logging.getLogger(__name__)

#: A spare that dies this many times in a row before it got warm is not started again.
MAX_QUICK_DEATHS = 3
#: A spare's memory moving by less than this is not news for the Servers tab.
_MEMORY_STEP = 1024 * 1024
#: The longest a server's exit waits for the last output of the spare it was (`settled`).
SETTLE_S = 5.0
#: The folder `python -m manager.servers.spare_main` runs from (where `manager` is).
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SpareView:
    """What the Servers tab shows of one backend's spare."""

    backend: Backend
    pid: int | None
    warm: bool
    memory_bytes: int | None
    problem: str = ""


@dataclass(eq=False)
class _Spare:
    backend: Backend
    popen: subprocess.Popen[bytes]
    log_path: Path
    warm: bool = False
    taken: bool = False
    memory_bytes: int | None = None
    #: Taken: the server's log, and how much of the spare's own log went there.
    server_log: Path | None = None
    copied: int = 0
    handed: bool = False  # it said so: its output goes to the server's log now
    settled: threading.Event = field(default_factory=threading.Event)  # _settle_log ran


class SparePool:
    """At most one warm spare per backend. Thread-safe."""

    def __init__(self, python: str, hub_cache: Path, logs_dir: Path, *, enabled: bool = True,
                 pinned_by: str = "", save: Callable[[bool], None] | None = None,
                 on_change: Callable[[], None] | None = None, nice_steps: int = 0) -> None:
        self._python = python
        #: Nice steps below the dashboard's CPU priority for spares and, through the
        #: supervisor, the servers started without one (cpu_priority.py).
        self.nice_steps = nice_steps
        self._hub_cache = hub_cache
        self._logs_dir = logs_dir
        self._enabled = enabled
        #: Set when a flag or environment variable decided `enabled` (the UI cannot).
        self.pinned_by = pinned_by
        self._save = save
        #: Told (outside the lock) when what `views` shows changed: pages redraw then.
        self._on_change = on_change
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._spares: dict[Backend, _Spare] = {}
        self._handing: dict[int, _Spare] = {}  # by pid: taken, own log not settled yet
        self._wanted: set[Backend] = set()
        self._deaths: dict[Backend, int] = {}
        self._problems: dict[Backend, str] = {}
        self._running = False  # only a dashboard that runs servers keeps spares
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self._enabled

    # -- commands -------------------------------------------------------------------------

    def start(self, backends: Iterable[Backend]) -> None:
        """Keep a spare for each of these backends (those the profiles use) and, from
        now on, for every backend a server is started with."""
        with self._lock:
            first, self._running = not self._running, True
            self._wanted.update(backends)
            kept = {spare.log_path for spare in self._spares.values()}
        if first:  # logs of spares an earlier dashboard left (it ended mid hand-over)
            for stale in self._logs_dir.glob("spare-*.log"):
                try:
                    if stale not in kept:
                        stale.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("could not remove the old spare log %s: %s", stale, exc)
        self.refill()

    def switch(self, actor: User | None, on: bool) -> None:
        """Turn the spare on or off (an admin's choice, saved); off ends the spares."""
        require(actor, Action.MANAGE_SETTINGS)
        with self._lock:
            self._enabled = on
            self._deaths.clear()
            self._problems.clear()
            doomed = [] if on else list(self._spares.values())
            if not on:
                self._spares.clear()
            self._changed.notify_all()
        if self._save is not None:
            self._save(on)
        log.info("warm spare interpreter turned %s by %s", "on" if on else "off",
                 actor.email if actor is not None else "the manager")
        for spare in doomed:
            self._end(spare)
        if on:
            self.refill()
        self._changed_view()

    def take(self, backend: Backend, argv: list[str], log_file: Path, env: Mapping[str, str],
             cwd: Path, *, by: str) -> tuple[subprocess.Popen[bytes], float | None] | None:
        """Hand a start to the backend's spare: it becomes the server `argv` describes,
        writing to `log_file`. None when there is no live spare (the caller spawns)."""
        with self._lock:
            self._wanted.add(backend)
            spare = self._spares.get(backend)
            if not (self._enabled and self._running) or spare is None \
                    or spare.popen.poll() is not None:
                return None
            del self._spares[backend]
            spare.taken = True
            self._changed.notify_all()
        try:
            with log_file.open("ab") as handle:
                write_header(handle, argv, by, ", warm spare interpreter")
                copied = handle.write(spare.log_path.read_bytes())  # its output so far
            # What the spare writes after this copy reaches the server's log too, by the
            # spare (spare_main._switch_output) or, if it ends first, by _listen.
            with self._lock:
                spare.server_log, spare.copied = log_file, copied
                self._handing[spare.popen.pid] = spare
            order = {"argv": argv, "log": str(log_file), "env": dict(env), "cwd": str(cwd),
                     "spare_log": str(spare.log_path), "copied": copied}
            stdin = spare.popen.stdin
            if stdin is None:
                raise OSError("the spare has no stdin")
            stdin.write(json.dumps(order).encode() + b"\n")
            stdin.close()
        except OSError as exc:
            log.warning("could not hand the start to the %s spare (pid %s): %s",
                        backend.value, spare.popen.pid, exc)
            with self._lock:
                spare.server_log = None  # the caller spawns the server itself
                self._handing.pop(spare.popen.pid, None)
            self._end(spare)
            return None
        try:
            create_time: float | None = psutil.Process(spare.popen.pid).create_time()
        except psutil.Error as exc:
            log.info("spare pid %s exited at once: %s", spare.popen.pid, exc)
            create_time = None
        log.info("%s server handed to the warm spare (pid %s)", backend.value, spare.popen.pid)
        self._changed_view()
        return spare.popen, create_time

    def refill(self) -> None:
        """Start a spare for each wanted backend that has none (after a start settled)."""
        with self._lock:
            if self._closed or not (self._enabled and self._running):
                return
            missing = [b for b in sorted(self._wanted, key=lambda b: b.value)
                       if b not in self._spares
                       and self._deaths.get(b, 0) < MAX_QUICK_DEATHS]
            for backend in missing:
                spare = self._launch(backend)
                if spare is not None:
                    self._spares[backend] = spare
        if missing:
            self._changed_view()

    def sample(self) -> None:
        """Measure the spares' memory (run by the monitor's tick, through reconcile)."""
        with self._lock:
            spares = list(self._spares.values())
        moved = False
        for spare in spares:
            try:
                memory: int | None = psutil.Process(spare.popen.pid).memory_info().rss
            except psutil.Error as exc:
                log.debug("spare pid %s gone while measuring: %s", spare.popen.pid, exc)
                memory = None
            # Redraw for a new figure, not for every page of memory touched.
            moved = moved or (memory is None) != (spare.memory_bytes is None) or abs(
                (memory or 0) - (spare.memory_bytes or 0)) >= _MEMORY_STEP
            spare.memory_bytes = memory
        if moved:
            self._changed_view()

    def views(self) -> list[SpareView]:
        with self._lock:
            views = [SpareView(s.backend, s.popen.pid, s.warm, s.memory_bytes)
                     for s in self._spares.values()]
            views += [SpareView(b, None, False, None, problem)
                      for b, problem in self._problems.items() if b not in self._spares]
        return sorted(views, key=lambda v: v.backend.value)

    def wait_warm(self, backend: Backend, timeout: float) -> bool:
        """Wait until the backend has a warm spare (benchmarks and tests)."""
        with self._lock:
            return self._changed.wait_for(
                lambda: (s := self._spares.get(backend)) is not None and s.warm, timeout)

    def close(self) -> None:
        """End every spare that is not a server; safe to call twice."""
        with self._lock:
            self._closed = True
            doomed = list(self._spares.values())
            self._spares.clear()
            self._changed.notify_all()
        for spare in doomed:
            self._end(spare)

    # -- internals ------------------------------------------------------------------------

    def _launch(self, backend: Backend) -> _Spare | None:
        """Lock held. A new spare importing the backend's server module."""
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        path = self._logs_dir / f"spare-{backend.value}-{int(time.time() * 1000)}.log"
        argv = [self._python, "-m", "manager.servers.spare_main", server_module(backend)]
        try:
            with path.open("wb") as output:
                popen = subprocess.Popen(  # noqa: S603 - argv list, no shell
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=output,
                    env=child_env(self._hub_cache), start_new_session=True, close_fds=True,
                    cwd=_PACKAGE_ROOT)
            # Now: the threads its imports start inherit it, and so does the server.
            cpu_priority.lower(popen.pid, self.nice_steps)
        except OSError as exc:
            log.error("cannot start a %s spare interpreter: %s", backend.value, exc)
            self._problems[backend] = f"Could not start: {exc}"
            self._deaths[backend] = MAX_QUICK_DEATHS
            return None
        spare = _Spare(backend, popen, path)
        threading.Thread(target=self._listen, args=(spare,), daemon=True,
                         name=f"spare-{backend.value}-{popen.pid}").start()
        log.info("started a %s spare interpreter (pid %s)", backend.value, popen.pid)
        return spare

    def _listen(self, spare: _Spare) -> None:
        """Reads the spare's stdout: `warm`, then the end (handed over, or died)."""
        stdout = spare.popen.stdout
        if stdout is None:
            return
        with stdout:
            for line in stdout:
                word = line.strip()
                if word == HANDED.encode():
                    spare.handed = True
                elif word == WARM.encode():
                    with self._lock:
                        spare.warm = True
                        self._deaths.pop(spare.backend, None)
                        self._problems.pop(spare.backend, None)
                        self._changed.notify_all()
                    self._changed_view()
        with self._lock:
            taken, server_log = spare.taken, spare.server_log
            mine = self._spares.get(spare.backend) is spare
        if taken:  # a server now (its output moved), or it ended first
            self._settle_log(spare, None if spare.handed else server_log)
            return
        if not mine:
            return  # ended on purpose
        code = spare.popen.wait()
        tail = read_tail(spare.log_path, lines=5)
        spare.log_path.unlink(missing_ok=True)
        with self._lock:
            if self._spares.get(spare.backend) is not spare:
                return
            del self._spares[spare.backend]
            if not spare.warm:
                self._deaths[spare.backend] = self._deaths.get(spare.backend, 0) + 1
                if self._deaths[spare.backend] >= MAX_QUICK_DEATHS:
                    self._problems[spare.backend] = (
                        f"The spare exited with code {code} before it was ready, "
                        f"{MAX_QUICK_DEATHS} times in a row: {tail or 'no output'}")
            self._changed.notify_all()
        log.warning("the %s spare interpreter (pid %s) exited with code %s: %s",
                    spare.backend.value, spare.popen.pid, code, tail or "no output")
        self._changed_view()
        self.refill()

    def _settle_log(self, spare: _Spare, server_log: Path | None) -> None:
        """A taken spare's own log once its stdout ended: what the spare wrote there after
        the copy goes to `server_log` (one that ended before moving its output itself),
        then the log is removed."""
        try:
            if server_log is not None:
                with spare.log_path.open("rb") as earlier, server_log.open("ab") as server:
                    earlier.seek(spare.copied)
                    shutil.copyfileobj(earlier, server)
            spare.log_path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not settle the log of spare %s (%s): %s",
                        spare.popen.pid, server_log or "moved by the spare", exc)
        finally:  # whatever happened, a server's exit waits no longer
            with self._lock:
                self._handing.pop(spare.popen.pid, None)
            spare.settled.set()

    def settled(self, pid: int | None, timeout: float = SETTLE_S) -> None:
        """Once a server handed to a spare as `pid` has all the spare's output in its log
        (one that ended before moving it leaves that to `_listen`): the supervisor reads
        the log's tail when the server is gone. At once for any other pid."""
        with self._lock:
            spare = self._handing.get(pid) if pid is not None else None
        if spare is not None and not spare.settled.wait(timeout):
            log.warning("the last output of spare %s is not in its server's log yet", pid)

    def _changed_view(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _end(self, spare: _Spare) -> None:
        """Stop a spare that is no server (SIGTERM to its group, as for a server)."""
        if spare.popen.stdin is not None:
            try:
                spare.popen.stdin.close()
            except OSError as exc:
                log.debug("closing the stdin of spare %s: %s", spare.popen.pid, exc)
        terminate(spare.popen.pid, spare.popen, None, 5.0)
        spare.log_path.unlink(missing_ok=True)

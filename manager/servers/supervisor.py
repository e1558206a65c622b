"""The state machine of the model servers: one per profile, every change in one place.

The states and the moves between them are drawn in manager/servers/states.py. Every
change goes through `Supervisor._transition`, which checks the move, logs it, records
it in SQLite (for `mlx-manager status` and a restarted dashboard), wakes everyone
waiting on the supervisor's Condition and queues a `Transition` for the subscribers,
who hear it once the lock is released. The queries and the waits (`wait_for`,
`wait_ready`, which sleep on that Condition) are the read side in registry.py.

The supervisor keeps the one activity count of each server (`lease`), which the idle
timeout and the evictions read. Who may start or stop is checked here (`actor`, None
being the manager). Which start may happen (memory budget, one at a time) is decided by
manager/servers/placement.py, through which every start from a person, the gateway or
auto-start goes. A `Clock` gives the time (backoff, idle timeout): tests move it.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import httpx
import psutil

from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, require
from manager.errors import Conflict, ManagerError, NotFound, ValidationError
from manager.net import port_is_free, tls_context
from manager.servers import readiness
from manager.servers.distributed.group import GroupLauncher
from manager.servers.leases import ServerInUse
from manager.servers.logs import (
    LOG_MAX_BYTES,
    cap_log,
    log_path,
    read_tail,
    remove_logs,
    remove_stale_logs,
)
from manager.servers.process import (
    STOP_GRACE_S,
    build_command,
    child_env,
    describe_exit,
    exit_status,
    failure_of,
    live_process,
    spawn,
    terminate,
)
from manager.servers.profiles import Profile, ProfileService, unguarded_exposure
from manager.servers.records import ServerRecord, read_records, write_record
from manager.servers.registry import ServerRegistry
from manager.servers.run import MAX_QUICK_FAILURES, RestartNoLongerDue, ServerRun
from manager.servers.snapshot import (
    Activity,
    CancelEvent,
    Clock,
    ServerLoading,
    ServerNotReady,
    ServerSnapshot,
    Transition,
)
from manager.servers.spare import SparePool
from manager.servers.states import (
    ACTIVE_STATES,
    FAILED_STATES,
    STARTABLE_STATES,
    ServerState,
    can_move,
)
from manager.store import Store

__all__ = ["MAX_QUICK_FAILURES", "Activity", "CancelEvent", "Clock", "ServerLoading",
           "ServerNotReady", "ServerSnapshot", "Supervisor", "Transition"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 900.0
#: Who acted when nobody did: auto-start, idle stop, the CLI.
MANAGER = "the manager"
_ENDABLE = (ServerState.STARTING, ServerState.READY)  # the runs `_give_up` ends


def _who(actor: User | None, by: str | None) -> str:
    return by or (actor.email if actor is not None else MANAGER)


class Supervisor(ServerRegistry):
    """Runs one model server per profile. Thread-safe; one instance per dashboard."""

    def __init__(self, store: Store, profiles: ProfileService, logs_dir: Path, *,
                 hub_cache: Path, clock: Clock | None = None, python: str = sys.executable,
                 stop_grace_s: float = STOP_GRACE_S, start_timeout_s: float = START_TIMEOUT_S,
                 log_max_bytes: int = LOG_MAX_BYTES, spares: SparePool | None = None,
                 groups: GroupLauncher | None = None) -> None:
        super().__init__(profiles, clock)
        self._store = store
        self.logs_dir = logs_dir
        self._hub_cache = hub_cache  # the dashboard's (Settings.hub_cache): children share it
        self._python = python
        self._stop_grace_s = stop_grace_s
        self._start_timeout_s = start_timeout_s
        self._log_max_bytes = log_max_bytes
        self._changing = self._events.changing
        # Only a dashboard that took charge (adopt_or_reap) may delete logs at close: a
        # CLI command must not touch the logs of servers a dashboard runs.
        self._in_charge = False
        self._wake = threading.Event()  # set at close: readiness watches stop pausing
        self._closing = False  # close() began: no start from then on
        self._http = httpx.Client(timeout=httpx.Timeout(30.0, connect=2.0), verify=tls_context())
        #: The warm spares the next starts go to (one never started, the CLI's, hands none).
        self.spares = spares or SparePool(python, hub_cache, logs_dir, enabled=False)
        self.groups = groups or GroupLauncher(logs_dir)  # distributed profiles' ranks

    # -- commands -----------------------------------------------------------------------

    def start(self, profile_id: int, *, actor: User | None = None, by: str | None = None
              ) -> ServerSnapshot:
        """Spawn the profile's server; returns at once in STARTING (readiness runs in a
        thread). Conflict if it runs, ValidationError for the port/model. People start
        servers through Placement.start (the memory budget)."""
        profile = self._profiles.get(profile_id)
        require(actor, Action.SERVER_START, Owned.by(profile.owner_id))
        return self._start(profile, by=_who(actor, by),
                           started_by=actor.id if actor is not None else None, automatic=False)

    def stop(self, profile_id: int, *, actor: User | None = None, by: str | None = None,
             reason: str = "", unused_since: float | None = None) -> ServerSnapshot:
        """SIGTERM to the process group, wait, SIGKILL; returns when it is gone (a failed
        server is dismissed). ServerInUse if a request held or used it since `unused_since`."""
        who = _who(actor, by)
        with self._changing():
            server = self._servers.get(profile_id)
            if server is None or server.state is ServerState.STOPPED:
                raise Conflict(f"{self._name(profile_id)} is not running.")
            if unused_since is not None and self.leases.used_since(profile_id, unused_since):
                raise ServerInUse(f"{server.profile.name} is in use again.")
            require(actor, Action.SERVER_STOP,
                    Owned.by(server.profile.owner_id, server.started_by))
            if server.state is ServerState.STOPPING:
                # Someone else is stopping it: wait for them rather than signal twice.
                self._changed.wait_for(lambda: server.state is not ServerState.STOPPING,
                                       self._stop_grace_s + 10)
                return self._snap(server)
            if server.state in FAILED_STATES:
                server.restart_due = None
                self._transition(server, ServerState.STOPPED, reason or f"dismissed by {who}")
                remove_logs(self.logs_dir, server.profile.id)
                return self._snap(server)
            server.generation += 1  # the readiness watch of this run gives up
            popen, proc, pid = server.popen, server.proc, server.pid
            self._transition(server, ServerState.STOPPING, reason or f"stop requested by {who}")
        terminate(pid, popen, proc, self._stop_grace_s)
        with self._changing():
            server.popen = server.proc = None
            server.pid = server.create_time = None
            server.exit_code = getattr(popen, "returncode", None)
            self._transition(server, ServerState.STOPPED, reason or f"stopped by {who}")
            remove_logs(self.logs_dir, server.profile.id)
            return self._snap(server)

    def end_broken(self, snap: ServerSnapshot, reason: str) -> None:
        """A READY run that refuses every request from now on (mlx_lm's generation thread
        died; the process lives on): ended in the background and failed like a crash."""
        with self._lock:
            server = self._servers.get(snap.profile_id)
            if server is None or server.pid != snap.pid or server.state is not ServerState.READY \
                    or server.giving_up:
                return  # already ended or being ended, or another run
            generation, server.giving_up = server.generation, reason
        threading.Thread(target=self._give_up, args=(server, generation, reason),
                         name=f"end-broken-{snap.profile_id}", daemon=True).start()

    def forget(self, profile_id: int) -> None:
        """Drop a stopped or failed server whose profile was deleted."""
        with self._lock:
            server = self._servers.get(profile_id)
            if server is not None and server.state not in ACTIVE_STATES:
                del self._servers[profile_id]
                self.leases.forget(profile_id)
                remove_logs(self.logs_dir, profile_id)

    def reconcile(self) -> bool:
        """One supervision pass (run by the monitor's tick): notice crashes, trim logs,
        run due auto-restarts, stop idle servers. True while something is in transition."""
        now = self.clock.monotonic()
        exited: list[tuple[ServerRun, int, int | None]] = []
        due: list[ServerRun] = []
        idle: list[ServerRun] = []
        logs: list[Path] = []
        with self._lock:
            if self._closing:  # set first by close(), before _closed
                return False
            for server in self._servers.values():
                if server.state in (ServerState.STARTING, ServerState.READY):
                    gone, code = exit_status(server.popen, server.proc)
                    if gone:
                        exited.append((server, server.generation, code))
                    elif server.state is ServerState.READY and self._idle(server, now):
                        idle.append(server)
                    if server.log_path is not None:
                        logs.append(server.log_path)
                if server.state is ServerState.BACKOFF and server.restart_due is not None \
                        and now >= server.restart_due:
                    server.restart_due = None
                    due.append(server)
        self.spares.sample()
        for path in logs:
            if cap_log(path, self._log_max_bytes):
                log.info("trimmed log %s to its last %s bytes", path, self._log_max_bytes // 2)
        for server, generation, code in exited:
            self._on_exit(server, generation, code)
        for server in due:
            self._auto_restart(server)
        for server in idle:
            limit = server.idle_limit() or 0.0
            idle_for = f"{limit / 60:g} min" if limit >= 60 else f"{limit:g} s"
            threading.Thread(target=self._stop_logged, name=f"idle-stop-{server.profile.id}",
                             args=(server.profile.id, f"idle for {idle_for}", now),
                             daemon=True).start()
        return self.transitional()

    def adopt_or_reap(self) -> None:
        """At dashboard start: adopt recorded servers that still run, mark the rest stopped;
        failed ones stay failed until started again (one backing off restarts next tick)."""
        self._in_charge = True
        for record in read_records(self._store):
            try:
                profile = self._profiles.get(record.profile_id)
            except NotFound:
                continue
            with self._changing():
                if record.profile_id in self._servers:
                    continue
                server = ServerRun(profile, state_since=self.clock.time())
                self._servers[profile.id] = server
                if record.state in ACTIVE_STATES:
                    proc = None if profile.distributed else live_process(record)
                    if proc is None:  # a distributed server's ranks are ended, not adopted
                        server.reason = (self.groups.reap(profile.id) if profile.distributed
                                         else "was not running when the dashboard started")
                        self._persist(server)
                        log.info("server of %s (pid %s) is gone: marked stopped",
                                 profile.name, record.pid)
                        continue
                    self._adopt(server, record, proc)
                elif record.state in FAILED_STATES:
                    server.restore_failure(record)
                    target = record.state if profile.auto_restart else ServerState.FAILED
                    if target is ServerState.BACKOFF:
                        server.quick_failures, server.restart_due = 1, self.clock.monotonic()
                    self._transition(server, target, record.reason)
            if record.state is ServerState.STOPPING and server.state in ACTIVE_STATES:
                self._stop_logged(profile.id, "it was stopping when the dashboard restarted")

    def cleanup_logs(self) -> list[Path]:
        """Delete server logs nobody needs: keep those of live servers and the last log
        of each failed server. Returns the deleted paths."""
        with self._lock:
            keep = {s.log_path for s in self._servers.values() if s.log_path is not None
                    and (s.state in ACTIVE_STATES or s.state in FAILED_STATES)}
        return remove_stale_logs(self.logs_dir, keep)

    def close(self, *, keep_servers: bool) -> None:
        """Stop supervising. keep_servers=True leaves them running for the next
        dashboard to adopt; False stops them all. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closing = True  # under the lock a start spawns under: no start from now
            active = [s.profile.id for s in self._servers.values() if s.state in ACTIVE_STATES]
        if not keep_servers:
            threads = [threading.Thread(target=self._stop_logged, args=(pid, "dashboard closed"),
                                        daemon=True) for pid in active]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(self._stop_grace_s + 15)
        with self._lock:
            self._closed = True
            self._wake.set()
            self._changed.notify_all()
        self.spares.close()
        if self._in_charge:
            self.cleanup_logs()
        self._http.close()

    # -- internals: starting --------------------------------------------------------------

    def _start(self, profile: Profile, *, by: str, started_by: int | None,
               automatic: bool) -> ServerSnapshot:
        model_dir = str(self._profiles.resolve_model(profile.model))
        with self._changing():
            if self._closing:
                raise ManagerError("The dashboard is shutting down.")
            server = self._servers.get(profile.id)
            if automatic and (server is None or server.state is not ServerState.BACKOFF):
                raise RestartNoLongerDue(profile.name)  # stopped (dismissed) or started since due
            if server is not None and server.state in ACTIVE_STATES:
                raise Conflict(f"{profile.name} is already {server.state.value}.")
            clash = next((s for s in self._servers.values() if s is not server
                          and s.state in ACTIVE_STATES and s.profile.port == profile.port), None)
            if clash is not None:
                raise Conflict(f"Port {profile.port} is taken by the running server of "
                               f"{clash.profile.name!r}. Stop it or change the port.")
            exposure = unguarded_exposure(profile)
            if exposure is not None:
                raise ValidationError(exposure, "host")
            if not port_is_free(profile.host, profile.port):
                raise ValidationError(
                    f"Port {profile.port} on {profile.host} is already in use by another "
                    f"program. Stop that program or pick another port in {profile.name!r}.",
                    "port")
            if server is None:
                server = ServerRun(profile, state_since=self.clock.time())
                self._servers[profile.id] = server
            server.profile = profile
            if not automatic:
                server.quick_failures = 0
            server.restart_due = None
            server.started_by = started_by
            self._spawn(server, model_dir, by)
            return self._snap(server)

    def _spawn(self, server: ServerRun, model_dir: str, by: str) -> None:
        """Lock held. Start the process and watch it load; FAILED if it cannot start."""
        profile = server.profile
        argv = build_command(profile, model_dir, self._python)
        path = log_path(self.logs_dir, profile.id, self.clock.time())
        try:
            env = child_env(self._hub_cache)
            env.update(profile.server_env())  # its API key, if any: never on argv
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            remove_logs(self.logs_dir, profile.id)
            dist = profile.distributed  # every rank at once; never a warm spare
            handed = None if dist else self.spares.take(profile.backend, argv, path, env,
                                                        self.logs_dir, by=by)
            popen, create_time = (self.groups.spawn(profile.id, profile.name, dist, argv, path,
                                                    env, by=by) if dist else
                                  handed or spawn(argv, path, env, self.logs_dir, by=by,
                                                  nice_steps=self.spares.nice_steps))
        except OSError as exc:
            log.error("cannot spawn the server of %s: %s", profile.name, exc)
            server.log_path = path
            self._mark_failed(server, f"Could not start the process: {exc}")
            server.failure_tail = read_tail(path)
            raise ManagerError(f"Could not start the server of {profile.name}: {exc}") from exc
        server.spawned(popen, create_time, argv, model_dir, path, self.clock)
        self.leases.touch(profile.id)
        how = ", warm spare" if handed else ""
        self._transition(server, ServerState.STARTING, f"started by {by} (pid {popen.pid}{how})")
        self._watch_readiness(server)

    def _auto_restart(self, server: ServerRun) -> None:
        try:
            profile = self._profiles.get(server.profile.id)
            self._start(profile, by="auto-restart", started_by=server.started_by,
                        automatic=True)
        except RestartNoLongerDue:
            log.info("auto-restart of %s dropped: stopped or started since", server.profile.name)
        except Exception as exc:  # noqa: BLE001 - else it would say "Restarting soon" for ever
            message = exc.message if isinstance(exc, ManagerError) else str(exc)
            log.warning("auto-restart of %s failed: %s", server.profile.name, message)
            self.fail_to_start(server.profile.id, f"Auto-restart failed: {message}")

    def fail_to_start(self, profile_id: int, reason: str) -> None:
        """Show a start that never got a process (busy port, missing model) as FAILED."""
        try:
            profile = self._profiles.get(profile_id)
        except NotFound:
            return
        with self._changing():
            server = self._servers.setdefault(profile_id, ServerRun(
                profile, state_since=self.clock.time()))
            if server.state in STARTABLE_STATES and not self._closing:  # not at the exit
                server.profile = profile
                server.failure_tail = ""
                server.restart_due = None
                self._mark_failed(server, reason)

    def _adopt(self, server: ServerRun, record: ServerRecord, proc: psutil.Process) -> None:
        server.adopt(record, proc, self.clock)
        self.leases.touch(server.profile.id)
        target = ServerState.READY if record.state is ServerState.READY else ServerState.STARTING
        self._transition(server, target, f"adopted (pid {record.pid})")
        # A server recorded as stopping is stopped by the caller, not probed.
        if record.state is ServerState.STARTING:
            self._watch_readiness(server)

    def _watch_readiness(self, server: ServerRun) -> None:
        threading.Thread(target=self._await_ready, args=(server, server.generation),
                         name=f"ready-{server.profile.id}", daemon=True).start()

    def _await_ready(self, server: ServerRun, generation: int) -> None:
        with self._lock:
            snap = self._snap(server)
        target = readiness.Target(snap.profile.name, snap.base_url, snap.profile.backend,
                                  snap.model_path, snap.profile.auth_headers(),
                                  log_path=snap.log_path, pid=snap.pid)

        def check() -> readiness.Outcome | None:
            with self._lock:
                if server.generation != generation or server.state is not ServerState.STARTING:
                    return readiness.Outcome.ABANDONED
                gone, _ = exit_status(server.popen, server.proc)
            return readiness.Outcome.GONE if gone else None

        verdict = readiness.watch(self._http, target, clock=self.clock,
                                  timeout_s=self._start_timeout_s, stop=self._wake, check=check)
        self._settle(server, generation, verdict)
        self.spares.refill()  # the start settled: a replacement may import now

    def _settle(self, server: ServerRun, generation: int, verdict: readiness.Verdict) -> None:
        outcome = verdict.outcome
        if outcome is readiness.Outcome.READY:
            with self._changing():
                if server.generation == generation and server.state is ServerState.STARTING:
                    server.ready_at = self.clock.time()
                    self.leases.touch(server.profile.id)
                    took = server.ready_at - (server.started_at or server.ready_at)
                    self._transition(server, ServerState.READY,
                                     f"answered a 1-token completion after {took:.1f} s")
        elif outcome is readiness.Outcome.GONE:
            with self._lock:
                _, code = exit_status(server.popen, server.proc)
            self._on_exit(server, generation, code)
        elif outcome in (readiness.Outcome.NOT_LOADED, readiness.Outcome.TIMED_OUT):
            self._give_up(server, generation, verdict.detail)

    # -- internals: failing and stopping ------------------------------------------------------

    def _on_exit(self, server: ServerRun, generation: int, code: int | None) -> None:
        self.spares.settled(server.pid)  # a spare's last words in the log, for its tail
        with self._changing():
            if server.generation != generation or server.state not in (
                    ServerState.STARTING, ServerState.READY):
                return
            during = "while loading the model" if server.state is ServerState.STARTING else ""
            reason = server.giving_up or failure_of(server.popen) or " ".join(
                f"The server exited {during} with {describe_exit(code)}.".split())
            server.exit_code = code
            self._fail(server, reason)

    def _give_up(self, server: ServerRun, generation: int, reason: str) -> None:
        with self._lock:
            if server.generation != generation or server.state not in _ENDABLE:
                return
            pid, popen, proc = server.pid, server.popen, server.proc
            # Whoever sees the process gone first (this thread or a reconcile woken by its
            # exit) fails the run with this reason, not with "killed by SIGTERM".
            server.giving_up = reason
        terminate(pid, popen, proc, min(self._stop_grace_s, 3.0))
        with self._changing():
            if server.generation != generation or server.state not in _ENDABLE:
                return
            server.exit_code = getattr(popen, "returncode", None)
            self._fail(server, reason)

    def _fail(self, server: ServerRun, reason: str) -> None:
        """Lock held. BACKOFF when the profile asks for restarts and the failures were
        not too many too quickly, else FAILED; the log tail is kept either way."""
        target, reason = server.failed(reason, self.clock.monotonic())
        self._transition(server, target, reason)
        # Keep this log (the last one of a failed server); older ones of the profile go.
        remove_logs(self.logs_dir, server.profile.id, keep=server.log_path)

    def _mark_failed(self, server: ServerRun, reason: str) -> None:
        """Lock held. FAILED without a process; a failed server passes through STOPPED so
        the new reason is recorded like any other transition."""
        if server.state is ServerState.FAILED:
            self._transition(server, ServerState.STOPPED, "trying again")
        self._transition(server, ServerState.FAILED, reason)

    def _stop_logged(self, profile_id: int, reason: str,
                     unused_since: float | None = None) -> None:
        try:
            self.stop(profile_id, reason=reason, unused_since=unused_since)
        except ManagerError as exc:
            log.info("stop of profile %s (%s) skipped: %s", profile_id, reason, exc.message)

    # -- internals: the one transition, and what it tells ------------------------------------

    def _transition(self, server: ServerRun, new: ServerState, reason: str = "") -> None:
        """The one place a server changes state: checked, logged, recorded, announced."""
        old = server.state
        if not can_move(old, new):
            raise RuntimeError(f"illegal server transition {old.value} -> {new.value}")
        server.state = new
        server.state_since = self.clock.time()
        server.reason = reason
        log.log(logging.WARNING if new in FAILED_STATES else logging.INFO,  # crashes stand out
                "server %s: %s -> %s (%s)", server.profile.name, old.value, new.value, reason)
        self._persist(server)
        self._events.queue(Transition(server.profile, old, new, reason, server.state_since))

    def _persist(self, server: ServerRun) -> None:
        write_record(self._store, server.record())

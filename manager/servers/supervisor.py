"""Model-server processes: spawn, readiness, crash detection, stop, adoption, logs.

Each profile has at most one server, driven by an explicit state machine:

    STOPPED -> STARTING -> READY -> STOPPING -> STOPPED
                  |          |
                  +----------+--> FAILED -> STARTING (restart) | STOPPED (dismiss)

Every change goes through `Supervisor._transition`, which checks it is allowed, logs
it, records it in SQLite (so `mlx-manager status` and a restarted dashboard can read
it) and wakes anyone waiting for the server.

READY means the model answered a real 1-token completion (mlx_lm answers /health
and /v1/models before the model is loaded). Servers run in their own session
(process group) so the dashboard's Ctrl-C does not reach them and a stop can signal
the whole group: SIGTERM, wait, SIGKILL. They outlive the dashboard on purpose; the
next dashboard adopts them when pid, create time and command line still match.

Time comes from a `Clock` (policy decisions: backoff, quick failures, idle timeout)
so tests can move it forward.
"""

from __future__ import annotations

import atexit
import enum
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from manager.errors import Conflict, ManagerError, NotFound, ValidationError
from manager.servers.profiles import Backend, Profile, ProfileService, port_is_free, resolve_model
from manager.store import Store, utc_now

log = logging.getLogger(__name__)

#: A server's log is trimmed to its last half when it grows past this.
LOG_MAX_BYTES = 4 * 1024 * 1024
LOG_TAIL_BYTES = 16 * 1024
LOG_TAIL_LINES = 40
STOP_GRACE_S = 10.0
START_TIMEOUT_S = 900.0
#: Consecutive HTTP errors from the 1-token probe before a start is declared failed
#: (mlx_lm keeps running with a dead generation thread when the model cannot load).
PROBE_ERRORS_BEFORE_FAIL = 3
#: Auto-restart: a server that dies sooner than this after its start failed "quickly";
#: after MAX_QUICK_FAILURES in a row the supervisor stops trying.
QUICK_FAILURE_S = 60.0
MAX_QUICK_FAILURES = 3
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 60.0
LOG_GLOB = "server-*.log"


class ServerState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"

    @property
    def label(self) -> str:
        return self.value.capitalize()


ACTIVE_STATES = frozenset({ServerState.STARTING, ServerState.READY, ServerState.STOPPING})
_ALLOWED: dict[ServerState, frozenset[ServerState]] = {
    # STOPPED -> READY is adoption of a server a previous dashboard run had started;
    # STOPPED -> FAILED is a start that could not even spawn (auto-start on a busy port).
    ServerState.STOPPED: frozenset({ServerState.STARTING, ServerState.READY,
                                    ServerState.FAILED}),
    ServerState.STARTING: frozenset({ServerState.READY, ServerState.FAILED,
                                     ServerState.STOPPING}),
    ServerState.READY: frozenset({ServerState.STOPPING, ServerState.FAILED}),
    ServerState.STOPPING: frozenset({ServerState.STOPPED}),
    ServerState.FAILED: frozenset({ServerState.STARTING, ServerState.STOPPED}),
}


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
    restart_at: float | None = None  # wall clock of a scheduled auto-restart

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
class ServerRecord:
    """A row of the servers table: what the dashboard last recorded about a server."""

    profile_id: int
    profile_name: str
    state: ServerState
    pid: int | None
    create_time: float | None
    cmdline: tuple[str, ...]
    host: str | None
    port: int | None
    started_at: float | None
    exit_code: int | None
    reason: str
    log_path: str | None


@dataclass(eq=False)
class _Server:
    """Mutable per-profile state; only touched with the supervisor's lock held."""

    profile: Profile
    model_path: str = ""
    state: ServerState = ServerState.STOPPED
    state_since: float = 0.0
    popen: subprocess.Popen[bytes] | None = None
    proc: psutil.Process | None = None
    pid: int | None = None
    create_time: float | None = None
    cmdline: list[str] = field(default_factory=list)
    log_path: Path | None = None
    started_at: float | None = None
    started_mono: float | None = None
    ready_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    failure_tail: str = ""
    adopted: bool = False
    generation: int = 0
    quick_failures: int = 0
    restart_due: float | None = None  # monotonic
    last_activity: float = 0.0  # monotonic
    in_flight: int = 0


# --- pure helpers --------------------------------------------------------------------------


def build_command(profile: Profile, model_path: str, python: str = sys.executable) -> list[str]:
    """The argv of a model server for a profile (never run through a shell)."""
    if profile.backend is Backend.MLX_VLM:
        argv = [python, "-m", "mlx_vlm.server", "--model", model_path]
    else:
        argv = [python, "-m", "mlx_lm", "server", "--model", model_path]
    # mlx_vlm listens on 0.0.0.0 by default: always say where.
    argv += ["--host", profile.host, "--port", str(profile.port)]
    if profile.max_tokens is not None:
        argv += ["--max-tokens", str(profile.max_tokens)]
    if profile.backend is Backend.MLX_VLM:
        if profile.thinking:
            argv.append("--enable-thinking")
        return argv
    if profile.temperature is not None:
        argv += ["--temp", f"{profile.temperature:g}"]
    if profile.top_p is not None:
        argv += ["--top-p", f"{profile.top_p:g}"]
    if profile.thinking is not None:
        argv += ["--chat-template-args", json.dumps({"enable_thinking": profile.thinking})]
    return argv


def model_of_cmdline(cmdline: tuple[str, ...] | list[str]) -> str:
    """The model path in a server's argv (see build_command): the value after --model."""
    args = list(cmdline)
    if "--model" in args[:-1]:
        return args[args.index("--model") + 1]
    return ""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown exit code (it was started by an earlier dashboard run)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code} (killed by {name})"
    return f"exit code {code}"


def read_tail(path: Path | str | None, max_bytes: int = LOG_TAIL_BYTES,
              lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ('' when there is none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("cannot read log %s: %s", path, exc)
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def cap_log(path: Path, max_bytes: int = LOG_MAX_BYTES) -> bool:
    """Keep a log under max_bytes by keeping its last half. True when it was trimmed.

    The server appends (O_APPEND), so it keeps writing at the new end; lines it
    writes between our read and truncate are lost, which is fine for a log.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    keep = max_bytes // 2
    try:
        with path.open("r+b") as handle:
            handle.seek(size - keep)
            tail = handle.read(keep)
            newline = tail.find(b"\n")
            if newline >= 0:
                tail = tail[newline + 1:]
            handle.seek(0)
            handle.write(b"[... earlier output trimmed by mlx-manager ...]\n" + tail)
            handle.truncate()
    except OSError as exc:
        log.warning("cannot trim log %s: %s", path, exc)
        return False
    return True


def hub_cache_for(env: Mapping[str, str]) -> Path:
    """The HF hub cache a child with this environment will use."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def tree_memory_bytes(proc: psutil.Process) -> int | None:
    """Resident memory of a process and all its descendants; None if it is gone."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error as exc:
        log.debug("process %s gone while measuring: %s", proc.pid, exc)
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error as exc:
            log.debug("process %s gone while measuring: %s", p.pid, exc)
    return total


def install_exit_hooks(on_exit: Callable[[], None]) -> None:
    """Run `on_exit` at interpreter exit, and turn SIGTERM/SIGHUP into a normal exit so
    it runs then too (uvicorn re-raises the signals it caught once it has shut down)."""
    atexit.register(on_exit)
    if threading.current_thread() is not threading.main_thread():
        return

    def exit_on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)


def read_records(store: Store) -> list[ServerRecord]:
    with store.connect() as db:
        rows = list(db.query(
            "SELECT s.*, p.name AS profile_name FROM servers s "
            "JOIN profiles p ON p.id = s.profile_id ORDER BY p.name COLLATE NOCASE"))
    records = []
    for row in rows:
        try:
            cmdline = tuple(json.loads(row["cmdline"] or "[]"))
        except json.JSONDecodeError as exc:
            log.warning("bad command line recorded for profile %s: %s", row["profile_id"], exc)
            cmdline = ()
        records.append(ServerRecord(
            profile_id=row["profile_id"], profile_name=row["profile_name"],
            state=ServerState(row["state"]), pid=row["pid"], create_time=row["create_time"],
            cmdline=cmdline, host=row["host"], port=row["port"], started_at=row["started_at"],
            exit_code=row["exit_code"], reason=row["reason"] or "", log_path=row["log_path"]))
    return records


def live_process(record: ServerRecord) -> psutil.Process | None:
    """The recorded server's process if it still runs: same pid, create time and argv."""
    if record.pid is None or record.create_time is None:
        return None
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 0.05:
            return None
        if tuple(proc.cmdline()) != record.cmdline:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error as exc:
        log.debug("recorded server pid %s is gone: %s", record.pid, exc)
        return None
    return proc


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class _Probe(enum.Enum):
    READY = "ready"
    NOT_YET = "not_yet"
    ERROR = "error"


# --- the supervisor ----------------------------------------------------------------------


class Supervisor:
    """Runs one model server per profile. Thread-safe; one instance per dashboard."""

    def __init__(
        self,
        store: Store,
        profiles: ProfileService,
        logs_dir: Path,
        *,
        clock: Clock | None = None,
        python: str = sys.executable,
        stop_grace_s: float = STOP_GRACE_S,
        start_timeout_s: float = START_TIMEOUT_S,
        log_max_bytes: int = LOG_MAX_BYTES,
        on_start: Callable[[Profile, str], None] | None = None,
    ) -> None:
        self._store = store
        # Told (profile, model folder) after each spawn: the library records "last used".
        self._on_start = on_start
        self._profiles = profiles
        self.logs_dir = logs_dir
        self.clock = clock or Clock()
        self._python = python
        self._stop_grace_s = stop_grace_s
        self._start_timeout_s = start_timeout_s
        self._log_max_bytes = log_max_bytes
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._servers: dict[int, _Server] = {}
        self._closed = False
        # Only a dashboard that took charge (adopt_or_reap) may delete logs at close: a
        # CLI command must not touch the logs of servers a dashboard runs.
        self._in_charge = False
        self._wake = threading.Event()  # set at close: readiness loops stop sleeping
        self._http = httpx.Client(timeout=httpx.Timeout(30.0, connect=2.0))

    # -- queries ---------------------------------------------------------------------------

    def snapshot(self, profile_id: int) -> ServerSnapshot | None:
        with self._lock:
            server = self._servers.get(profile_id)
            return self._snap(server) if server is not None else None

    def snapshots(self) -> list[ServerSnapshot]:
        """Every server this dashboard knows, stopped ones included, by profile name."""
        with self._lock:
            snaps = [self._snap(s) for s in self._servers.values()]
        return sorted(snaps, key=lambda s: (s.profile.name.casefold(), s.profile_id))

    def live_processes(self) -> list[tuple[int, int, float]]:
        """(profile_id, pid, create_time) of every server process that should be alive."""
        with self._lock:
            return [(s.profile.id, s.pid, s.create_time or 0.0) for s in self._servers.values()
                    if s.state in ACTIVE_STATES and s.pid is not None]

    def transitional(self) -> bool:
        """True while a server starts, stops or waits for an auto-restart."""
        with self._lock:
            return any(s.state in (ServerState.STARTING, ServerState.STOPPING)
                       or s.restart_due is not None for s in self._servers.values())

    def wait_ready(self, profile_id: int, timeout: float) -> ServerSnapshot:
        """The snapshot of a READY server, waiting up to `timeout` s while it loads.

        Raises ServerLoading when it is still loading after that (the caller shows
        "still loading"), ServerNotReady when it is stopped, stopping or failed.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                server = self._servers.get(profile_id)
                if server is None or server.state is ServerState.STOPPED:
                    name = server.profile.name if server else self._name(profile_id)
                    raise ServerNotReady(f"{name} is not running. Start it on the Servers tab.")
                name = server.profile.name
                if server.state is ServerState.READY:
                    return self._snap(server)
                if server.state is ServerState.FAILED:
                    raise ServerNotReady(f"{name} failed: {server.reason} Restart it on the "
                                         "Servers tab.")
                if server.state is ServerState.STOPPING:
                    raise ServerNotReady(f"{name} is stopping.")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    waited = self.clock.monotonic() - (server.started_mono or 0.0)
                    raise ServerLoading(f"{name} is still loading its model ({waited:.0f} s so "
                                        "far). Try again in a moment.")
                self._changed.wait(remaining)

    @contextmanager
    def in_use(self, profile_id: int) -> Iterator[None]:
        """Marks a request in flight (the idle timeout never stops a busy server)."""
        with self._lock:
            server = self._servers.get(profile_id)
            if server is not None:
                server.in_flight += 1
                server.last_activity = self.clock.monotonic()
        try:
            yield
        finally:
            with self._lock:
                if server is not None:
                    server.in_flight -= 1
                    server.last_activity = self.clock.monotonic()

    # -- commands -----------------------------------------------------------------------

    def start(self, profile_id: int, *, by: str = "system") -> ServerSnapshot:
        """Spawn the profile's server; returns at once in STARTING (readiness runs in a
        thread). Raises Conflict if it already runs, ValidationError for the port/model."""
        return self._start(profile_id, by=by, automatic=False)

    def stop(self, profile_id: int, *, by: str = "system", reason: str = "") -> ServerSnapshot:
        """SIGTERM to the server's process group, wait, SIGKILL; returns when it is gone."""
        with self._changed:
            server = self._servers.get(profile_id)
            if server is None or server.state is ServerState.STOPPED:
                raise Conflict(f"{self._name(profile_id)} is not running.")
            if server.state is ServerState.STOPPING:
                # Someone else is stopping it: wait for them rather than signal twice.
                self._changed.wait_for(lambda: server.state is not ServerState.STOPPING,
                                       self._stop_grace_s + 10)
                return self._snap(server)
            if server.state is ServerState.FAILED:
                server.restart_due = None
                self._transition(server, ServerState.STOPPED, reason or f"dismissed by {by}")
                self._remove_logs(server.profile.id)
                return self._snap(server)
            server.generation += 1  # the readiness thread of this run gives up
            popen, proc, pid = server.popen, server.proc, server.pid
            self._transition(server, ServerState.STOPPING, reason or f"stop requested by {by}")
        self._terminate(pid, popen, proc, self._stop_grace_s)
        with self._changed:
            server.popen = server.proc = None
            server.pid = server.create_time = None
            server.exit_code = popen.returncode if popen is not None else None
            self._transition(server, ServerState.STOPPED, reason or f"stopped by {by}")
            self._remove_logs(server.profile.id)
            return self._snap(server)

    def restart(self, profile_id: int, *, by: str = "system") -> ServerSnapshot:
        snap = self.snapshot(profile_id)
        if snap is not None and snap.state is not ServerState.STOPPED:
            self.stop(profile_id, by=by, reason=f"restart requested by {by}")
        return self.start(profile_id, by=by)

    def forget(self, profile_id: int) -> None:
        """Drop a stopped or failed server whose profile was deleted."""
        with self._lock:
            server = self._servers.get(profile_id)
            if server is not None and server.state not in ACTIVE_STATES:
                del self._servers[profile_id]
                self._remove_logs(profile_id)

    def reconcile(self) -> bool:
        """One supervision pass (run by the monitor's tick): notice crashes, trim logs,
        run due auto-restarts, stop idle servers. True while something is in transition."""
        now = self.clock.monotonic()
        exited: list[tuple[_Server, int, int | None]] = []
        due: list[_Server] = []
        idle: list[_Server] = []
        logs: list[Path] = []
        with self._lock:
            if self._closed:
                return False
            for server in self._servers.values():
                if server.state in (ServerState.STARTING, ServerState.READY):
                    gone, code = self._exit_status(server)
                    if gone:
                        exited.append((server, server.generation, code))
                    elif server.state is ServerState.READY and self._idle(server, now):
                        idle.append(server)
                    if server.log_path is not None:
                        logs.append(server.log_path)
                if server.state is ServerState.FAILED and server.restart_due is not None \
                        and now >= server.restart_due:
                    server.restart_due = None
                    due.append(server)
        for path in logs:
            if cap_log(path, self._log_max_bytes):
                log.info("trimmed log %s to its last %s bytes", path, self._log_max_bytes // 2)
        for server, generation, code in exited:
            self._on_exit(server, generation, code)
        for server in due:
            try:
                self._start(server.profile.id, by="auto-restart", automatic=True)
            except ManagerError as exc:
                log.warning("auto-restart of %s failed: %s", server.profile.name, exc.message)
                self._fail_to_spawn(server.profile.id, f"Auto-restart failed: {exc.message}")
        for server in idle:
            minutes = server.profile.idle_timeout_minutes
            threading.Thread(target=self._stop_logged, name=f"idle-stop-{server.profile.id}",
                             args=(server.profile.id, f"idle for {minutes} min"),
                             daemon=True).start()
        return self.transitional()

    def adopt_or_reap(self) -> None:
        """At dashboard start: adopt recorded servers that still run, mark the rest
        stopped; failed ones stay failed (with their reason) until started again."""
        self._in_charge = True
        for record in read_records(self._store):
            try:
                profile = self._profiles.get(record.profile_id)
            except NotFound:
                continue
            with self._changed:
                if record.profile_id in self._servers:
                    continue
                server = _Server(profile, state_since=self.clock.time())
                self._servers[profile.id] = server
                if record.state in ACTIVE_STATES:
                    proc = live_process(record)
                    if proc is None:
                        server.reason = "was not running when the dashboard started"
                        self._persist(server)
                        log.info("server of %s (pid %s) is gone: marked stopped",
                                 profile.name, record.pid)
                        continue
                    self._adopt(server, record, proc)
                elif record.state is ServerState.FAILED:
                    server.model_path = model_of_cmdline(record.cmdline)
                    server.log_path = Path(record.log_path) if record.log_path else None
                    server.exit_code = record.exit_code
                    server.failure_tail = read_tail(server.log_path)
                    self._transition(server, ServerState.FAILED, record.reason)
            if record.state is ServerState.STOPPING and server.state in ACTIVE_STATES:
                self._stop_logged(profile.id, "it was stopping when the dashboard restarted")

    def auto_start(self) -> list[str]:
        """Start every auto-start profile that is not running; returns their names."""
        started = []
        for profile in self._profiles.list():
            if not profile.auto_start:
                continue
            snap = self.snapshot(profile.id)
            if snap is not None and snap.state in ACTIVE_STATES:
                continue
            try:
                self.start(profile.id, by="auto-start")
                started.append(profile.name)
            except ManagerError as exc:
                log.warning("auto-start of %s failed: %s", profile.name, exc.message)
                self._fail_to_spawn(profile.id, f"Auto-start failed: {exc.message}")
        return started

    def cleanup_logs(self) -> list[Path]:
        """Delete server logs nobody needs: keep those of live servers and the last log
        of each failed server. Returns the deleted paths."""
        with self._lock:
            keep = {s.log_path for s in self._servers.values()
                    if s.log_path is not None
                    and (s.state in ACTIVE_STATES or s.state is ServerState.FAILED)}
        removed = []
        for path in self.logs_dir.glob(LOG_GLOB):
            if path in keep:
                continue
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot delete old log %s: %s", path, exc)
        if removed:
            log.info("removed %d old server log(s)", len(removed))
        return removed

    def close(self, *, keep_servers: bool) -> None:
        """Stop supervising. keep_servers=True leaves them running for the next
        dashboard to adopt; False stops them all. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
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
        if self._in_charge:
            self.cleanup_logs()
        self._http.close()

    # -- internals: starting --------------------------------------------------------------

    def _start(self, profile_id: int, *, by: str, automatic: bool) -> ServerSnapshot:
        profile = self._profiles.get(profile_id)
        model_dir = str(resolve_model(profile.model))
        with self._changed:
            if self._closed:
                raise ManagerError("The dashboard is shutting down.")
            server = self._servers.get(profile_id)
            if server is not None and server.state in ACTIVE_STATES:
                raise Conflict(f"{profile.name} is already {server.state.value}.")
            clash = next((s for s in self._servers.values() if s is not server
                          and s.state in ACTIVE_STATES and s.profile.port == profile.port), None)
            if clash is not None:
                raise Conflict(f"Port {profile.port} is taken by the running server of "
                               f"{clash.profile.name!r}. Stop it or change the port.")
            if not port_is_free(profile.host, profile.port):
                raise ValidationError(
                    f"Port {profile.port} on {profile.host} is already in use by another "
                    f"program. Stop that program or pick another port in {profile.name!r}.",
                    "port")
            if server is None:
                server = _Server(profile, state_since=self.clock.time())
                self._servers[profile_id] = server
            server.profile = profile
            if not automatic:
                server.quick_failures = 0
            server.restart_due = None
            self._spawn(server, model_dir, by)
            snap = self._snap(server)
        if self._on_start is not None:
            self._on_start(profile, model_dir)
        return snap

    def uses_model(self, path_or_repo: str) -> bool:
        """Is an active server running this model (its folder, a folder above it such as
        an HF cache repo folder, or the repo id / path its profile names)?"""
        wanted = path_or_repo.strip()
        target = Path(wanted).expanduser()
        for snap in self.snapshots():
            if snap.state not in ACTIVE_STATES:
                continue
            if snap.profile.model.strip() == wanted:
                return True
            if target.is_absolute() and snap.model_path:
                running = Path(snap.model_path)
                if running == target or target in running.parents:
                    return True
        return False

    def _spawn(self, server: _Server, model_dir: str, by: str) -> None:
        profile = server.profile
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # mlx_lm answers /v1/models with an empty body when the hub cache is missing.
        hub_cache_for(env).mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._remove_logs(profile.id)
        argv = build_command(profile, model_dir, self._python)
        log_path = self.logs_dir / f"server-{profile.id}-{int(self.clock.time() * 1000)}.log"
        try:
            with log_path.open("ab") as log_file:
                log_file.write(f"# mlx-manager: {' '.join(argv)} (started by {by})\n".encode())
                log_file.flush()
                popen = subprocess.Popen(  # noqa: S603 - argv list, no shell
                    argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True, close_fds=True, cwd=self.logs_dir)
        except OSError as exc:
            log.error("cannot spawn the server of %s: %s", profile.name, exc)
            server.log_path = log_path
            self._mark_failed(server, f"Could not start the process: {exc}")
            server.failure_tail = read_tail(log_path)
            raise ManagerError(f"Could not start the server of {profile.name}: {exc}") from exc
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error as exc:
            log.info("server of %s exited at once: %s", profile.name, exc)
            create_time = None
        server.popen, server.proc = popen, None
        server.pid, server.create_time, server.cmdline = popen.pid, create_time, argv
        server.model_path, server.log_path = model_dir, log_path
        server.started_at, server.started_mono = self.clock.time(), self.clock.monotonic()
        server.ready_at = server.exit_code = None
        server.failure_tail, server.adopted = "", False
        server.generation += 1
        self._transition(server, ServerState.STARTING, f"started by {by} (pid {popen.pid})")
        self._watch_readiness(server)

    def _adopt(self, server: _Server, record: ServerRecord, proc: psutil.Process) -> None:
        server.proc, server.popen = proc, None
        server.pid, server.create_time = record.pid, record.create_time
        server.cmdline = list(record.cmdline)
        server.model_path = model_of_cmdline(record.cmdline)
        server.log_path = Path(record.log_path) if record.log_path else None
        server.started_at = record.started_at
        # Monotonic time of a start in an earlier run is unknown: count from now.
        server.started_mono = self.clock.monotonic()
        server.last_activity = self.clock.monotonic()
        server.adopted = True
        server.generation += 1
        target = ServerState.READY if record.state is ServerState.READY else ServerState.STARTING
        self._transition(server, target, f"adopted (pid {record.pid})")
        # A server recorded as stopping is stopped by the caller, not probed.
        if record.state is ServerState.STARTING:
            self._watch_readiness(server)

    def _watch_readiness(self, server: _Server) -> None:
        threading.Thread(target=self._await_ready, args=(server, server.generation),
                         name=f"ready-{server.profile.id}", daemon=True).start()

    def _await_ready(self, server: _Server, generation: int) -> None:
        begun = self.clock.monotonic()
        deadline = begun + self._start_timeout_s
        errors = 0
        while not self._wake.is_set():
            with self._lock:
                if server.generation != generation or server.state is not ServerState.STARTING:
                    return
                gone, code = self._exit_status(server)
            if gone:
                self._on_exit(server, generation, code)
                return
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                self._give_up(server, generation,
                              f"Not ready after {self._start_timeout_s:g} s.")
                return
            outcome, detail = self._probe(server, min(remaining, 300.0))
            if outcome is _Probe.READY:
                with self._changed:
                    if server.generation == generation and server.state is ServerState.STARTING:
                        server.ready_at = self.clock.time()
                        server.last_activity = self.clock.monotonic()
                        took = server.ready_at - (server.started_at or server.ready_at)
                        self._transition(server, ServerState.READY,
                                         f"answered a 1-token completion after {took:.1f} s")
                return
            if outcome is _Probe.ERROR:
                errors += 1
                if errors >= PROBE_ERRORS_BEFORE_FAIL:
                    self._give_up(server, generation, f"The model did not load: {detail}")
                    return
            else:
                errors = 0
            # Refused connections cost nothing: poll briskly while a small model would
            # be loading, gently after that (big models take minutes).
            self._wake.wait(0.05 if self.clock.monotonic() - begun < 15 else 0.5)

    def _probe(self, server: _Server, timeout: float) -> tuple[_Probe, str]:
        """One real 1-token completion. Connection problems and empty bodies mean
        "not yet"; an HTTP error with a body means the server answered and refused."""
        with self._lock:
            snap = self._snap(server)
        if snap.profile.backend is Backend.MLX_VLM:
            url = snap.base_url + "/v1/chat/completions"
            body: dict[str, object] = {"model": snap.model_path, "max_tokens": 1,
                                       "messages": [{"role": "user", "content": "Hi"}]}
        else:
            url = snap.base_url + "/v1/completions"
            body = {"model": snap.model_path, "prompt": "Hi", "max_tokens": 1}
        try:
            response = self._http.post(url, json=body, timeout=httpx.Timeout(timeout, connect=2.0))
        except httpx.HTTPError as exc:
            log.debug("readiness probe of %s: %s", snap.profile.name, exc)
            return _Probe.NOT_YET, str(exc)
        if not response.content.strip():
            return _Probe.NOT_YET, "empty answer"
        try:
            payload = response.json()
        except ValueError as exc:
            log.debug("readiness probe of %s: not JSON (%s)", snap.profile.name, exc)
            return _Probe.NOT_YET, "not JSON"
        if response.status_code >= 400:
            detail = payload.get("error") or payload.get("detail") if isinstance(
                payload, dict) else payload
            if isinstance(detail, dict):
                detail = detail.get("message") or detail
            log.info("readiness probe of %s: HTTP %s %s", snap.profile.name,
                     response.status_code, detail)
            return _Probe.ERROR, f"HTTP {response.status_code}: {detail}"
        usage = payload.get("usage") if isinstance(payload, dict) else None
        # A model whose first token is <think> answers text "", so count tokens instead.
        if isinstance(usage, dict) and (usage.get("completion_tokens") or 0) >= 1:
            return _Probe.READY, ""
        return _Probe.NOT_YET, "no completion tokens yet"

    # -- internals: failing and stopping ------------------------------------------------------

    def _exit_status(self, server: _Server) -> tuple[bool, int | None]:
        """(gone, exit code); the code of an adopted process is unknown (None)."""
        if server.popen is not None:
            code = server.popen.poll()
            return code is not None, code
        if server.proc is not None:
            return not _alive(server.proc), None
        return True, None

    def _on_exit(self, server: _Server, generation: int, code: int | None) -> None:
        with self._changed:
            if server.generation != generation or server.state not in (
                    ServerState.STARTING, ServerState.READY):
                return
            during = "while loading the model" if server.state is ServerState.STARTING else ""
            reason = f"The server exited {during} with {describe_exit(code)}.".replace("  ", " ")
            server.exit_code = code
            self._fail(server, reason)

    def _give_up(self, server: _Server, generation: int, reason: str) -> None:
        with self._lock:
            if server.generation != generation or server.state is not ServerState.STARTING:
                return
            pid, popen, proc = server.pid, server.popen, server.proc
        self._terminate(pid, popen, proc, min(self._stop_grace_s, 3.0))
        with self._changed:
            if server.generation != generation or server.state is not ServerState.STARTING:
                return
            server.exit_code = popen.returncode if popen is not None else None
            self._fail(server, reason)

    def _fail(self, server: _Server, reason: str) -> None:
        """Lock held. FAILED with the log tail; schedules an auto-restart if asked."""
        server.failure_tail = read_tail(server.log_path)
        server.popen = server.proc = None
        now = self.clock.monotonic()
        if server.profile.auto_restart:
            quick = server.started_mono is not None and now - server.started_mono < QUICK_FAILURE_S
            server.quick_failures = server.quick_failures + 1 if quick else 1
            if server.quick_failures >= MAX_QUICK_FAILURES:
                reason += (f" Gave up restarting after {server.quick_failures} failures in a "
                           "row.")
            else:
                backoff = min(BACKOFF_BASE_S * 2 ** (server.quick_failures - 1), BACKOFF_MAX_S)
                server.restart_due = now + backoff
                reason += f" Restarting in {backoff:g} s."
        self._transition(server, ServerState.FAILED, reason)
        # Keep this log (the last one of a failed server); older ones of the profile go.
        self._remove_logs(server.profile.id, keep=server.log_path)

    def _fail_to_spawn(self, profile_id: int, reason: str) -> None:
        """Show a start that never got a process (busy port, missing model) as FAILED."""
        try:
            profile = self._profiles.get(profile_id)
        except NotFound:
            return
        with self._changed:
            server = self._servers.setdefault(profile_id, _Server(
                profile, state_since=self.clock.time()))
            if server.state in (ServerState.STOPPED, ServerState.FAILED):
                server.profile = profile
                server.failure_tail = ""
                self._mark_failed(server, reason)

    def _mark_failed(self, server: _Server, reason: str) -> None:
        """Lock held. FAILED without a process; a failed server passes through STOPPED so
        the new reason is recorded like any other transition."""
        if server.state is ServerState.FAILED:
            self._transition(server, ServerState.STOPPED, "trying again")
        self._transition(server, ServerState.FAILED, reason)

    def _stop_logged(self, profile_id: int, reason: str) -> None:
        try:
            self.stop(profile_id, reason=reason)
        except ManagerError as exc:
            log.info("stop of profile %s (%s) skipped: %s", profile_id, reason, exc.message)

    def _terminate(self, pid: int | None, popen: subprocess.Popen[bytes] | None,
                   proc: psutil.Process | None, grace: float) -> None:
        """SIGTERM the process group, wait `grace`, SIGKILL it, then any straggler."""
        if pid is None:
            return
        try:
            root = proc or psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error as exc:
            log.debug("server pid %s already gone: %s", pid, exc)
            family = []
        self._signal_group(pid, signal.SIGTERM)
        if not self._wait_gone(pid, popen, family, grace):
            log.warning("server pid %s ignored SIGTERM for %g s: sending SIGKILL", pid, grace)
            self._signal_group(pid, signal.SIGKILL)
            self._wait_gone(pid, popen, family, 5.0)
        for member in family:  # children that left the group
            try:
                if member.is_running():
                    member.kill()
            except psutil.Error as exc:
                log.debug("straggler %s already gone: %s", member.pid, exc)

    def _signal_group(self, pid: int, sig: signal.Signals) -> None:
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return
        try:
            # Servers lead their own session; never signal the dashboard's own group.
            if pgid == pid and pgid != os.getpgrp():
                os.killpg(pgid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            log.debug("pid %s exited before %s", pid, sig.name)
        except PermissionError as exc:
            log.warning("not allowed to signal server pid %s: %s", pid, exc)

    @staticmethod
    def _wait_gone(pid: int, popen: subprocess.Popen[bytes] | None,
                   family: list[psutil.Process], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if popen is not None:
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return False
        _, alive = psutil.wait_procs(family, timeout=max(0.0, deadline - time.monotonic()))
        return not alive

    def _idle(self, server: _Server, now: float) -> bool:
        minutes = server.profile.idle_timeout_minutes
        if not minutes:
            return False
        return server.in_flight == 0 and \
            now - server.last_activity > minutes * 60

    # -- internals: bookkeeping ------------------------------------------------------------

    def _transition(self, server: _Server, new: ServerState, reason: str = "") -> None:
        """The one place a server changes state: checked, logged, recorded, announced."""
        old = server.state
        if new not in _ALLOWED[old]:
            raise RuntimeError(f"illegal server transition {old.value} -> {new.value}")
        server.state = new
        server.state_since = self.clock.time()
        server.reason = reason
        log.info("server %s: %s -> %s (%s)", server.profile.name, old.value, new.value, reason)
        self._persist(server)
        self._changed.notify_all()

    def _persist(self, server: _Server) -> None:
        row = [server.profile.id, server.state.value, server.pid, server.create_time,
               json.dumps(server.cmdline), server.profile.host, server.profile.port,
               str(server.log_path) if server.log_path else None, server.started_at,
               server.exit_code, server.reason, utc_now()]
        try:
            with self._store.connect() as db:
                db.execute(
                    "INSERT INTO servers (profile_id, state, pid, create_time, cmdline, host, "
                    "port, log_path, started_at, exit_code, reason, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(profile_id) DO UPDATE SET state = excluded.state, "
                    "pid = excluded.pid, create_time = excluded.create_time, "
                    "cmdline = excluded.cmdline, host = excluded.host, port = excluded.port, "
                    "log_path = excluded.log_path, started_at = excluded.started_at, "
                    "exit_code = excluded.exit_code, reason = excluded.reason, "
                    "updated_at = excluded.updated_at", row)
        except sqlite3.IntegrityError as exc:
            # The profile was deleted meanwhile: nothing left to record against.
            log.info("not recording server of deleted profile %s: %s", server.profile.id, exc)

    def _remove_logs(self, profile_id: int, keep: Path | None = None) -> None:
        for path in self.logs_dir.glob(f"server-{profile_id}-*.log"):
            if path == keep:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot delete log %s: %s", path, exc)

    def _snap(self, server: _Server) -> ServerSnapshot:
        restart_at = None
        if server.restart_due is not None:
            restart_at = self.clock.time() + (server.restart_due - self.clock.monotonic())
        return ServerSnapshot(
            profile=server.profile, state=server.state, state_since=server.state_since,
            model_path=server.model_path, pid=server.pid, started_at=server.started_at,
            ready_at=server.ready_at, exit_code=server.exit_code, reason=server.reason,
            failure_tail=server.failure_tail,
            log_path=str(server.log_path) if server.log_path else None,
            adopted=server.adopted, restart_at=restart_at)

    def _name(self, profile_id: int) -> str:
        try:
            return self._profiles.get(profile_id).name
        except NotFound:
            return f"Profile {profile_id}"

"""One profile's server as the supervisor tracks it, and the restart policy after a crash.

`ServerRun` is mutable and touched only with the supervisor's lock held; its state
changes only through Supervisor._transition. What it hands out are copies
(`snapshot`, `record`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psutil

from manager.servers.logs import read_tail
from manager.servers.process import ServerProcess, model_of_cmdline
from manager.servers.profiles import Profile
from manager.servers.records import ServerRecord
from manager.servers.snapshot import Clock, ServerSnapshot
from manager.servers.states import ServerState

#: Auto-restart: a server that dies sooner than this after its start failed "quickly";
#: after MAX_QUICK_FAILURES in a row the supervisor stops trying (FAILED, not BACKOFF).
QUICK_FAILURE_S = 60.0
MAX_QUICK_FAILURES = 3
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 60.0


@dataclass(eq=False)
class ServerRun:
    profile: Profile
    model_path: str = ""
    state: ServerState = ServerState.STOPPED
    state_since: float = 0.0
    popen: ServerProcess | None = None  # a server (or rank group) this dashboard spawned
    proc: psutil.Process | None = None  # one it adopted
    pid: int | None = None
    create_time: float | None = None
    cmdline: list[str] = field(default_factory=list)  # the process's, to recognise it
    #: The server's own argv: the cmdline, unless a warm spare became the server.
    argv: list[str] = field(default_factory=list)
    log_path: Path | None = None
    started_at: float | None = None
    started_mono: float | None = None
    started_by: int | None = None  # the user id; None for the manager or unknown
    ready_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    failure_tail: str = ""
    adopted: bool = False
    #: Bumped by every spawn, adoption and stop: a readiness watch of an older
    #: generation gives up.
    generation: int = 0
    quick_failures: int = 0
    restart_due: float | None = None  # monotonic
    #: Seconds without requests before an idle stop, set by a request for this run
    #: (Ollama's keep_alive); None: the profile's idle timeout; negative: never.
    idle_limit_s: float | None = None
    #: Why the manager is ending this run's start (the model did not load, or took too
    #: long): the reason to show once the process is gone, whoever notices the exit.
    giving_up: str = ""
    #: The last snapshot, until any field is set again (every gateway request takes
    #: one; building it cost ~15 us out of the CPU's caches).
    _snapshot: ServerSnapshot | None = field(default=None, init=False, repr=False)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name != "_snapshot":
            object.__setattr__(self, "_snapshot", None)

    def spawned(self, popen: ServerProcess, create_time: float | None,
                argv: list[str], model_dir: str, log_path: Path, clock: Clock) -> None:
        self.popen, self.proc = popen, None
        self.pid, self.create_time, self.argv = popen.pid, create_time, argv
        self.cmdline = [str(a) for a in popen.args] if isinstance(popen.args, list) else argv
        self.model_path, self.log_path = model_dir, log_path
        self.started_at, self.started_mono = clock.time(), clock.monotonic()
        self.ready_at = self.exit_code = None
        self.failure_tail, self.adopted = "", False
        self.idle_limit_s = None
        self.giving_up = ""
        self.generation += 1

    def adopt(self, record: ServerRecord, proc: psutil.Process, clock: Clock) -> None:
        self.proc, self.popen = proc, None
        self.pid, self.create_time = record.pid, record.create_time
        self.cmdline, self.argv = list(record.cmdline), list(record.argv or record.cmdline)
        self.model_path = model_of_cmdline(self.argv)
        self.log_path = Path(record.log_path) if record.log_path else None
        self.started_at = record.started_at
        # Monotonic time of a start in an earlier run is unknown: count from now.
        self.started_mono = clock.monotonic()
        self.adopted = True
        self.giving_up = ""
        self.generation += 1

    def restore_failure(self, record: ServerRecord) -> None:
        """What an earlier dashboard run recorded about this server's failure."""
        self.model_path = model_of_cmdline(record.argv or record.cmdline)
        self.log_path = Path(record.log_path) if record.log_path else None
        self.exit_code = record.exit_code
        self.failure_tail = read_tail(self.log_path)

    def failed(self, reason: str, now: float) -> tuple[ServerState, str]:
        """The process is gone with `reason`: keep the log tail, and say whether it backs
        off (a restart is due later) or is FAILED for good, with the reason to show."""
        self.failure_tail = read_tail(self.log_path)
        self.popen = self.proc = None
        if not self.profile.auto_restart:
            return ServerState.FAILED, reason
        quick = self.started_mono is not None and now - self.started_mono < QUICK_FAILURE_S
        self.quick_failures = self.quick_failures + 1 if quick else 1
        if self.quick_failures >= MAX_QUICK_FAILURES:
            return ServerState.FAILED, (f"{reason} Gave up restarting after "
                                        f"{self.quick_failures} failures in a row.")
        backoff = min(BACKOFF_BASE_S * 2 ** (self.quick_failures - 1), BACKOFF_MAX_S)
        self.restart_due = now + backoff
        return ServerState.BACKOFF, f"{reason} Restarting in {backoff:g} s."

    def idle_limit(self) -> float | None:
        """Idle seconds before this run stops; None: never."""
        if self.idle_limit_s is not None:
            return self.idle_limit_s if self.idle_limit_s >= 0 else None
        minutes = self.profile.idle_timeout_minutes
        return minutes * 60.0 if minutes else None

    def snapshot(self, clock: Clock) -> ServerSnapshot:
        """The run as it stands (the same object while no field changed and no restart
        is due: a restart's time is worked out from the clock each time)."""
        restart_at = None
        if self.restart_due is not None:
            restart_at = clock.time() + (self.restart_due - clock.monotonic())
        elif self._snapshot is not None:
            return self._snapshot
        snap = ServerSnapshot(
            profile=self.profile, state=self.state, state_since=self.state_since,
            model_path=self.model_path, pid=self.pid, started_at=self.started_at,
            ready_at=self.ready_at, exit_code=self.exit_code, reason=self.reason,
            failure_tail=self.failure_tail,
            log_path=str(self.log_path) if self.log_path else None,
            adopted=self.adopted, restart_at=restart_at, started_by=self.started_by)
        if restart_at is None:
            self._snapshot = snap
        return snap

    def record(self) -> ServerRecord:
        return ServerRecord(
            profile_id=self.profile.id, profile_name=self.profile.name, state=self.state,
            pid=self.pid, create_time=self.create_time, cmdline=tuple(self.cmdline),
            argv=tuple(self.argv) if self.argv != self.cmdline else (),
            host=self.profile.host, port=self.profile.port, started_at=self.started_at,
            exit_code=self.exit_code, reason=self.reason,
            log_path=str(self.log_path) if self.log_path else None)


class RestartNoLongerDue(Exception):
    """An automatic restart whose server left BACKOFF (dismissed, or started) before it
    ran (Supervisor._start)."""

"""A distributed server run: every rank spawned, watched and stopped as one.

The supervisor keeps a `RankGroup` where it keeps a single server's Popen: `pid` and
`args` are rank 0's (it answers HTTP, so readiness probes it as any server), `poll()` is
None while every rank runs. The first rank found dead (local process, or the ssh session
of a remote one) fails the whole group: `poll()` kills the other ranks, writes which rank
died on which host and that rank's log tail into rank 0's log (the log the supervisor
shows), and returns its exit code. The monitor's tick runs `poll()` through
`Supervisor.reconcile`, so a dead rank turns the group FAILED within one tick; the same
call samples each local rank's memory and CPU for the Servers tile.

Every rank runs in its own session and process group (local: `start_new_session`; remote:
the session sshd makes, whose process group `RemoteRanks.stop` signals over ssh). Stop
(`stop_group`) ends every rank on every host in parallel: SIGTERM, wait, SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

from manager.errors import ManagerError, ValidationError
from manager.net import port_is_free
from manager.servers.distributed import roster
from manager.servers.distributed.hostfile import RankLaunch, launches
from manager.servers.distributed.sampling import HostSample, HostSampler
from manager.servers.distributed.spec import DistributedSpec, RankHost
from manager.servers.distributed.ssh import (
    SSH_FAILED,
    RemoteRank,
    SshOptions,
    explain_failure,
)
from manager.servers.logs import cap_log, read_tail
from manager.servers.process import (
    KILL_WAIT_S,
    describe_exit,
    signal_group,
    spawn,
    terminate,
    tree_memory_bytes,
)

log = logging.getLogger(__name__)

#: Lines of a dead rank's log copied into rank 0's log (what the failure shows).
DEAD_RANK_TAIL_LINES = 20


class RemoteRanks(Protocol):
    """Starting and stopping ranks on other hosts (ssh; manager/servers/distributed/ssh.py).
    `argv` is the local command (an ssh client) that runs the rank there; its output is the
    rank's log, where `locate` finds the rank's pid and process group on its host. `stop`
    ends that process group; True when none of it is left."""

    def argv(self, launch: RankLaunch, rank_id: str) -> list[str]: ...

    def locate(self, log_path: Path) -> RemoteRank | None: ...

    def stop(self, launch: RankLaunch, where: RemoteRank, grace_s: float) -> bool: ...

    def stop_unlocated(self, launch: RankLaunch, rank_id: str, grace_s: float) -> bool: ...

    def sampler(self, hosts: Sequence[tuple[RankHost, str]]) -> HostSampler: ...


@dataclass(frozen=True)
class RankView:
    """One rank as the Servers tile shows it."""

    rank: int
    host: str  # "this machine" or the ssh target
    endpoint: str  # ip:port where it meets the other ranks
    state: str  # running, exited (...), stopped
    pid: int  # the rank's process here; for a remote rank, its ssh client
    log_path: str
    memory_bytes: int | None = None  # None: unknown (shown as n/a)
    cpu_percent: float | None = None


@dataclass(eq=False)
class _Rank:
    launch: RankLaunch
    rank_id: str  # names its files and pid on a remote host (ssh.py)
    endpoint: str
    log_path: Path
    popen: subprocess.Popen[bytes]
    create_time: float | None
    proc: psutil.Process | None = None  # kept between samples: cpu_percent needs it
    #: A remote rank's pid and process group on its host, once its log named them (kept
    #: here: a failed server's logs may be deleted before its ranks are ended).
    where: RemoteRank | None = None
    memory_bytes: int | None = None
    cpu_percent: float | None = None
    stopped: bool = False

    @property
    def local(self) -> bool:
        return self.launch.host.is_local

    @property
    def label(self) -> str:
        return f"rank {self.launch.rank} on {self.launch.host.label} ({self.endpoint})"

    def state(self) -> str:
        code = self.popen.returncode
        if code is None:
            return "running"
        return "stopped" if self.stopped else f"exited ({describe_exit(code)})"

    def sample(self) -> None:
        if not self.local or self.popen.returncode is not None:
            self.memory_bytes = self.cpu_percent = None
            return
        try:
            if self.proc is None:
                self.proc = psutil.Process(self.popen.pid)
                self.proc.cpu_percent(None)  # the first call only starts the count
            else:
                self.cpu_percent = self.proc.cpu_percent(None)
            self.memory_bytes = tree_memory_bytes(self.proc)
        except psutil.Error as exc:
            log.debug("%s gone while sampling: %s", self.label, exc)
            self.memory_bytes = self.cpu_percent = None


class RankGroup:
    """The ranks of one run; the supervisor holds it like a Popen (see the module doc)."""

    def __init__(self, name: str, spec: DistributedSpec, ranks: Sequence[_Rank],
                 files: Sequence[Path], remote: RemoteRanks | None,
                 sampler: HostSampler, roster_file: Path) -> None:
        self.name = name
        self._roster = roster_file
        self._sampler = sampler  # each host's memory and CPU (remote ones over ssh)
        self.spec = spec
        self._ranks = tuple(ranks)
        self._files = tuple(files)
        self._remote = remote
        self._lock = threading.Lock()
        self._cleanup: threading.Thread | None = None
        self.returncode: int | None = None
        #: Why the group ended when a rank died first ("" while running or after a stop).
        self.failure = ""
        self.pid = self._ranks[0].popen.pid
        self.args = list(self._ranks[0].launch.argv)

    # -- what the supervisor calls ------------------------------------------------------------

    def poll(self) -> int | None:
        """None while every rank runs; else the exit code of the rank that ended first,
        the other ranks being killed by then (remote ones in the background)."""
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            dead = next((r for r in self._ranks if r.popen.poll() is not None), None)
            if dead is None:
                self._locate_remote()
                for rank in self._ranks:
                    rank.sample()
                    cap_log(rank.log_path)
                self._sampler.refresh_due()  # in the background, at most every 10 s
                return None
            code = dead.popen.returncode
            self.failure = f"{dead.label[0].upper()}{dead.label[1:]} exited with " \
                           f"{describe_exit(code)}."
            if not dead.local and code == SSH_FAILED and dead.where is None:
                # ssh itself failed before the rank ran there: say what to do about it.
                why = explain_failure(dead.launch.host.ssh_target, read_tail(dead.log_path))
                self.failure = f"Rank {dead.launch.rank} could not start: {why.message}"
            log.warning("%s: %s; ending the other ranks", self.name, self.failure)
            self._note_failure(dead)
            self._kill_rest()
            if self._cleanup is None:
                self._remove_files()  # no remote rank to wait for: the roster is done
            self.returncode = code
            return code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            try:
                self._ranks[0].popen.wait(timeout=min(0.2, left) if left else 0.2)
            except subprocess.TimeoutExpired:
                continue
        return code

    def stop_group(self, grace_s: float) -> None:
        """End every rank on every host: SIGTERM, `grace_s`, SIGKILL (in parallel)."""
        with self._lock:
            for rank in self._ranks:
                rank.stopped = rank.popen.returncode is None
        threads = [threading.Thread(target=self._stop_rank, args=(rank, grace_s),
                                    name=f"stop-rank-{rank.launch.rank}", daemon=True)
                   for rank in self._ranks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.settle()
        with self._lock:
            if self.returncode is None:
                self.returncode = self._ranks[0].popen.returncode
        self._remove_files()

    def settle(self) -> None:
        """Wait until the background end of a failed group's remote ranks is over."""
        cleanup = self._cleanup
        if cleanup is not None:
            cleanup.join()
        self._remove_files()

    def views(self) -> tuple[RankView, ...]:
        with self._lock:
            return tuple(RankView(rank=r.launch.rank, host=r.launch.host.label,
                                  endpoint=r.endpoint, state=r.state(),
                                  pid=r.popen.pid,
                                  log_path=str(r.log_path), memory_bytes=r.memory_bytes,
                                  cpu_percent=r.cpu_percent)
                         for r in self._ranks)

    def host_samples(self) -> tuple[HostSample | None, ...]:
        """Each rank's host: its last memory/CPU sample (None: not sampled yet)."""
        return self._sampler.latest()

    def running_rank_ids(self) -> tuple[str, ...]:
        """The rank ids (ssh.py's remote rank dirs) of ranks still running."""
        with self._lock:
            return tuple(r.rank_id for r in self._ranks if r.popen.returncode is None)

    # -- internals ------------------------------------------------------------------------------

    def _locate_remote(self) -> None:
        """Lock held. Note where remote ranks run on their hosts (in the roster too)."""
        if self._remote is None:
            return
        found = False
        for rank in self._ranks:
            if not rank.local and rank.where is None:
                rank.where = self._remote.locate(rank.log_path)
                found = found or rank.where is not None
        if found:
            roster.write_roster(self._roster, [_entry(r) for r in self._ranks])

    def _stop_rank(self, rank: _Rank, grace_s: float) -> None:
        remote = self._remote
        where = rank.where
        if not rank.local and remote is not None and where is None:
            where = remote.locate(rank.log_path)
            if where is None:
                # Stopped before its log named its pid: end the ssh client first (no
                # start can follow), then the rank by the pid file its shell wrote on its
                # host (or, if its shell comes later, by the note the stop leaves there).
                terminate(rank.popen.pid, rank.popen, None, 2.0)
                self._stop_remote(rank, lambda: remote.stop_unlocated(
                    rank.launch, rank.rank_id, grace_s))
                return
        if remote is not None and where is not None:
            located = where
            self._stop_remote(rank, lambda: remote.stop(rank.launch, located, grace_s))
        terminate(rank.popen.pid, rank.popen, None, grace_s if rank.local else 2.0)

    def _stop_remote(self, rank: _Rank, stop: Callable[[], bool]) -> None:
        try:
            if not stop():
                log.warning("%s: %s may still run on its host", self.name, rank.label)
        except ManagerError as exc:
            log.warning("%s: could not stop %s over ssh: %s", self.name, rank.label,
                        exc.message)

    def _kill_rest(self) -> None:
        """Lock held. SIGKILL the local ranks (and reap them) now; remote ranks are ended
        over ssh in a thread, which the next start of this profile waits for."""
        remote = []
        for rank in self._ranks:
            if rank.popen.returncode is not None:
                continue
            if rank.local:
                signal_group(rank.popen.pid, signal.SIGKILL)
                try:
                    rank.popen.wait(timeout=KILL_WAIT_S)
                except subprocess.TimeoutExpired:
                    log.warning("%s: %s survived SIGKILL for %g s", self.name, rank.label,
                                KILL_WAIT_S)
            else:
                remote.append(rank)
        if remote:
            self._cleanup = threading.Thread(target=self._stop_ranks, args=(remote, 1.0),
                                             name=f"end-ranks-{self.name}", daemon=True)
            self._cleanup.start()

    def _stop_ranks(self, ranks: Sequence[_Rank], grace_s: float) -> None:
        for rank in ranks:
            self._stop_rank(rank, grace_s)
        self._remove_files()

    def _note_failure(self, dead: _Rank) -> None:
        """Lock held. Rank 0's log is what the failed server shows: say there which rank
        died and how its own log ends."""
        if dead is self._ranks[0]:
            return  # its own log already ends with its last words
        tail = "\n".join(read_tail(dead.log_path).splitlines()[-DEAD_RANK_TAIL_LINES:])
        note = (f"\n# mlx-manager: {self.failure} The other ranks were stopped. The last "
                f"lines of its log ({dead.log_path.name}):\n{tail}\n")
        try:
            with self._ranks[0].log_path.open("a", encoding="utf-8") as handle:
                handle.write(note)
        except OSError as exc:
            log.warning("%s: cannot write the failure note to %s: %s", self.name,
                        self._ranks[0].log_path, exc)

    def _remove_files(self) -> None:
        for path in self._files:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)


def _entry(rank: _Rank) -> roster.RosterEntry:
    where = rank.where
    return roster.RosterEntry(
        rank=rank.launch.rank, ssh_target=rank.launch.host.ssh_target,
        address=rank.launch.host.address, pid=rank.popen.pid, create_time=rank.create_time,
        log_path=str(rank.log_path), remote_pid=where.pid if where else None,
        remote_pgid=where.pgid if where else None,
        remote_dir=where.directory if where else None)


@dataclass
class GroupLauncher:
    """Spawns the rank groups of distributed profiles (one launcher per supervisor)."""

    logs_dir: Path
    remote: RemoteRanks | None = None
    remote_python: str = "python3"
    nice_steps: int = 0  # local ranks' steps below the dashboard's priority (cpu_priority.py)
    _last: dict[int, RankGroup] = field(default_factory=dict)

    def running_rank_ids(self) -> tuple[str, ...]:
        """Rank ids of every running group (a preflight does not call them stale)."""
        return tuple(i for g in list(self._last.values()) for i in g.running_rank_ids())

    def reap(self, profile_id: int) -> str:
        """End the ranks of this profile that an earlier dashboard left running (a group
        is not adopted); returns the reason to show."""
        ended = roster.reap(self.logs_dir, profile_id, self.remote)
        return (f"its {ended} rank process(es) left by the last dashboard were stopped "
                "(a distributed server is not adopted; start it again)" if ended else
                "was not running when the dashboard started")

    def group(self, profile_id: int) -> RankGroup | None:
        """The last rank group started for a profile (running, failed or stopped)."""
        return self._last.get(profile_id)

    def spawn(self, profile_id: int, name: str, spec: DistributedSpec, argv: Sequence[str],
              log_path: Path, env: Mapping[str, str], *, by: str
              ) -> tuple[RankGroup, float | None]:
        """Start every rank of `spec` (rank 0 logging to `log_path`, rank k next to it).
        Raises ValidationError when a local rank's port is taken or a remote host cannot
        be reached this way, OSError when a process cannot start (nothing is left
        running then)."""
        previous = self._last.get(profile_id)
        if previous is not None:
            previous.settle()  # a failed run's remote ranks must be gone: same ports
        if spec.remote_hosts and self.remote is None:
            raise ValidationError(
                f"{name} has ranks on other hosts "
                f"({', '.join(h.ssh_target for h in spec.remote_hosts)}) but this dashboard "
                "cannot reach hosts over ssh.", "distributed")
        for rank, host in enumerate(spec.hosts):
            port = host.port(rank, spec.base_port)
            if host.is_local and not port_is_free(host.ip, port):
                raise ValidationError(
                    f"Port {port} on {host.ip} (rank {rank} of {name}) is in use by another "
                    "program: stop it or change the profile's base port.", "distributed")
        group_id = f"{profile_id}-{log_path.stem}"
        files = {name_: log_path.with_suffix(f".{name_.lower()}.json")
                 for name_ in launches(spec, argv, group_id)[0].files}
        started: list[_Rank] = []
        try:
            for launch in launches(spec, argv, group_id, self.remote_python):
                for env_name, content in launch.files.items():
                    files[env_name].write_text(content, encoding="utf-8")
                started.append(self._start(spec, launch, log_path, env, files, group_id, by))
        except (OSError, ManagerError):
            for begun in started:
                terminate(begun.popen.pid, begun.popen, None, 2.0)
            for path in files.values():
                path.unlink(missing_ok=True)
            raise
        names = roster.roster_path(log_path)
        roster.write_roster(names, [_entry(r) for r in started])
        hosts = [(r.launch.host, r.launch.argv[0]) for r in started]
        sampler = (self.remote.sampler(hosts) if self.remote is not None
                   else HostSampler(hosts, SshOptions()))  # local hosts need no ssh
        group = RankGroup(name, spec, started, (*files.values(), names), self.remote, sampler,
                          names)
        self._last[profile_id] = group
        log.info("%s: %d ranks started (%s, %s parallel) by %s", name, spec.size,
                 spec.backend.value, spec.parallel.value, by)
        return group, started[0].create_time

    def _start(self, spec: DistributedSpec, launch: RankLaunch, log_path: Path,
               env: Mapping[str, str], files: Mapping[str, Path], group_id: str, by: str
               ) -> _Rank:
        rank_id = f"{group_id}-rank{launch.rank}"
        rank_log = log_path if launch.rank == 0 else log_path.with_suffix(
            f".rank{launch.rank}.log")
        how = f"rank {launch.rank} of {spec.size}"
        if launch.host.is_local:
            rank_env = {**env, **launch.env, **{k: str(files[k]) for k in launch.files}}
            argv = list(launch.argv)
        elif self.remote is not None:
            rank_env = dict(os.environ)  # the ssh client's; the rank's own goes on its line
            argv = self.remote.argv(launch, rank_id)
            how += f" on {launch.host.ssh_target}"
        else:
            raise ValidationError(f"Rank {launch.rank} is on another host, which this "
                                  "dashboard cannot reach over ssh.", "distributed")
        popen, create_time = spawn(argv, rank_log, rank_env, self.logs_dir,
                                   by=f"{by}, {how}",
                                   nice_steps=self.nice_steps if launch.host.is_local else 0)
        return _Rank(launch=launch, rank_id=rank_id, endpoint=spec.endpoint(launch.rank), log_path=rank_log,
                     popen=popen, create_time=create_time)

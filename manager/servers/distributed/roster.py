"""A group's roster: which processes its ranks are, written next to rank 0's log when the
group starts, so that a later dashboard can end ranks an earlier one left running.

A distributed server is not adopted across dashboard restarts (its ranks' Popen objects,
and with them its death watch, belong to the dashboard that started them): at the next
start, `reap` ends every rank its roster names, on every host, and deletes the roster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import psutil

from manager.errors import ManagerError
from manager.servers.distributed.hostfile import RankLaunch
from manager.servers.distributed.spec import RankHost
from manager.servers.distributed.ssh import RemoteRank
from manager.servers.process import terminate

log = logging.getLogger(__name__)

SUFFIX = ".group.json"
REAP_GRACE_S = 5.0


class StopsRemote(Protocol):
    def stop(self, launch: RankLaunch, where: RemoteRank, grace_s: float) -> bool: ...


@dataclass(frozen=True)
class RosterEntry:
    rank: int
    ssh_target: str
    address: str
    pid: int  # the rank here, or the ssh client of a remote rank
    create_time: float | None
    log_path: str
    #: A remote rank on its host, once known (ssh.py's marker line).
    remote_pid: int | None = None
    remote_pgid: int | None = None
    remote_dir: str | None = None


def roster_path(log_path: Path) -> Path:
    return log_path.with_suffix(SUFFIX)


def write_roster(path: Path, entries: Sequence[RosterEntry]) -> None:
    path.write_text(json.dumps([asdict(e) for e in entries]), encoding="utf-8")


def _read(path: Path) -> list[RosterEntry]:
    try:
        return [RosterEntry(**item) for item in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError) as exc:
        log.warning("cannot read the rank roster %s: %s", path, exc)
        return []


def _same_process(entry: RosterEntry) -> psutil.Process | None:
    try:
        proc = psutil.Process(entry.pid)
        if entry.create_time is not None and abs(proc.create_time() - entry.create_time) > 0.05:
            return None  # the pid was reused
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def reap(logs_dir: Path, profile_id: int, remote: StopsRemote | None) -> int:
    """End the ranks that rosters of this profile name (a remote rank over ssh, by the
    process group its log recorded); delete the rosters. Returns how many of the ranks'
    processes here (ranks, or ssh clients of remote ones) still ran."""
    ended = 0
    for path in sorted(logs_dir.glob(f"server-{profile_id}-*{SUFFIX}")):
        for entry in _read(path):
            proc = _same_process(entry)
            host = RankHost(ssh_target=entry.ssh_target, address=entry.address)
            if not host.is_local and remote is not None and entry.remote_pgid is not None:
                launch = RankLaunch(rank=entry.rank, host=host, argv=())
                where = RemoteRank(pid=entry.remote_pid or entry.remote_pgid,
                                   pgid=entry.remote_pgid, directory=entry.remote_dir or "")
                try:
                    if remote.stop(launch, where, REAP_GRACE_S):
                        ended += 1
                except (ManagerError, OSError) as exc:  # the other ranks still get ended
                    log.warning("could not end rank %d on %s: %s", entry.rank,
                                entry.ssh_target, exc)
            if proc is not None:
                ended += 1
                log.info("ending rank %d (pid %s) left by an earlier dashboard", entry.rank,
                         entry.pid)
                terminate(entry.pid, None, proc, REAP_GRACE_S)
        path.unlink(missing_ok=True)
    return ended

"""Remote ranks over ssh: the `RemoteRanks` the group launcher uses (group.py), built on
ssh.py's argv and remote commands.

A remote rank's local side is an ssh client whose output is the rank's log; the first line
the remote shell prints there is ssh.py's marker with the rank's pid and process group on
its host, which is what `stop` signals.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from manager.servers.distributed import ssh
from manager.servers.distributed.hostfile import RankLaunch
from manager.servers.distributed.sampling import HostSampler
from manager.servers.distributed.spec import RankHost

log = logging.getLogger(__name__)

#: The marker comes right after the log's header line; never read more than this for it.
MARKER_SEARCH_BYTES = 64 * 1024


def find_marker(log_path: Path) -> ssh.RemoteRank | None:
    """The remote rank's pid and process group, from the start of its log (None before
    the remote shell printed them, or when the log is gone)."""
    try:
        with log_path.open("rb") as handle:
            head = handle.read(MARKER_SEARCH_BYTES).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s for the rank's marker: %s", log_path, exc)
        return None
    for line in head.splitlines():
        found = ssh.parse_marker(line)
        if found is not None:
            return found
    return None


class SshRanks:
    """Start and stop ranks on other hosts with the user's ssh (settings.ssh_config)."""

    def __init__(self, options: ssh.SshOptions) -> None:
        self.options = options

    def argv(self, launch: RankLaunch, rank_id: str) -> list[str]:
        env = {"PYTHONUNBUFFERED": "1", **launch.env}  # the log shows output as it comes
        return ssh.remote_argv(launch.host.ssh_target, launch.argv, env, launch.files,
                               rank_id, self.options)

    def locate(self, log_path: Path) -> ssh.RemoteRank | None:
        return find_marker(log_path)

    def stop(self, launch: RankLaunch, where: ssh.RemoteRank, grace_s: float) -> bool:
        return ssh.stop_remote_rank(launch.host.ssh_target, where, self.options,
                                    timeout_s=grace_s)

    def stop_unlocated(self, launch: RankLaunch, rank_id: str, grace_s: float) -> bool:
        return ssh.stop_unlocated_rank(launch.host.ssh_target, rank_id, self.options,
                                       timeout_s=grace_s)

    def sampler(self, hosts: Sequence[tuple[RankHost, str]]) -> HostSampler:
        """Memory and CPU of each host (with the interpreter its rank runs there)."""
        return HostSampler(hosts, self.options)

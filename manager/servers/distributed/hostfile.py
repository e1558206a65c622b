"""What each rank is started with: its argv, its environment and the small files MLX reads
(the ring hostfile, jaccl's RDMA device list). Pure: the group writes the files.

Verified against mlx 0.32 / mlx_lm 0.32 (`mlx/_distributed_utils/launch.py`,
`mlx_lm/server.py`): ranks need no launcher. `mx.distributed.init()` (backend "any", as
mlx_lm calls it) joins the ring when `MLX_RANK` and `MLX_HOSTFILE` (a path to a JSON list
with one `["ip:port"]` list per rank) are set, and jaccl when `MLX_RANK`,
`MLX_IBV_DEVICES` (a path to the per-rank device matrix) and `MLX_JACCL_COORDINATOR`
(`ip:port` of rank 0) are set. `python -m mlx_lm server` then shards the model itself
(tensor parallel; `--pipeline` splits by layers); rank 0 serves HTTP, the others follow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from manager.servers.distributed.spec import DistributedSpec, LinkBackend, Parallel, RankHost

RANK_ENV = "MLX_RANK"
HOSTFILE_ENV = "MLX_HOSTFILE"
IBV_DEVICES_ENV = "MLX_IBV_DEVICES"
JACCL_COORDINATOR_ENV = "MLX_JACCL_COORDINATOR"
#: Set on every rank so that a process can be recognised as one of a group's ranks.
GROUP_ENV = "MLX_MANAGER_GROUP"


def ring_hostfile(spec: DistributedSpec) -> str:
    """The ring backend's hostfile: one `["ip:port"]` list per rank, rank 0 first."""
    return json.dumps([[spec.endpoint(rank)] for rank in range(spec.size)])


def jaccl_devices(spec: DistributedSpec) -> str:
    """jaccl's device matrix: for each rank, its RDMA device towards each rank (null for
    itself), as mlx.launch writes it."""
    return json.dumps([[d or None for d in host.rdma] for host in spec.hosts])


@dataclass(frozen=True)
class RankLaunch:
    """How to start one rank. `files` maps an environment variable to the content of a
    file the rank must find at the path that variable names: the group writes them next
    to the rank's log for local ranks; for a remote rank the remote command creates them
    on that host (e.g. with mktemp) and exports their paths before it runs `argv`."""

    rank: int
    host: RankHost
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)


def rank_argv(spec: DistributedSpec, rank: int, server_argv: Sequence[str],
              python: str | None = None) -> tuple[str, ...]:
    """A rank's argv from the profile's single-process argv (`build_command`): the model
    path that host has, its own interpreter for remote hosts, and `--pipeline` when the
    profile splits by layers. Every rank gets the same flags: mlx_lm reads sampling and
    template settings on each rank."""
    argv = list(server_argv)
    host = spec.hosts[rank]
    if host.model_path and "--model" in argv[:-1]:
        argv[argv.index("--model") + 1] = host.model_path
    if python is not None:
        argv[0] = python
    if spec.parallel is Parallel.PIPELINE and "--pipeline" not in argv:
        argv.append("--pipeline")
    return tuple(argv)


def rank_env(spec: DistributedSpec, rank: int, group_id: str) -> dict[str, str]:
    """The environment variables a rank needs beyond the server's own (not the files')."""
    env = {RANK_ENV: str(rank), GROUP_ENV: group_id}
    if spec.backend is LinkBackend.JACCL:
        env[JACCL_COORDINATOR_ENV] = spec.endpoint(0)
    return env


def rank_files(spec: DistributedSpec) -> dict[str, str]:
    """Environment variable -> file content, the same for every rank."""
    if spec.backend is LinkBackend.JACCL:
        return {IBV_DEVICES_ENV: jaccl_devices(spec)}
    return {HOSTFILE_ENV: ring_hostfile(spec)}


def launches(spec: DistributedSpec, server_argv: Sequence[str], group_id: str,
             remote_python: str = "python3") -> tuple[RankLaunch, ...]:
    """Every rank's launch, rank 0 first. Local ranks run this dashboard's interpreter
    (server_argv[0]); remote ranks their host's `python`, else `remote_python` as found on
    that host's PATH."""
    files = rank_files(spec)
    return tuple(
        RankLaunch(rank=rank, host=host,
                   argv=rank_argv(spec, rank, server_argv,
                                  None if host.is_local else host.python or remote_python),
                   env=rank_env(spec, rank, group_id), files=files)
        for rank, host in enumerate(spec.hosts))

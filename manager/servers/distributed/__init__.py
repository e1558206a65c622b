"""Distributed profiles: one model served by several `mlx_lm server` ranks (one per host)
joined by MLX's own distributed engine (ring over TCP, or jaccl over Thunderbolt RDMA).

- `spec.py`: `DistributedSpec`, `RankHost`: the hosts, link backend and split (pure).
- `hostfile.py`: each rank's argv, environment and hostfile (pure).
- `group.py`: `GroupLauncher`, `RankGroup`: every rank spawned, watched, sampled and
  stopped as one; the supervisor keeps a group like a Popen.
- `remote.py`: `SshRanks`: ranks on other hosts started and stopped through `ssh.py`.
- `roster.py`: a group's processes on record, so the next dashboard ends ranks left behind.
- `ssh.py`: non-interactive ssh argv, remote commands (one message per failure), the shell
  line that runs a remote rank in its own process group.
- `preflight.py` (+ `probe_main.py`, the program run on each host): one line per host
  saying whether its rank can start there and what to do when not.
- `sampling.py`: memory and CPU of each host (remote ones over ssh) for the Servers tile.
"""

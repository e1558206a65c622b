"""Distributed profiles: one model served by several `mlx_lm server` ranks (one per host)
joined by MLX's own distributed engine (ring over TCP, or jaccl over Thunderbolt RDMA).

- `spec.py`: `DistributedSpec`, `RankHost`: the hosts, link backend and split (pure).
- `hostfile.py`: each rank's argv, environment and hostfile (pure).
- `group.py`: `GroupLauncher`, `RankGroup`: every rank spawned, watched, sampled and
  stopped as one; the supervisor keeps a group like a Popen.
- `remote.py`: `SshRanks`: ranks on other hosts started and stopped through `ssh.py`.
"""

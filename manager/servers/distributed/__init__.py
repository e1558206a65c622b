"""Distributed profiles: one model served by several `mlx_lm server` ranks (one per host)
joined by MLX's own distributed engine (ring over TCP, or jaccl over Thunderbolt RDMA).

- `spec.py`: `DistributedSpec`, `RankHost`: the hosts, link backend and split (pure).
- `hostfile.py`: each rank's argv, environment and hostfile (pure).
"""

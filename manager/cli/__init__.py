"""Console commands of mlx-manager."""

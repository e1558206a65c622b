"""The model server programs a profile can run (stdlib only: the command line's parser
offers them as choices without loading the rest of the servers package)."""

from __future__ import annotations

import enum


class Backend(str, enum.Enum):
    """Which server runs the model: mlx_lm for text models, mlx_vlm for vision models."""

    MLX_LM = "mlx_lm"
    MLX_VLM = "mlx_vlm"

    @property
    def api_key_env(self) -> str | None:
        """The environment variable through which this server takes an API key (the
        twin of mlx_vlm.server's --api-key), or None: `mlx_lm server` has no such option."""
        return "MLX_VLM_SERVER_API_KEY" if self is Backend.MLX_VLM else None

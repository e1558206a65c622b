"""What a model can do, read from its files: pure functions, no gradio, no mlx.

`detect(model_dir)` reads a local model folder; `from_files(config, tokenizer_config,
...)` does the same for a remote model from what the hub tells (file names and sizes,
tags). Both return a frozen `Capabilities`. `fit()` then says whether the model fits
in the memory MLX can use (`memory_budget_bytes()`).

Evidence, strongest first:
- config.json decides architecture, context, vision/video, quantization, sizes
  (`config`, `estimates`). Without a readable config.json everything is guessed from
  the repo/folder name and the HF tags (`names`, `guessed=True`), and a note says why.
- A chat template decides tool use and thinking (`templates`); markup in the
  vocabulary decides only when no template is known.
- `tool_parser_type` in tokenizer_config.json and HF tags (tool-use, reasoning, ...)
  always count.

One concern per module: `files` reads a folder safely, `config` interprets configs,
`estimates` sizes parameters and the KV cache, `templates` sniffs chat templates,
`names` guesses from names, `detection` turns evidence into `Capabilities`
(`result`), `memory` holds the machine's budget and the fit. Unknown figures are
None (shown "n/a"), never 0.
"""

from __future__ import annotations

from manager.models.capabilities.detection import detect, from_files
from manager.models.capabilities.memory import (
    APPLE_SILICON_BUDGET_PERCENT,
    DEFAULT_FIT_CONTEXT_TOKENS,
    TIGHT_ABOVE_PERCENT,
    WEIGHTS_OVERHEAD_PERCENT,
    Fit,
    FitLevel,
    fit,
    is_apple_silicon,
    memory_budget_bytes,
)
from manager.models.capabilities.result import Capabilities

__all__ = [
    "APPLE_SILICON_BUDGET_PERCENT",
    "DEFAULT_FIT_CONTEXT_TOKENS",
    "TIGHT_ABOVE_PERCENT",
    "WEIGHTS_OVERHEAD_PERCENT",
    "Capabilities",
    "Fit",
    "FitLevel",
    "detect",
    "fit",
    "from_files",
    "is_apple_silicon",
    "memory_budget_bytes",
]

"""A short curated list of small tool-use models for a first try, and which one fits here.

Data, not discovery: the "Try a tool-use model" action must not depend on a hub search
ranking. Each entry is a real MLX-community repo of a Qwen3 model (its chat template
renders tools and mlx_lm parses its `<tool_call>` markup). The sizes are approximate,
as published when the list was made: `download_bytes` is the repo's weights, and
`memory_bytes` what running it with an 8K-token chat context takes (weights x 1.05 plus
the KV cache, as `capabilities.fit` counts it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from manager.models.capabilities import TIGHT_ABOVE_PERCENT

_MB = 1024 * 1024  # as units.format_bytes counts


@dataclass(frozen=True)
class Suggestion:
    """One model offered for a first try."""

    repo_id: str
    label: str  # what a person reads: family, size, quantization
    download_bytes: int
    memory_bytes: int


#: Largest first: the first that fits comfortably is suggested.
TOOL_USE_MODELS: tuple[Suggestion, ...] = (
    Suggestion("mlx-community/Qwen3-8B-4bit", "Qwen3 8B (4-bit)", 4_620 * _MB, 6_100 * _MB),
    Suggestion("mlx-community/Qwen3-4B-4bit", "Qwen3 4B (4-bit)", 2_260 * _MB, 3_600 * _MB),
    Suggestion("mlx-community/Qwen3-1.7B-4bit", "Qwen3 1.7B (4-bit)", 968 * _MB, 1_950 * _MB),
    Suggestion("mlx-community/Qwen3-0.6B-4bit", "Qwen3 0.6B (4-bit)", 335 * _MB, 1_300 * _MB),
)


def suggest(budget_bytes: int, choices: Sequence[Suggestion] = TOOL_USE_MODELS
            ) -> Suggestion | None:
    """The largest model that fits comfortably (the "fits" colour: at most 80 % of the
    budget), else the smallest one that fits at all, else None (nothing fits)."""
    comfortable = [s for s in choices if s.memory_bytes * 100 <= budget_bytes * TIGHT_ABOVE_PERCENT]
    if comfortable:
        return max(comfortable, key=lambda s: s.memory_bytes)
    fitting = [s for s in choices if s.memory_bytes <= budget_bytes]
    return min(fitting, key=lambda s: s.memory_bytes) if fitting else None


def find(repo_id: str, choices: Sequence[Suggestion] = TOOL_USE_MODELS) -> Suggestion | None:
    """The listed suggestion for a repo id (what a page sends back), or None."""
    return next((s for s in choices if s.repo_id == repo_id), None)

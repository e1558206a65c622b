"""The machine's memory budget for a model, and whether a model fits in it."""

from __future__ import annotations

import enum
import platform
from dataclasses import dataclass

import psutil

from manager.models.capabilities.result import Capabilities

#: Context assumed by `fit()` when the caller gives none: the model's own context
#: length, capped here. 8K tokens is a long chat; sizing every model for its full
#: 128K (or 10M) window would mark nearly everything "too big".
DEFAULT_FIT_CONTEXT_TOKENS = 8192

#: Weights are multiplied by this (percent) for activations, buffers and the runtime.
WEIGHTS_OVERHEAD_PERCENT = 105

#: Amber band: needed above this percent of the budget (and up to 100 %) is TIGHT;
#: at or below it is FITS; above 100 % is TOO_BIG.
TIGHT_ABOVE_PERCENT = 80

#: Share of total RAM that MLX can wire on Apple Silicon (unified memory): macOS's
#: recommended GPU working set is about three quarters of RAM.
APPLE_SILICON_BUDGET_PERCENT = 75


class FitLevel(enum.Enum):
    """How a model fits in memory (the dashboard gives each level a colour)."""

    FITS = "fits"
    TIGHT = "tight"
    TOO_BIG = "too_big"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Fit:
    """Whether a model fits in the memory budget. needed_bytes is None when unknown."""

    level: FitLevel
    needed_bytes: int | None
    budget_bytes: int
    weights_bytes: int | None = None
    kv_bytes: int | None = None
    context_tokens: int | None = None


def is_apple_silicon() -> bool:
    """True on macOS on an arm64 Mac, where MLX uses unified memory and Metal."""
    return platform.system() == "Darwin" and platform.machine().startswith("arm64")


def memory_budget_bytes(
    total: int | None = None,
    available: int | None = None,
    *,
    apple_silicon: bool | None = None,
) -> int:
    """Bytes a model may use: 75 % of total RAM on Apple Silicon, available RAM elsewhere.

    On Apple Silicon the GPU shares RAM with the system and MLX may wire about three
    quarters of it, whatever other apps hold now (macOS pages them out). Elsewhere
    MLX runs on the CPU (or CUDA) and only the free RAM is safe. Missing figures are
    read from psutil, the platform from `platform`.
    """
    if apple_silicon is None:
        apple_silicon = is_apple_silicon()
    if apple_silicon:
        if total is None:
            total = int(psutil.virtual_memory().total)
        return max(0, total) * APPLE_SILICON_BUDGET_PERCENT // 100
    if available is None:
        available = int(psutil.virtual_memory().available)
    return max(0, available)


def fit(caps: Capabilities, context_tokens: int | None, budget_bytes: int) -> Fit:
    """Does the model fit? needed = weights x 1.05 + KV cache at `context_tokens`.

    `context_tokens` None means the model's context length capped at
    DEFAULT_FIT_CONTEXT_TOKENS. Levels: needed <= 80 % of the budget FITS, up to
    100 % TIGHT, above TOO_BIG; unknown weights, KV size or budget give UNKNOWN
    (except when the weights alone are already too big).
    """
    if context_tokens is None:
        known = caps.context_length
        ctx = min(known, DEFAULT_FIT_CONTEXT_TOKENS) if known else DEFAULT_FIT_CONTEXT_TOKENS
    else:
        ctx = max(0, context_tokens)
    weights = caps.weights_bytes
    if weights is None or budget_bytes <= 0:
        return Fit(FitLevel.UNKNOWN, None, budget_bytes, weights, None, ctx)
    weights_needed = -(-weights * WEIGHTS_OVERHEAD_PERCENT // 100)  # ceiling
    if ctx == 0:
        kv: int | None = 0
    elif caps.kv_bytes_per_token is None:
        kv = None
    else:
        kv = caps.kv_bytes_per_token * ctx
    if kv is None:
        if weights_needed > budget_bytes:
            return Fit(FitLevel.TOO_BIG, weights_needed, budget_bytes, weights, None, ctx)
        return Fit(FitLevel.UNKNOWN, None, budget_bytes, weights, None, ctx)
    needed = weights_needed + kv
    if needed * 100 <= budget_bytes * TIGHT_ABOVE_PERCENT:
        level = FitLevel.FITS
    elif needed <= budget_bytes:
        level = FitLevel.TIGHT
    else:
        level = FitLevel.TOO_BIG
    return Fit(level, needed, budget_bytes, weights, kv, ctx)

"""The memory budget and the fit of a model in it (capabilities.memory)."""

from __future__ import annotations

import pytest

from manager.models.capabilities import (
    DEFAULT_FIT_CONTEXT_TOKENS,
    Capabilities,
    FitLevel,
    fit,
    from_files,
    memory_budget_bytes,
)
from manager.models.capabilities import memory as memmod
from tests.capability_samples import QWEN3_06B_4BIT

GIB = 1024**3


# --- memory fit ---------------------------------------------------------------------------


def sized(weights: int | None, kv_per_token: int | None = 1,
          context_length: int | None = 100_000) -> Capabilities:
    return Capabilities(weights_bytes=weights, kv_bytes_per_token=kv_per_token,
                        context_length=context_length)


@pytest.mark.parametrize(
    ("needed", "level"),
    [
        (1050, FitLevel.FITS),
        (8000, FitLevel.FITS),  # exactly 80 % of the budget
        (8001, FitLevel.TIGHT),
        (10_000, FitLevel.TIGHT),  # exactly the budget
        (10_001, FitLevel.TOO_BIG),
    ],
)
def test_fit_band_edges(needed: int, level: FitLevel) -> None:
    # weights 1000 -> 1050 with overhead; the KV cache (1 byte/token) makes up the rest
    result = fit(sized(1000), needed - 1050, 10_000)
    assert result.needed_bytes == needed
    assert result.level is level
    assert result.budget_bytes == 10_000


@pytest.mark.parametrize(
    ("caps", "budget", "level", "needed"),
    [
        (sized(None), 10 * GIB, FitLevel.UNKNOWN, None),
        (sized(1000), 0, FitLevel.UNKNOWN, None),
        (sized(1000, kv_per_token=None), 10 * GIB, FitLevel.UNKNOWN, None),
        # the weights alone are too big: no need to know the KV cache
        (sized(20 * GIB, kv_per_token=None), 10 * GIB, FitLevel.TOO_BIG, 21 * GIB),
    ],
)
def test_fit_unknowns(caps: Capabilities, budget: int, level: FitLevel,
                      needed: int | None) -> None:
    result = fit(caps, None, budget)
    assert result.level is level
    assert result.needed_bytes == needed


@pytest.mark.parametrize(
    ("context_length", "context_tokens", "used"),
    [
        (131072, None, DEFAULT_FIT_CONTEXT_TOKENS),
        (2048, None, 2048),
        (None, None, DEFAULT_FIT_CONTEXT_TOKENS),
        (131072, 100_000, 100_000),
        (4096, 0, 0),
    ],
)
def test_fit_context(context_length: int | None, context_tokens: int | None, used: int) -> None:
    caps = sized(1000, kv_per_token=10, context_length=context_length)
    result = fit(caps, context_tokens, 100 * GIB)
    assert result.context_tokens == used
    assert result.kv_bytes == used * 10
    assert result.needed_bytes == 1050 + used * 10


def test_fit_real_model() -> None:
    caps = from_files(QWEN3_06B_4BIT, None, files={"model.safetensors": 335 * 1024**2})
    result = fit(caps, None, 12 * GIB)
    assert result.level is FitLevel.FITS
    assert result.context_tokens == DEFAULT_FIT_CONTEXT_TOKENS
    assert result.kv_bytes == 114688 * DEFAULT_FIT_CONTEXT_TOKENS
    assert result.needed_bytes == -(-335 * 1024**2 * 105 // 100) + result.kv_bytes


@pytest.mark.parametrize(
    ("total", "available", "apple", "budget"),
    [
        (16 * GIB, 3 * GIB, True, 12 * GIB),  # unified memory: 75 % of all RAM
        (64 * GIB, 1 * GIB, True, 48 * GIB),
        (16 * GIB, 3 * GIB, False, 3 * GIB),  # elsewhere: what is free now
        (None, 5 * GIB, False, 5 * GIB),  # total not needed off Apple Silicon
        (8 * GIB, None, True, 6 * GIB),  # available not needed on Apple Silicon
    ],
)
def test_memory_budget_branches(total: int | None, available: int | None, apple: bool,
                                budget: int) -> None:
    assert memory_budget_bytes(total, available, apple_silicon=apple) == budget


def test_memory_budget_reads_this_machine() -> None:
    budget = memory_budget_bytes()
    assert budget > 0
    apple_budget = memory_budget_bytes(apple_silicon=True)
    assert 0 < apple_budget < memmod.psutil.virtual_memory().total


def test_memory_budget_detects_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    # Apple hardware cannot exist here: only the platform answers are stood in
    monkeypatch.setattr(memmod.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(memmod.platform, "machine", lambda: "arm64")
    assert memmod.is_apple_silicon()
    assert memory_budget_bytes(32 * GIB, 1 * GIB) == 24 * GIB
    monkeypatch.setattr(memmod.platform, "machine", lambda: "x86_64")
    assert memory_budget_bytes(32 * GIB, 1 * GIB) == 1 * GIB

"""Pure pieces of the Models tab: tiles, badges and filters (table-driven)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from components.views import (
    context_label,
    download_tile_html,
    fit_color,
    fit_tooltip,
    local_tile_html,
    model_badges_html,
    remote_tile_html,
)
from manager.errors import ValidationError
from manager.models.capabilities import Capabilities, Fit, FitLevel, fit
from manager.models.download_types import DownloadStatus, DownloadView
from manager.models.filters import GB, ModelFilter
from manager.models.hub import RemoteDetails, RemoteModel
from manager.models.library import LocalModel

QWEN = Capabilities(architecture="qwen3", context_length=32768, quant_bits=4,
                    quant_group_size=64, quant_method="affine", parameter_count=600_000_000,
                    weights_bytes=350 * 1024**2, kv_bytes_per_token=4096, tool_use=True,
                    thinking=True)
VL = Capabilities(architecture="qwen2_5_vl", context_length=128000, multimodal=True, video=True,
                  dtype="bf16", weights_bytes=7 * GB, kv_bytes_per_token=8192)
GUESS = Capabilities(quant_bits=8, guessed=True, notes=("config.json not available",))


@pytest.mark.parametrize(("level", "css"), [(FitLevel.FITS, "fit-green"),
                                            (FitLevel.TIGHT, "fit-amber"),
                                            (FitLevel.TOO_BIG, "fit-red")])
def test_fit_badge_colour_and_tooltip_numbers(level: FitLevel, css: str) -> None:
    verdict = Fit(level, 400 * 1024**2, 1024**3, 350 * 1024**2, 32 * 1024**2, 8192)
    html = model_badges_html(QWEN, verdict)
    assert f"mm-chip-{css}" in html
    assert "Needs about 400.0 MB" in html and "8,192 tokens" in html


def test_fit_levels_have_colours() -> None:
    assert [fit_color(level) for level in FitLevel] == ["green", "amber", "red", "grey"]


def sized(weights: int | None, kv_per_token: int | None = 1) -> Capabilities:
    return Capabilities(weights_bytes=weights, kv_bytes_per_token=kv_per_token,
                        context_length=100_000)


@pytest.mark.parametrize(("verdict", "words"), [
    (fit(sized(GB), 0, GB), ["too big", "1.0 GB"]),
    (fit(sized(GB), 0, GB + GB // 10), ["tight", "1.1 GB usable"]),
    (fit(sized(350 * 1024**2, 4096), None, 12 * GB), ["fits", "12.0 GB", "8,192 tokens",
                                                     "KV cache 32.0 MB"]),
    (fit(sized(None), None, GB), ["Model size unknown"]),
    (fit(sized(2 * GB, None), None, GB), ["Needs more than 2.1 GB", "KV cache unknown"]),
    (fit(sized(GB, None), None, 2 * GB), ["KV cache size for 8,192 tokens unknown"]),
    (fit(sized(GB), None, 0), ["memory budget unknown"]),
])
def test_fit_tooltip_says_what_the_estimate_adds_up(verdict: Fit, words: list[str]) -> None:
    tip = fit_tooltip(verdict)
    for word in words:
        assert word in tip, tip


def test_badges_show_every_capability_and_the_guessed_marker() -> None:
    html = model_badges_html(QWEN, None)
    for label in ("qwen3", "32K ctx", "tools", "thinking", "4-bit", "600M"):
        assert label in html
    assert "vision" not in html and "mm-chip-guessed" not in html
    # Tool use and thinking read from the template are labelled as guesses.
    assert "tools · guessed" in html and "thinking · guessed" in html
    # Each size says what it is (issue 15: "99.6K · 67.3 KB" next to "82.1 KB").
    assert "600M params · 350.0 MB weights" in html
    vl = model_badges_html(VL, None)
    assert "vision" in vl and "video" in vl and "bf16" in vl and "128K ctx" in vl
    guessed = model_badges_html(GUESS, None)
    assert "mm-chip-guessed" in guessed and "config.json not available" in guessed
    assert "arch n/a" in guessed and "n/a ctx" in guessed


def test_only_download_tiles_have_progress_bars() -> None:
    model = RemoteModel("mlx-community/x", downloads=None, likes=3,
                        last_modified=datetime(2025, 5, 1, tzinfo=timezone.utc))
    remote = remote_tile_html(model, RemoteDetails("mlx-community/x", QWEN, 1024), None)
    local = local_tile_html(LocalModel("org/x", Path("/m/x"), "hf_cache", 2048, QWEN, True, 0.0),
                            None, can_delete=True)
    running = DownloadView(3, "org/y", DownloadStatus.RUNNING, 512, 2048, 256.0, 6.0)
    tile = download_tile_html(running, can_control=True)
    assert "mm-progress" not in remote and "mm-progress" not in local
    assert "width:25.0%" in tile and "512 B / 2.0 KB" in tile and "256 B/s" in tile
    assert "ETA 6 s" in tile
    assert "data-action='pause'" in tile and "data-action='resume'" not in tile
    assert "⬇ n/a" in remote and "updated 2025-05-01" in remote  # unknown is n/a, never 0
    assert "data-action='download'" in remote and "data-action='delete'" in local


def test_failed_download_offers_resume_and_shows_the_error() -> None:
    failed = DownloadView(4, "org/y", DownloadStatus.FAILED, 100, None, error="Lost <conn>")
    tile = download_tile_html(failed, can_control=True)
    assert "data-action='resume'" in tile and "data-action='pause'" not in tile
    assert "Lost &lt;conn&gt;" in tile and "n/a" in tile
    assert "data-action" not in download_tile_html(failed, can_control=False)


def test_blocked_and_local_tiles() -> None:
    details = RemoteDetails("a/b", GUESS, None, problem="No MLX weights", downloadable=False)
    tile = remote_tile_html(RemoteModel("a/b"), details, None)
    assert "No MLX weights" in tile and "disabled" in tile
    assert "On my machine" in remote_tile_html(RemoteModel("a/b"), None, None, on_machine=True)
    incomplete = LocalModel("o/n", Path("/m"), "hf_cache", None, GUESS, False, 0.0)
    html = local_tile_html(incomplete, None, can_delete=False)
    assert "Incomplete, not usable" in html and "data-action='delete'" not in html


@pytest.mark.parametrize(("tokens", "label"), [(None, "n/a"), (4096, "4K"), (131072, "128K"),
                                               (128000, "128K"), (40960, "40K"), (1500, "1,500")])
def test_context_label(tokens: int | None, label: str) -> None:
    assert context_label(tokens) == label


BUDGET = 16 * GB


@pytest.mark.parametrize(("filt", "qwen", "vl"), [
    (ModelFilter(), True, True),
    (ModelFilter(text="QWEN3"), True, False),
    (ModelFilter(architecture="qwen2_5_vl"), False, True),
    (ModelFilter(multimodal=True), False, True),
    (ModelFilter(video=True), False, True),
    (ModelFilter(tool_use=True), True, False),
    (ModelFilter(thinking=True), True, False),
    (ModelFilter(bits=4), True, False),
    (ModelFilter(bits=16), False, True),
    (ModelFilter(min_gb=1), False, True),
    (ModelFilter(max_gb=1), True, False),
    (ModelFilter(min_gb=0.1, max_gb=10), True, True),
    (ModelFilter(fits="fits"), True, False),  # 7 GB + KV of 16 GB is above 80 %: amber
    (ModelFilter(fits="fits_or_tight"), True, True),
])
def test_filters(filt: ModelFilter, qwen: bool, vl: bool) -> None:
    assert filt.matches("mlx-community/qwen3-0.6b", QWEN, fit(QWEN, None, BUDGET)) is qwen
    vl_fit = fit(VL, None, 9 * GB)
    assert filt.matches("mlx-community/vl-7b", VL, vl_fit) is vl


def test_unknown_size_or_fit_never_passes_a_size_or_fit_filter() -> None:
    assert not ModelFilter(max_gb=100).matches("x", GUESS, None)
    assert ModelFilter(max_gb=100).matches("x", GUESS, None, size_bytes=10)
    assert not ModelFilter(fits="fits_or_tight").matches("x", GUESS, fit(GUESS, None, BUDGET))


def test_zero_in_the_size_boxes_means_no_bound() -> None:
    from components.models_tab import build_filter

    open_range = build_filter("", "", False, False, False, False, "any", 0, 0, "any")
    assert (open_range.min_gb, open_range.max_gb) == (None, None)
    only_min = build_filter("", "", False, False, False, False, "any", 2, 0, "any")
    assert (only_min.min_gb, only_min.max_gb) == (2.0, None)
    with pytest.raises(ValidationError, match="min is above max"):
        build_filter("", "", False, False, False, False, "any", 5, 1, "any")


def test_tile_sizes_say_what_they_measure() -> None:
    remote = remote_tile_html(RemoteModel("mlx-community/q"),
                              RemoteDetails("mlx-community/q", QWEN, 82 * 1024), None)
    assert "82.0 KB download" in remote

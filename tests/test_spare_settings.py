"""The warm spare's setting (flag, environment, the Admin tab's saved choice) and its
line on the Servers tab; no process is started here."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.views import spare_line_html
from manager.cli.main import build_parser, settings_from_args
from manager.errors import ValidationError
from manager.saved_settings import SavedSettings
from manager.servers.profiles import Backend
from manager.servers.spare import SpareView
from manager.services import WARM_SPARE, spare_pool
from manager.settings import Settings
from manager.store import Store


def test_the_flag_and_the_environment_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    monkeypatch.delenv("MLX_MANAGER_WARM_SPARE", raising=False)
    assert settings_from_args(parse([])).warm_spare is None  # not set: saved choice, else on
    assert settings_from_args(parse(["--no-warm-spare"])).warm_spare is False
    assert settings_from_args(parse(["serve", "--warm-spare"])).warm_spare is True
    monkeypatch.setenv("MLX_MANAGER_WARM_SPARE", "off")
    assert settings_from_args(parse([])).warm_spare is False
    assert settings_from_args(parse(["--warm-spare"])).warm_spare is True  # the flag wins
    monkeypatch.setenv("MLX_MANAGER_WARM_SPARE", "maybe")
    with pytest.raises(ValidationError, match="MLX_MANAGER_WARM_SPARE must be 1 or 0"):
        settings_from_args(parse([]))


def test_a_flag_wins_over_the_saved_choice_which_wins_over_the_default(tmp_path: Path) -> None:
    store = Store(tmp_path / "manager.db")
    hub, logs = tmp_path / "hub", tmp_path / "logs"
    fresh = spare_pool(Settings(data_dir=tmp_path), store, hub)
    assert fresh.enabled and not fresh.pinned_by
    SavedSettings(store).set_bool(WARM_SPARE, False)
    saved = spare_pool(Settings(data_dir=tmp_path), store, hub)
    assert not saved.enabled and not saved.pinned_by
    pinned = spare_pool(Settings(data_dir=tmp_path, warm_spare=True), store, hub)
    assert pinned.enabled and "MLX_MANAGER_WARM_SPARE" in pinned.pinned_by
    pinned.switch(None, False)  # the manager itself may; it is saved for later runs
    assert SavedSettings(store).get_bool(WARM_SPARE) is False
    assert not logs.exists()  # a pool that was never started spawns nothing


def test_the_servers_tab_line_shows_each_spare_and_its_memory() -> None:
    assert "off" in spare_line_html([], enabled=False)
    assert "none yet" in spare_line_html([], enabled=True)
    line = spare_line_html([
        SpareView(Backend.MLX_LM, 4242, True, 83 * 1024 * 1024),
        SpareView(Backend.MLX_VLM, 4343, False, None),
    ], enabled=True)
    assert "mlx_lm ready (pid 4242, memory 83" in line
    assert "mlx_vlm importing (pid 4343, memory n/a)" in line
    broken = spare_line_html([SpareView(Backend.MLX_VLM, None, False, None,
                                        "exited <b>3 times</b>")], enabled=True)
    assert "mlx_vlm: not available (exited &lt;b&gt;3 times&lt;/b&gt;)" in broken


def test_a_change_of_the_spares_moves_what_the_servers_tab_waits_on(tmp_path: Path) -> None:
    from manager.changes import Changes, Topic

    changes = Changes()
    pool = spare_pool(Settings(data_dir=tmp_path), Store(tmp_path / "manager.db"),
                      tmp_path / "hub", changes.notifier(Topic.SAMPLES))
    before = changes.versions()
    pool.switch(None, False)
    assert Topic.SAMPLES in changes.versions().moved(before)

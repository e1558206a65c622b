"""The Models tab in headless Chromium against a live dashboard and the local hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import constants

from manager.models.download_types import DownloadStatus
from manager.net import free_port
from manager.settings import Settings
from tests.conftest import LiveDashboard
from tests.fixtures.local_hub import LocalHub
from tests.test_browser_accounts import register

pytestmark = [pytest.mark.slow, pytest.mark.browser]

VL = "mlx-community/tiny-qwen2-vl"


@pytest.fixture
def settings(tmp_path: Path, hub: LocalHub, hf_home: Path) -> Settings:
    """The dashboard's services talk to the local hub and a throwaway HF cache."""
    return Settings(data_dir=tmp_path / "data", port=free_port(), hf_endpoint=hub.url,
                    warm_spare=False,
                    hf_cache_dir=hf_home / "hub")


def test_search_download_and_see_it_land_on_my_machine(
        dashboard: LiveDashboard, browser, hub: LocalHub,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    context = browser.new_context()
    page = context.new_page()
    try:
        register(page, dashboard.url, "admin@example.com")
        page.wait_for_selector("#current-user", timeout=30_000)
        page.wait_for_selector("#models-list .mm-empty")  # nothing on this machine yet

        page.get_by_role("radio", name="Hugging Face").check()
        tile = page.locator(f"#models-list .mm-tile[data-repo='{VL}']")
        tile.wait_for(timeout=30_000)
        assert page.locator("#models-list .mm-tile").count() == 6
        assert "vision" in tile.inner_text() and "video" in tile.inner_text()
        assert page.locator("#models-list .mm-progress").count() == 0  # MODELS-03

        hub.throttle_bytes_per_sec = 150_000  # slow enough to watch the progress move
        tile.locator("button[data-action='download']").click()
        download = page.locator(f"#models-downloads .mm-download[data-repo='{VL}']")
        download.wait_for(timeout=15_000)
        tile.wait_for(state="detached", timeout=15_000)  # the ordinary tile is gone
        assert download.locator(".mm-progress-bar").count() == 1
        page.wait_for_function(
            "() => { const t = document.querySelector('#models-downloads .mm-dl-bytes');"
            " return t && !t.textContent.startsWith('0 B'); }", timeout=20_000)
        assert download.locator("button[data-action='pause']").is_visible()
        assert page.locator("#models-list .mm-progress").count() == 0

        [view] = dashboard.services.downloads.snapshot()
        hub.throttle_bytes_per_sec = None
        assert dashboard.services.downloads.wait(view.id, 60).status is DownloadStatus.DONE
        download.wait_for(state="detached", timeout=15_000)

        # Back in the Hugging Face list, the tile says it is already here.
        here = page.locator(f"#models-list .mm-tile[data-repo='{VL}'] button[data-action='noop']")
        here.wait_for(timeout=15_000)
        page.get_by_role("radio", name="On my machine").check()
        # The local tile is the one with Delete (the HF tile has none).
        delete = page.locator(f"#models-list .mm-tile[data-repo='{VL}'] "
                              "button[data-action='delete']")
        delete.wait_for(timeout=15_000)
        landed = page.locator(f"#models-list .mm-tile[data-repo='{VL}']")
        assert "vision" in landed.inner_text() and "HF cache" in landed.inner_text()
    finally:
        context.close()

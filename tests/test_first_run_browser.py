"""The first-run path in headless Chromium (issue 15): a fresh dashboard says on each tab
what to do next, and one click on "Try a tool-use model" downloads the suggested model
from the local hub, makes its profile, starts it and opens a chat with tools on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from manager.api.login import SESSION_COOKIE
from manager.models.recommended import TOOL_USE_MODELS
from manager.net import free_port
from manager.servers.logs import read_tail
from manager.services import Services
from manager.settings import Settings
from tests.conftest import TEST_HASHER, LiveDashboard, run_uvicorn
from tests.fixtures.local_hub import LocalHub

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ADA = "ada@example.com"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory, local_hub: LocalHub,
          tiny_models: dict[str, Path]) -> Iterator[LiveDashboard]:
    """A dashboard with nothing on it yet; the local hub serves the scripted tool-use model
    under every listed name (which one is suggested depends on this machine's memory)."""
    root = tmp_path_factory.mktemp("first_run")
    for suggestion in TOOL_USE_MODELS:
        local_hub.add_repo(suggestion.repo_id, tiny_models["tools"])
    settings = Settings(data_dir=root / "data", port=free_port(), hf_endpoint=local_hub.url,
                        hf_cache_dir=root / "hf" / "hub")
    services = Services.create(settings, hasher=TEST_HASHER)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        from app import create_app

        server, thread = run_uvicorn(create_app(services), settings.port)
        yield LiveDashboard(f"http://127.0.0.1:{settings.port}", services)
    finally:
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=15)
        services.close()
        local_hub.reset()


def test_each_tab_says_what_to_do_and_one_click_ends_in_a_chat_with_tools(
        fresh: LiveDashboard, browser) -> None:  # noqa: ANN001 - a Playwright Browser
    fresh.register(ADA)  # the first account: an admin, signed in
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": SESSION_COOKIE, "url": fresh.url,
                          "value": fresh.session_cookie(ADA)}])
    page = context.new_page()
    try:
        page.goto(fresh.url + "/")
        intro = page.wait_for_selector("#first-run-intro:has-text('New here?')",
                                       timeout=60_000).inner_text()
        assert any(s.label in intro for s in TOOL_USE_MODELS), intro
        page.wait_for_selector("#models-list:has-text('No models on this machine yet')")
        page.get_by_role("tab", name="Profiles").click()
        page.wait_for_selector("#profile-status:has-text('no downloaded models')")
        page.get_by_role("tab", name="Servers").click()
        page.wait_for_selector("#server-tiles:has-text('No profiles yet')")
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_selector("#chat-server-status:has-text('No servers to chat with yet')")

        page.click("#first-run-try")
        # The flow's lines, then the Chat tab on the new chat with tools on (or a ⚠ line).
        try:
            page.wait_for_selector("#chat-server-status:has-text('is ready'), "
                                   "#first-run-progress:has-text('⚠')", timeout=120_000)
        except PlaywrightTimeout as exc:
            raise AssertionError(where_the_flow_is(page, fresh.services)) from exc
        lines = page.inner_text("#first-run-progress")
        assert "⚠" not in lines, where_the_flow_is(page, fresh.services)
        assert "Downloaded " in lines and "is ready on port" in lines, lines
        assert "Chat open on" in lines and "with tools on" in lines, lines
        (profile,) = fresh.services.profiles.list()
        assert profile.model in {s.repo_id for s in TOOL_USE_MODELS}
        (chat,) = fresh.services.chats.list(fresh.services.auth.get_by_email(ADA))
        assert chat.profile_id == profile.id

        # Tools are on (a question's tool call through them is test_chat_browser's part).
        page.click("#chat-options button")
        assert page.is_checked("#chat-tools input")
    finally:
        context.close()


def where_the_flow_is(page: Page, services: Services) -> str:
    """The flow's lines, each server's state and its log's tail: what a failure needs."""
    parts = [f"progress:\n{page.inner_text('#first-run-progress')}"]
    for snap in services.supervisor.snapshots():
        parts.append(f"{snap.profile.name}: {snap.state.value} {snap.reason or ''}\n"
                     f"{read_tail(snap.log_path, lines=30)}")
    return "\n".join(parts)

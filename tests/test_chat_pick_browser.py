"""The Chat tab's server picker in headless Chromium: it cannot be used before the page
load filled it, since the load's answer would then replace the pick with its own choice
(the most recent chat's server, or the first Ready one)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from manager.api.login import SESSION_COOKIE
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from tests.conftest import LiveDashboard

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PICKER = "#chat-server input"


def signed_in_context(browser, dashboard: LiveDashboard):  # noqa: ANN001, ANN201
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    context.add_cookies([{"name": SESSION_COOKIE, "url": dashboard.url,
                          "value": dashboard.session_cookie("admin@example.com")}])
    return context


def open_page(context, dashboard: LiveDashboard):  # noqa: ANN001, ANN201
    page = context.new_page()
    page.goto(dashboard.url + "/")
    page.wait_for_selector("#mm-header")
    return page


def pick_later(page) -> None:  # noqa: ANN001
    page.wait_for_selector(f"{PICKER}:not([disabled])", timeout=30_000)
    page.locator(PICKER).click()
    page.get_by_role("option", name="Later", exact=False).wait_for(timeout=30_000)


@pytest.fixture
def dashboard_with_a_profile(dashboard: LiveDashboard, tiny_models: dict[str, Path]
                             ) -> LiveDashboard:
    """An admin, and a stopped profile named Later for the picker to offer."""
    dashboard.register("admin@example.com")
    dashboard.services.profiles.create(None, ProfileSpec(
        name="Later", model=str(tiny_models["text"]), port=free_port()))
    return dashboard


def test_the_picker_waits_for_the_page_load(
        dashboard_with_a_profile: LiveDashboard, browser,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = dashboard_with_a_profile
    services = dashboard.services
    # The Chat tab's part of the page load reads the user's chats first: held there.
    loading, go_on = threading.Event(), threading.Event()
    listed: Callable[..., Any] = services.chats.list

    def held_list(*args: Any, **kwargs: Any) -> Any:
        loading.set()
        go_on.wait(60)
        return listed(*args, **kwargs)

    monkeypatch.setattr(services.chats, "list", held_list)
    context = signed_in_context(browser, dashboard)
    try:
        page = open_page(context, dashboard)
        assert loading.wait(60), "the page load never read the chats"
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_selector(PICKER, state="attached")
        assert page.locator(PICKER).is_disabled()  # the load has not answered yet
        go_on.set()
        pick_later(page)
    finally:
        go_on.set()
        context.close()


def test_the_picker_is_usable_after_a_failed_chat_tab_load(
        dashboard_with_a_profile: LiveDashboard, browser,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = dashboard_with_a_profile
    services = dashboard.services

    def unreadable(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("the chats could not be read")

    monkeypatch.setattr(services.chats, "list", unreadable)
    context = signed_in_context(browser, dashboard)
    try:
        page = open_page(context, dashboard)
        page.get_by_role("tab", name="Chat").click()
        pick_later(page)
    finally:
        context.close()

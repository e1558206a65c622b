"""The Chat tab's pickers in headless Chromium. The server picker cannot be used before the page
load filled it, since the load's answer would then replace the pick with its own choice
(the most recent chat's server, or the first Ready one); the history filter's own answers
keep what the person picked."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from manager.api.login import SESSION_COOKIE
from manager.chat.history import NewMessage
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from tests.chat_helpers import texts_shown, watch_texts
from tests.conftest import LiveDashboard
from tests.waits import wait_for

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


FILTER = "#chat-history-server input"


class HeldChoices:
    """The history filter's choices, read when the filter gets the focus: once `holding`
    is set, the first read waits for `release()`; reads after that wait for `ended`."""

    def __init__(self, read: Callable[..., Any]) -> None:
        self._read = read
        self.holding, self.held, self.released = (threading.Event(), threading.Event(),
                                                  threading.Event())
        self.later, self.ended = threading.Event(), threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.later.is_set():
            self.ended.wait(60)
        elif self.holding.is_set():
            self.held.set()
            self.released.wait(60)
        return self._read(*args, **kwargs)

    def release(self) -> None:
        self.later.set()
        self.released.set()


def test_a_late_answer_to_the_filters_focus_keeps_the_persons_pick(
        dashboard: LiveDashboard, tiny_models: dict[str, Path], browser,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The filter reads its choices afresh on focus. That answer carried the value the
    filter had at the focus, so when it landed after the person picked another server, it
    put the old one back (CI: a chat deleted in the browser was still in the database,
    since the late answer's list, not the delete's, was what the test saw)."""
    dashboard.register("admin@example.com")
    services = dashboard.services
    admin = services.auth.get_by_email("admin@example.com")

    def chat_with(name: str) -> None:
        profile = services.profiles.create(None, ProfileSpec(
            name=name, model=str(tiny_models["text"]), port=free_port()))
        services.chats.create(admin, name, title=f"About {name}", profile_id=profile.id)

    chat_with("eyes")
    chat_with("weather")
    choices = HeldChoices(services.chats.servers)
    monkeypatch.setattr(services.chats, "servers", choices)
    weather_chat = "#chat-list button[data-chat]:has-text('About weather')"
    context = signed_in_context(browser, dashboard)
    try:
        page = open_page(context, dashboard)
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_selector(weather_chat)
        page.locator(FILTER).click()
        page.get_by_role("option", name="eyes (1)").click()
        page.wait_for_selector(weather_chat, state="detached")

        choices.holding.set()
        page.locator(FILTER).click()
        assert choices.held.wait(60), "the filter's focus never read its choices"
        page.get_by_role("option", name="All servers").click()
        page.wait_for_selector(weather_chat)
        chat_with("later")  # so the held answer's own choices show when it has landed
        choices.release()
        page.locator(FILTER).press("ArrowDown")  # opens the options; its focus read waits
        page.get_by_role("option", name="later (1)").wait_for(timeout=30_000)
        # A focused box shows what is typed in it; away from it, the value's label.
        page.locator(FILTER).press("Escape")
        page.locator(FILTER).blur()
        assert page.input_value(FILTER) == "All servers"
    finally:
        choices.ended.set()
        choices.released.set()
        context.close()


def test_a_status_tick_that_lands_after_another_pick_keeps_that_pick(
        dashboard_with_a_profile: LiveDashboard, tiny_models: dict[str, Path],
        browser, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A picked server that is starting is polled for its state. A poll that set out
    before the person picked another server, and landed after, put the first one back in
    the picker (the next message went to the server they had left); then it drew the
    first server's status line and, that server being ready, stopped the polling, so the
    line said "Later is ready" while Other started."""
    dashboard = dashboard_with_a_profile
    services = dashboard.services
    services.profiles.create(None, ProfileSpec(
        name="Other", model=str(tiny_models["text"]), port=free_port()))
    later = services.profiles.find("Later")
    from components.chat import picking

    state_of: Callable[..., Any] = picking.server_state
    holding, held, released = threading.Event(), threading.Event(), threading.Event()

    def held_state(*args: Any, **kwargs: Any) -> Any:
        if holding.is_set() and not held.is_set():  # the first look after holding: a poll
            held.set()
            released.wait(60)
        return state_of(*args, **kwargs)

    status_of: Callable[..., Any] = picking.status_markdown
    answered = threading.Event()

    def watched_status(services_: Any, profile: Any, *args: Any, **kwargs: Any) -> Any:
        line = status_of(services_, profile, *args, **kwargs)
        if released.is_set() and profile is not None and profile.id == later.id:
            answered.set()  # the held poll's answer is made (only it asks about Later now)
        return line

    monkeypatch.setattr(picking, "server_state", held_state)
    monkeypatch.setattr(picking, "status_markdown", watched_status)
    context = signed_in_context(browser, dashboard)
    try:
        page = open_page(context, dashboard)
        page.get_by_role("tab", name="Chat").click()
        pick_later(page)
        page.get_by_role("option", name="Later", exact=False).click()
        page.wait_for_selector("#chat-server-status:has-text('Started Later for you')",
                               timeout=30_000)
        holding.set()  # Later is starting, so its status is polled: the next poll waits
        assert held.wait(60), "the status of the starting server was never polled"
        # The poll answers with the picker only once the server is no longer starting.
        services.supervisor.wait_ready(later.id, 120)
        page.locator(PICKER).click()
        page.get_by_role("option", name="Other", exact=False).click()
        page.wait_for_selector("#chat-server-status:has-text('Started Other for you')",
                               timeout=30_000)
        watch_texts(page, "#chat-server-status")
        released.set()
        assert answered.wait(60), "the held poll never answered"
        # The search is answered after the poll, whose answer was made before the search
        # was typed: by then the poll's drawing, if it drew, is on the page. (Typed key by
        # key: the box's input event did not fire for Playwright's fill.)
        page.locator("#chat-search textarea, #chat-search input").press_sequentially("zz")
        page.wait_for_selector("#chat-list :text('No chats match')", timeout=30_000)
        assert page.input_value(PICKER).startswith("Other")
        lines = texts_shown(page, "#chat-server-status")
        assert lines and not any("Later" in line for line in lines), lines
        assert "Other" in page.locator("#chat-server-status").inner_text()
    finally:
        released.set()
        context.close()


def test_a_chat_opened_while_a_message_waits_for_its_server_stays_shown(
        dashboard_with_a_profile: LiveDashboard, browser,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A message to a stopped server waits for the server's start (seconds). A chat the
    person opened meanwhile was replaced by the new, empty one once the start returned,
    and the answer never showed there either: the turn knew another chat was open."""
    dashboard = dashboard_with_a_profile
    services = dashboard.services
    admin = services.auth.get_by_email("admin@example.com")
    later = services.profiles.find("Later")
    earlier = services.chats.create(admin, "Later", title="Earlier chat", profile_id=later.id)
    services.chats.add_message(admin, earlier.id, NewMessage("user", "Old question"))
    start: Callable[..., Any] = services.placement.start
    starting, go_on = threading.Event(), threading.Event()

    def held_start(*args: Any, **kwargs: Any) -> Any:
        starting.set()
        go_on.wait(60)
        return start(*args, **kwargs)

    monkeypatch.setattr(services.placement, "start", held_start)
    bot = "#chat-bot"
    context = signed_in_context(browser, dashboard)
    try:
        page = open_page(context, dashboard)
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_selector(f"{bot} :text('Old question')", timeout=30_000)  # the latest
        page.click("#chat-new")
        page.wait_for_selector(f"{bot} :text('Old question')", state="detached",
                               timeout=30_000)
        page.fill("#chat-input textarea", "New question")
        page.press("#chat-input textarea", "Enter")
        assert starting.wait(60), "the message never started its server"
        page.click("#chat-list button[data-chat]:has-text('Earlier chat')")
        page.wait_for_selector(f"{bot} :text('Old question')", timeout=30_000)
        go_on.set()
        new = wait_for(lambda: next((c for c in services.chats.list(admin)
                                     if c.id != earlier.id), None), 60, "the new chat")
        wait_for(lambda: [m.role for m in services.chats.get(admin, new.id).messages]
                 == ["user", "assistant"], 120, "the answer saved")
        # The turn's last update lists the chat, named after its message, with its answer.
        page.wait_for_selector("#chat-list button[data-chat]:has-text('New question')"
                               ":has-text('2 messages')", timeout=30_000)
        assert page.locator(f"{bot} :text('Old question')").count() == 1
        assert page.locator(f"{bot} :text('New question')").count() == 0
        page.click("#chat-list button[data-chat]:has-text('New question')")
        page.wait_for_selector(f"{bot} :text('New question')", timeout=30_000)
    finally:
        go_on.set()
        context.close()


def test_a_server_name_typed_into_the_picker_gets_its_status_line(
        dashboard_with_a_profile: LiveDashboard, tiny_models: dict[str, Path],
        browser) -> None:  # noqa: ANN001
    """The picker takes a typed name (no option picked: no `select`). The status line
    follows the page's recorded pick, so it must learn of that name, or it would keep
    skipping the typed server's news."""
    dashboard = dashboard_with_a_profile
    services = dashboard.services
    other = services.profiles.create(None, ProfileSpec(
        name="Other", model=str(tiny_models["text"]), port=free_port()))
    admin = services.auth.get_by_email("admin@example.com")
    context = signed_in_context(browser, dashboard)
    try:
        page = open_page(context, dashboard)
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_selector(f"{PICKER}:not([disabled])", timeout=30_000)
        page.locator(PICKER).fill("Other")
        page.locator(PICKER).press("Tab")
        assert page.input_value(PICKER) == "Other"
        services.placement.start(admin, other.id)
        page.wait_for_selector("#chat-server-status:has-text('Other is ready')",
                               timeout=120_000)
    finally:
        context.close()

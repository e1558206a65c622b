"""The Chat tab in headless Chromium against real model servers: drop an image, see it;
thinking collapses when done; a tool call is its own panel; reload, continue, delete."""

from __future__ import annotations

import base64
import io
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from manager.accounts.auth import User
from manager.api.login import SESSION_COOKIE
from manager.chat.events import ChatEvent, ChatEventKind
from manager.chat.history import ChatSummary, NewMessage
from manager.errors import ValidationError
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from tests.chat_helpers import ChatDashboard, chat_dashboard, texts_shown, watch_texts
from tests.waits import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ALICE = "alice@example.com"
BOB = "bob@example.com"
CAROL = "carol@example.com"
DAVE = "dave@example.com"
ERIN = "erin@example.com"
FRANK = "frank@example.com"
GRACE = "grace@example.com"
HEIDI = "heidi@example.com"
# What a file dragged from the desktop does: dragenter, dragover, drop with a DataTransfer.
DROP_JS = """([selector, name, b64, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type}));
  const target = document.querySelector(selector);
  for (const kind of ['dragenter', 'dragover', 'drop']) {
    target.dispatchEvent(new DragEvent(kind, {bubbles: true, cancelable: true,
                                              dataTransfer: data}));
  }
}"""
BOT = "#chat-bot"
THOUGHT = f"{BOT} .thought-group"


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
         ) -> Iterator[ChatDashboard]:
    with chat_dashboard(tmp_path_factory.mktemp("chat_browser"), {
        "weather": ProfileSpec(name="", model=str(tiny_models["tools"])),
        "eyes": ProfileSpec(name="", model=str(tiny_models["vision"]), max_tokens=4),
        # Greedy decoding of random weights: a long answer (seconds) to stop.
        "chatter": ProfileSpec(name="", model=str(tiny_models["text"]), max_tokens=4000,
                               temperature=0.0),
    }) as created:
        created.user(ALICE)
        yield created


def png_base64(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def open_chat_tab(page) -> None:  # noqa: ANN001 - a Playwright Page
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_selector("#chat-server-status:has-text('is ready')", timeout=30_000)


def pick_server(page, name: str) -> None:  # noqa: ANN001
    """Picks a Ready server and waits for the pick's own answer: it empties the chat, so
    an open chat's mark leaves the list (a live tick can draw the status line first; with
    no chat open, the status line is all there is to wait for)."""
    page.locator("#chat-server input").click()
    page.get_by_role("option", name=f"{name} · Ready").click()
    page.wait_for_selector("#chat-list .mm-chat-active", state="detached", timeout=30_000)
    page.wait_for_selector(f"#chat-server-status:has-text('{name} is ready')", timeout=30_000)


def filter_chats(page, label: str) -> None:  # noqa: ANN001
    page.locator("#chat-history-server input").click()
    page.get_by_role("option", name=label).click()


def say(page, text: str) -> None:  # noqa: ANN001
    page.fill("#chat-input textarea", text)
    page.press("#chat-input textarea", "Enter")


def thought(page, title: str):  # noqa: ANN001, ANN201 - a Locator
    return page.locator(THOUGHT, has=page.locator(".title", has_text=title))


def test_image_thinking_tools_reload_continue_and_delete(
        dash: ChatDashboard, browser, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
        ) -> None:
    alice = dash.user(ALICE)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": SESSION_COOKIE, "url": dash.url,
                          "value": dash.cookie(ALICE)}])
    page = context.new_page()
    held = hold_turns(dash, monkeypatch, at=lambda e: e.kind is ChatEventKind.ANSWER
                      and bool(e.text.strip()))
    try:
        page.goto(dash.url + "/")
        open_chat_tab(page)

        # Drag and drop an image onto the message box; it shows in the chat.
        pick_server(page, "eyes")
        page.evaluate(DROP_JS, ["#chat-input textarea", "blue.png", png_base64((0, 90, 255)),
                                "image/png"])
        page.wait_for_selector("#chat-input .thumbnail-image", timeout=30_000)
        say(page, "What colour is this?")
        image = page.wait_for_selector(f"{BOT} .user-row img", timeout=30_000)
        assert "/gradio_api/file=" in image.get_attribute("src")
        page.wait_for_selector("#chat-list .mm-chat-active:has-text('2 messages')",
                               timeout=60_000)
        (saved,) = dash.services.chats.list(alice, dash.profiles["eyes"].id)
        user_message = dash.services.chats.get(alice, saved.id).messages[0]
        assert [a.name for a in user_message.attachments] == ["blue.png"]

        # Stop cancels a generation; what arrived is kept, marked as stopped. At rest it is
        # grey and disabled; it turns red and clickable once the answer is being written.
        pick_server(page, "chatter")
        # The sent image left the box (a message to a text model must not carry it).
        page.wait_for_selector("#chat-input .thumbnail-image", state="detached",
                               timeout=30_000)
        stop = page.locator("#chat-stop")
        assert stop.is_disabled() and "stop" not in (stop.get_attribute("class") or "")
        # The turn is held at its first words of answer: on a busy machine the whole
        # answer could end before the click (Stop then greys again and the click waits).
        held.armed.set()
        say(page, "Talk to me")
        assert held.drawn.wait(60), "the chatter's answer never started"
        # The click waits for Stop to be enabled: the turn's first update enabled it, before
        # any answer reached the page (no race with a separate event).
        page.click("#chat-stop")
        held.release.set()
        page.wait_for_selector(f"{BOT} :text('Stopped before the answer was complete.')",
                               timeout=30_000)
        (stopped,) = dash.services.chats.list(alice, dash.profiles["chatter"].id)
        answer = dash.services.chats.get(alice, stopped.id).messages[-1]
        assert answer.meta["stopped"] is True and answer.content
        assert answer.meta.get("completion_tokens") is None or \
            answer.meta["completion_tokens"] < 4000
        page.wait_for_selector("#chat-stop[disabled]", timeout=30_000)

        # Thinking, then a tool call over MCP, then the answer.
        pick_server(page, "weather")
        # One list of the user's chats, each naming its server (issue 15).
        listed = page.inner_text("#chat-list")
        assert "What colour is this?" in listed and "Talk to me" in listed
        assert "eyes" in listed and "chatter" in listed
        say(page, "Weather in Paris?")
        page.wait_for_selector(f"{BOT} :text('It is sunny in Paris.')", timeout=60_000)
        thinking = thought(page, "Thought for")
        tool = thought(page, "Used get_weather")
        assert thinking.count() == 1 and tool.count() == 1
        # Done: the thinking panel is collapsed; opening it shows the reasoning.
        assert not page.get_by_text("Need weather.").is_visible()
        thinking.locator(".title").click()
        page.wait_for_selector(f"{THOUGHT} :text('Need weather.')", timeout=10_000)
        # The tool call is a panel of its own, with its arguments and result inside.
        assert not page.get_by_text("Sample data for demonstrations").is_visible()
        tool.locator(".title").click()
        page.wait_for_selector(f"{THOUGHT} :text('Sample data for demonstrations')",
                               timeout=10_000)
        # The stats line comes with the turn's last update (a streamed one can already
        # hold the whole answer).
        page.wait_for_selector(f"{BOT} :text('tokens/s')", timeout=30_000)

        # Reload: the chat comes back with its panels, and goes on.
        page.reload()
        open_chat_tab(page)
        page.wait_for_selector(f"{BOT} :text('It is sunny in Paris.')", timeout=30_000)
        assert thought(page, "Thought for").count() == 1
        assert thought(page, "Used get_weather").count() == 1
        assert page.input_value("#chat-title input") == "Weather in Paris?"
        say(page, "And tomorrow?")
        # Two questions and two answers: the tool rounds are not counted (issue 15).
        page.wait_for_selector("#chat-list .mm-chat-active:has-text('4 messages')",
                               timeout=60_000)
        assert page.locator(f"{BOT} :text('It is sunny in Paris.')").count() == 2
        (weather_chat,) = dash.services.chats.list(alice, dash.profiles["weather"].id)
        assert weather_chat.message_count == 4

        # The server filter narrows the list to one server's chats, and back.
        filter_chats(page, "eyes (1)")
        page.wait_for_selector("#chat-list button[data-chat]:has-text('Weather in Paris?')",
                               state="detached", timeout=10_000)
        assert "What colour is this?" in page.inner_text("#chat-list")
        filter_chats(page, "All servers")
        page.wait_for_selector("#chat-list .mm-chat-active:has-text('Weather in Paris?')",
                               timeout=10_000)
        # The chat is open already: a new one first, so the wait below is the open's own.
        page.click("#chat-new")
        page.wait_for_selector("#chat-list .mm-chat-active", state="detached", timeout=10_000)
        page.click("#chat-list button[data-chat]:has-text('Weather in Paris?')")
        page.wait_for_selector("#chat-list .mm-chat-active:has-text('Weather in Paris?')",
                               timeout=10_000)
        page.wait_for_selector(f"{BOT} :text('And tomorrow?')", timeout=10_000)

        # Delete takes a confirmation; then the chat and its files are gone.
        page.click("#chat-delete")
        page.click("#chat-cancel-delete")
        page.wait_for_selector("#chat-confirm-delete", state="hidden", timeout=10_000)
        assert dash.services.chats.list(alice, dash.profiles["weather"].id)
        page.click("#chat-delete")
        page.click("#chat-confirm-delete")
        page.wait_for_selector("#chat-list button[data-chat]:has-text('Weather in Paris?')",
                               state="detached", timeout=10_000)
        assert dash.services.chats.list(alice, dash.profiles["weather"].id) == []
        assert page.locator(f"{BOT} :text('It is sunny in Paris.')").count() == 0
    finally:
        held.release.set()
        context.close()


def test_the_page_empties_the_box_in_a_quick_event_of_its_own(dash: ChatDashboard) -> None:
    """Emptied by the first update of the turn that streams, the box kept a sent image when
    the page was slow (CI; 1 of 2 sends with the page's CPU throttled 10x): Gradio re-synced
    the box's old value during the turn's status updates. The page's send now empties the
    box in an unqueued event that does not stream, and the turn chained after it never
    writes the box."""
    with dash.live.login(ALICE) as client:
        config = client.get("/config").json()
    box = next(c["id"] for c in config["components"]
               if (c.get("props") or {}).get("elem_id") == "chat-input")
    deps = config["dependencies"]
    writers = [d for d in deps if box in d["outputs"]
               and any(target[0] == box for target in d["targets"] or [])]
    assert writers and all(not d["queue"] and not d["types"]["generator"] for d in writers)
    turns = [d for d in deps if d.get("trigger_after") in {w["id"] for w in writers}]
    assert turns and all(d["types"]["generator"] and box not in d["outputs"] for d in turns)


@dataclass
class HeldTurns:
    """Turns sent while `armed` is set are held at their first event that `hold_turns`
    was told to hold at (by default once the person's message is drawn, before the model
    answers): `drawn` is set then, and the turn goes on when `release` is set."""

    armed: threading.Event = field(default_factory=threading.Event)
    drawn: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


def hold_turns(dash: ChatDashboard, monkeypatch: pytest.MonkeyPatch,
               at: Callable[[ChatEvent], bool] = lambda e: e.kind is ChatEventKind.USER
               ) -> HeldTurns:
    engine = dash.services.chat_engine
    held = HeldTurns()
    send: Callable[..., Any] = engine.send

    def held_send(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for event in send(*args, **kwargs):
            yield event
            if at(event) and held.armed.is_set() and not held.drawn.is_set():
                held.drawn.set()
                held.release.wait(60)

    monkeypatch.setattr(engine, "send", held_send)
    return held


def saved_chat(dash: ChatDashboard, user: User, title: str, question: str) -> ChatSummary:
    """A chat with the weather server, holding one question."""
    chat = dash.services.chats.create(user, "weather", title=title,
                                      profile_id=dash.profiles["weather"].id)
    dash.services.chats.add_message(user, chat.id, NewMessage("user", question))
    return chat


def signed_in_page(dash: ChatDashboard, browser, email: str):  # noqa: ANN001, ANN201
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": SESSION_COOKIE, "url": dash.url,
                          "value": dash.cookie(email)}])
    page = context.new_page()
    page.goto(dash.url + "/")
    open_chat_tab(page)
    return context, page


def test_an_answer_streams_on_unseen_while_another_chat_is_open(
        dash: ChatDashboard, browser, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
        ) -> None:
    """Gradio runs a page's events side by side: a turn's updates drew its chat over
    another the person opened while the answer streamed. The turn goes on unseen, is saved
    whole, and shows when its chat is opened again."""
    bob = dash.user(BOB)
    chats, engine = dash.services.chats, dash.services.chat_engine
    saved_chat(dash, bob, "Sunny days", "Is it sunny?")
    held = hold_turns(dash, monkeypatch)
    held.armed.set()
    context, page = signed_in_page(dash, browser, BOB)
    try:
        pick_server(page, "eyes")
        say(page, "Describe a cat")
        assert held.drawn.wait(60), "the message was never sent"
        page.wait_for_selector(f"{BOT} :text('Describe a cat')", timeout=30_000)
        page.wait_for_selector("#chat-stop:not([disabled])", timeout=30_000)
        page.click("#chat-list button[data-chat]:has-text('Sunny days')")
        page.wait_for_selector(f"{BOT} :text('Is it sunny?')", timeout=30_000)
        (cat,) = chats.list(bob, dash.profiles["eyes"].id)
        held.release.set()
        assert engine.wait_idle(cat.id, 60), "the answer never ended"
        # Stop turns grey with the turn's last update (which drew the chat before).
        page.wait_for_selector("#chat-stop[disabled]", timeout=30_000)
        assert page.locator(f"{BOT} :text('Describe a cat')").count() == 0
        assert page.locator(f"{BOT} :text('Is it sunny?')").count() == 1
        saved = chats.get(bob, cat.id).messages
        assert [m.role for m in saved] == ["user", "assistant"]
        assert not saved[-1].meta.get("stopped")
        page.click("#chat-list button[data-chat]:has-text('Describe a cat')")
        page.wait_for_selector(f"{BOT} :text('Describe a cat')", timeout=30_000)
        assert page.locator(f"{BOT} :text('Is it sunny?')").count() == 0
    finally:
        held.release.set()
        context.close()


def test_a_title_being_typed_outlasts_the_turn(dash: ChatDashboard, browser,  # noqa: ANN001
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The turn's first and last updates set the title box: a new title typed while the
    answer streamed, not saved yet, was replaced by the old one."""
    carol = dash.user(CAROL)
    held = hold_turns(dash, monkeypatch)
    context, page = signed_in_page(dash, browser, CAROL)
    try:
        pick_server(page, "eyes")
        say(page, "First question")
        page.wait_for_selector("#chat-list .mm-chat-active:has-text('2 messages')",
                               timeout=60_000)
        assert page.input_value("#chat-title textarea, #chat-title input") == "First question"
        held.armed.set()
        say(page, "Second question")
        assert held.drawn.wait(60), "the message was never sent"
        page.wait_for_selector(f"{BOT} :text('Second question')", timeout=30_000)
        page.wait_for_selector("#chat-stop:not([disabled])", timeout=30_000)
        page.fill("#chat-title textarea, #chat-title input", "My own title")
        held.release.set()
        (chat,) = dash.services.chats.list(carol, dash.profiles["eyes"].id)
        assert dash.services.chat_engine.wait_idle(chat.id, 60), "the answer never ended"
        # The turn's last update turns Stop grey (and drew the old title with it).
        page.wait_for_selector("#chat-stop[disabled]", timeout=30_000)
        page.wait_for_selector("#chat-list .mm-chat-active:has-text('4 messages')",
                               timeout=30_000)
        assert page.input_value("#chat-title textarea, #chat-title input") == "My own title"
        assert dash.services.chats.get(carol, chat.id).summary.title == "First question"
    finally:
        held.release.set()
        context.close()


def test_a_chat_opened_while_stop_waits_is_not_drawn_over(
        dash: ChatDashboard, browser, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
        ) -> None:
    """Stop waits (up to 10 s) for the stopped turn to save what arrived, then showed the
    chat it was clicked in, also over another chat the person opened meanwhile."""
    dave = dash.user(DAVE)
    chats, engine = dash.services.chats, dash.services.chat_engine
    saved_chat(dash, dave, "Other chat", "Another question")
    held = hold_turns(dash, monkeypatch)
    held.armed.set()
    # Stop's wait for the stopped turn is held, as a turn slow to end holds it.
    waiting, go_on, answered = threading.Event(), threading.Event(), threading.Event()
    wait_idle: Callable[..., bool] = engine.wait_idle

    def watched_wait(*args: Any, **kwargs: Any) -> bool:
        waiting.set()
        go_on.wait(60)
        idle = wait_idle(*args, **kwargs)
        answered.set()  # Stop's answer is made right after
        return idle

    monkeypatch.setattr(engine, "wait_idle", watched_wait)
    context, page = signed_in_page(dash, browser, DAVE)
    try:
        pick_server(page, "chatter")
        say(page, "Tell me a story")
        assert held.drawn.wait(60), "the message was never sent"
        page.wait_for_selector(f"{BOT} :text('Tell me a story')", timeout=30_000)
        page.click("#chat-stop")
        assert waiting.wait(60), "Stop never waited for the turn"
        page.click("#chat-list button[data-chat]:has-text('Other chat')")
        page.wait_for_selector(f"{BOT} :text('Another question')", timeout=30_000)
        watch_texts(page, BOT)
        go_on.set()
        held.release.set()
        assert answered.wait(60), "Stop never answered"
        # The search is answered after Stop, whose answer was made before the search was
        # typed: by then Stop's drawing, if it drew, is on the page.
        page.locator("#chat-search textarea, #chat-search input").press_sequentially("zz")
        page.wait_for_selector("#chat-list :text('No chats match')", timeout=30_000)
        texts = texts_shown(page, BOT)
        assert texts and not any("Tell me a story" in text for text in texts), texts
        assert page.locator(f"{BOT} :text('Another question')").count() == 1
        (story,) = chats.list(dave, dash.profiles["chatter"].id)
        wait_for(lambda: not engine.running(story.id), 120, "the stopped turn's end")
    finally:
        go_on.set()
        held.release.set()
        context.close()


def test_another_chat_takes_a_message_while_one_answers(
        dash: ChatDashboard, browser, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
        ) -> None:
    """The page skipped a send while another turn of it ran (Gradio's "once"), after the
    box was emptied: a message sent in another chat was lost without a word. The chat
    that answers refuses a second message, and the box keeps it. A refused message's
    reason shows (the box showed a bare "Error" for any refusal)."""
    erin = dash.user(ERIN)
    chats = dash.services.chats
    second = chats.create(erin, "eyes", title="Second chat", profile_id=dash.profiles["eyes"].id)
    held = hold_turns(dash, monkeypatch)
    held.armed.set()
    context, page = signed_in_page(dash, browser, ERIN)
    try:
        pick_server(page, "eyes")
        say(page, "   ")
        page.get_by_text("Type a message or attach an image").first.wait_for(timeout=30_000)
        say(page, "First chat question")
        assert held.drawn.wait(60), "the message was never sent"
        page.wait_for_selector(f"{BOT} :text('First chat question')", timeout=30_000)
        say(page, "Too soon")
        page.get_by_text("This chat is still answering").first.wait_for(timeout=30_000)
        assert page.input_value("#chat-input textarea") == "Too soon"
        page.click("#chat-list button[data-chat]:has-text('Second chat')")
        page.wait_for_selector("#chat-list .mm-chat-active:has-text('Second chat')",
                               timeout=30_000)
        page.wait_for_selector(f"{BOT} :text('First chat question')", state="detached",
                               timeout=30_000)
        say(page, "Second chat question")
        page.wait_for_selector(f"{BOT} :text('Second chat question')", timeout=30_000)
        held.release.set()
        wait_for(lambda: [m.role for m in chats.get(erin, second.id).messages]
                 == ["user", "assistant"], 60, "the second chat's answer")
        first = next(c for c in chats.list(erin) if c.id != second.id)
        wait_for(lambda: [m.role for m in chats.get(erin, first.id).messages]
                 == ["user", "assistant"], 60, "the first chat's answer")
        assert [m.content for m in chats.get(erin, first.id).messages][0] == \
            "First chat question"  # "Too soon" was not sent
    finally:
        held.release.set()
        context.close()


def test_stop_turns_grey_after_a_turn_that_failed(
        dash: ChatDashboard, browser, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
        ) -> None:
    """The page runs an event's `then` only after it did not fail: a turn that failed
    once Stop was red left it red, with nothing to stop."""
    dash.user(FRANK)
    engine = dash.services.chat_engine
    send: Callable[..., Any] = engine.send

    def failing_send(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for event in send(*args, **kwargs):
            yield event
            if event.kind is ChatEventKind.USER:
                raise ValidationError("The model server went away.")

    monkeypatch.setattr(engine, "send", failing_send)
    context, page = signed_in_page(dash, browser, FRANK)
    try:
        pick_server(page, "eyes")
        say(page, "Are you there?")
        page.get_by_text("The model server went away.").first.wait_for(timeout=30_000)
        page.wait_for_selector("#chat-stop[disabled]", timeout=30_000)
    finally:
        context.close()


def test_a_message_to_a_server_that_cannot_start_stays_in_the_box(
        dash: ChatDashboard, browser, tmp_path: Path) -> None:  # noqa: ANN001
    """A message to a stopped server whose port another program holds: the box emptied,
    then the start refused it, and the message was lost (an empty "New chat" was left
    before 544ce30). The quick step now asks what a start would refuse."""
    grace = dash.user(GRACE)
    profile = dash.services.profiles.create(grace, ProfileSpec(
        name="blocked", model=str(dash.profiles["eyes"].model), port=free_port()))
    with socket.socket() as holder:  # another program on the profile's port
        holder.bind(("127.0.0.1", profile.port))
        holder.listen()
        context, page = signed_in_page(dash, browser, GRACE)
        try:
            page.locator("#chat-server input").click()
            page.get_by_role("option", name="blocked · Stopped").click()
            page.get_by_text("already in use by another program").first.wait_for(
                timeout=30_000)
            say(page, "my carefully typed question")
            page.get_by_text("blocked cannot start: port").first.wait_for(timeout=30_000)
            assert page.input_value("#chat-input textarea") == "my carefully typed question"
        finally:
            context.close()
    assert dash.services.chats.list(grace, profile.id) == []


def test_a_message_to_a_server_beyond_the_memory_budget_stays_in_the_box(
        dash: ChatDashboard, browser) -> None:  # noqa: ANN001
    """A message to a stopped server whose model the memory budget cannot hold: the box
    emptied, then the start refused it, and the message was lost. The quick step now asks
    the budget too (and stops nothing: the start makes its own room)."""
    heidi = dash.user(HEIDI)
    placement = dash.services.placement
    profile = dash.services.profiles.create(heidi, ProfileSpec(
        name="oversized", model=str(dash.profiles["eyes"].model), port=free_port()))
    need = placement.need_bytes(profile)
    assert need is not None and need > 1
    placement.set_budget(need - 1)
    context, page = signed_in_page(dash, browser, HEIDI)
    try:
        page.locator("#chat-server input").click()
        page.get_by_role("option", name="oversized · Stopped").click()
        say(page, "my carefully typed question")
        page.get_by_text("more than the whole budget").first.wait_for(timeout=30_000)
        assert page.input_value("#chat-input textarea") == "my carefully typed question"
    finally:
        placement.set_budget(None)
        context.close()
    assert dash.services.chats.list(heidi, profile.id) == []

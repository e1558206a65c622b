"""The live feed (components/live.py) when something fails: one part's drawing, the page
load's reads, a whole tick. The page keeps what works and never asks in a tight loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import gradio as gr
import pytest

from components import live
from components.live import LiveFeed, LivePart, Seen
from components.session import TabLoader
from manager.accounts.auth import User
from manager.changes import Topic
from manager.services import Services
from tests.test_live_feed import _answer, _run_load
from tests.test_upstream import on_own_loop


def _broken(_user: User) -> tuple[str]:
    raise RuntimeError("the drawing broke")


def test_a_part_that_fails_to_draw_leaves_the_others_and_the_feed_going(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    """Bug: one part's failure failed the whole tick. Its Seen did not move, so the next
    tick found the same news and failed again, every TICK_S, and no part of the page
    showed a change any more."""
    with gr.Blocks():
        feed = LiveFeed(services)
        feed.add(LivePart(frozenset({Topic.ACCOUNTS}), _broken, [gr.Markdown()]))
        feed.add(LivePart(frozenset({Topic.ACCOUNTS}), lambda _user: ("badge",),
                          [gr.Markdown()]))
    seen = Seen(services.changes.versions(), 0.0)
    services.changes.bump(Topic.ACCOUNTS)
    with caplog.at_level(logging.ERROR, logger=live.__name__):
        after, broken, badge = _answer(feed, seen)
    assert isinstance(broken, type(gr.skip())) and badge == "badge"
    assert after.versions == services.changes.versions()  # the news counts as drawn
    assert "_broken failed to redraw" in caplog.text and "the drawing broke" in caplog.text


def test_a_page_opens_and_its_feed_starts_when_the_servers_cannot_be_read(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: an error reading the servers' states failed the page load, so the page stayed
    as built and its live timer (started by the load's answer) never ran."""
    with gr.Blocks():
        feed = LiveFeed(services)
        badge = gr.Markdown()
        feed.add_loader(TabLoader(lambda _request: "drawn", [badge]))

    def unreadable() -> dict[int, Any]:
        raise RuntimeError("the supervisor is busy")

    monkeypatch.setattr(feed, "states", unreadable)
    seen, shown = _run_load(feed)
    assert shown == {badge: "drawn"} and seen.servers == ()


def test_a_tab_whose_load_answers_the_wrong_number_of_values_fails_alone(
        services: Services) -> None:
    """A tab loader that answers two values for three outputs is that tab's failure (left
    as built, logged, a toast), not the whole page's."""
    with gr.Blocks():
        feed = LiveFeed(services)
        first, second, third, other = gr.Markdown(), gr.Markdown(), gr.Markdown(), gr.Markdown()
        feed.add_loader(TabLoader(lambda _request: ("a", "b"), [first, second, third]))
        feed.add_loader(TabLoader(lambda _request: "fine", [other]))
    seen, shown = _run_load(feed)
    assert shown == {other: "fine"} and isinstance(seen, Seen)


def test_a_tab_whose_load_fails_shows_what_it_asks_for_then(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    """`TabLoader.if_failed`: the Chat tab's picker is built disabled and only its load
    enables it; a failed load still leaves it usable. A fallback that fails as well
    leaves its tab as built, and the page still opens."""
    def broken(_request: gr.Request) -> str:
        raise RuntimeError("the chats could not be read")

    def also_broken() -> dict[Any, Any]:
        raise RuntimeError("nor the profiles")

    with gr.Blocks():
        feed = LiveFeed(services)
        picker, other, third = gr.Markdown(), gr.Markdown(), gr.Markdown()
        feed.add_loader(TabLoader(broken, [picker], if_failed=lambda: {picker: "usable"}))
        feed.add_loader(TabLoader(lambda _request: "fine", [other]))
        feed.add_loader(TabLoader(broken, [third], if_failed=also_broken))
    with caplog.at_level(logging.ERROR, logger=live.__name__):
        seen, shown = _run_load(feed)
    assert shown == {picker: "usable", other: "fine"} and isinstance(seen, Seen)
    assert "nor the profiles" in caplog.text


def test_a_tick_that_fails_waits_before_it_answers(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick that fails (its Seen unchanged) would be followed by another TICK_S later,
    failing the same way: it answers only after HOLD_S, like a tick for an ended
    session."""
    services.auth.register("admin@example.com", "correct horse battery")
    with gr.Blocks() as page:
        feed = LiveFeed(services)
        feed.add(LivePart(frozenset({Topic.ACCOUNTS}), lambda _user: ("badge",),
                          [gr.Markdown()]))
        feed.attach(page)
    [tick] = [f.fn for f in page.fns.values() if getattr(f.fn, "__name__", "") == "tick"]
    monkeypatch.setattr(live, "HOLD_S", 60.0)

    async def go() -> tuple[bool, bool]:
        failed = asyncio.Event()

        async def failing(*_args: Any) -> list[Any]:
            failed.set()
            raise RuntimeError("the tick broke")

        monkeypatch.setattr(feed, "answer", failing)
        request = gr.Request(username="admin@example.com", session_hash="page")
        answering = asyncio.ensure_future(tick(Seen(services.changes.versions(), 0.0), request))
        await failed.wait()
        for _ in range(5):
            await asyncio.sleep(0)
        waiting = not answering.done()
        answering.cancel()
        try:
            await answering
        except asyncio.CancelledError:
            return waiting, True
        return waiting, False

    assert on_own_loop(go) == (True, True)


def test_a_page_whose_state_is_gone_keeps_what_a_part_following_a_state_shows(
        services: Services) -> None:
    """Gradio resets every gr.State of a page it dropped, while the page's own controls
    (the Models tab's filter boxes, its view) keep what the user chose. The drawing afresh
    leaves a part that follows a State as it is (drawn for the reset value, the list
    would contradict the filter shown above it); the other parts are drawn."""
    with gr.Blocks():
        feed = LiveFeed(services)
        chosen = gr.State("the default filter")
        feed.add(LivePart(frozenset({Topic.DOWNLOADS}),
                          lambda _user, filt: (f"list for {filt}",), [gr.HTML()],
                          inputs=[chosen], follows=[chosen]))
        feed.add(LivePart(frozenset({Topic.ACCOUNTS}), lambda _user: ("badge",),
                          [gr.Markdown()]))
    seen, listed, badge = _answer(feed, None, ["the default filter"])
    assert isinstance(listed, type(gr.skip())) and badge == "badge"
    assert seen.drawn_with == (None, None)  # not "drawn for the default filter"

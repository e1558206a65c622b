"""What the Chat tab records per open page (components/chat/page_views.py): the chat it
shows, its pick and its running turns, so that late updates do not draw over them."""

from __future__ import annotations

from components.chat.page_views import PageViews, page_key
from manager.services import Services


def test_a_page_shows_its_latest_chat_and_pick() -> None:
    views = PageViews()
    assert views.chat_of("page-1") is None
    views.show("page-1", 7)
    views.pick("page-1", 3)
    assert views.chat_of("page-1") == 7
    assert views.shows("page-1", 7) and not views.shows("page-1", 8)
    assert views.picked("page-1", 3) and not views.picked("page-1", 4)
    views.show("page-1", None)  # a new chat
    assert not views.shows("page-1", 7) and views.shows("page-1", None)
    assert views.chat_of("page-1") is None
    assert views.picked("page-1", 3)  # the pick stays with the page's picker
    views.pick("page-1", None)
    assert views.picked("page-1", None) and not views.picked("page-1", 3)
    # Another page is its own.
    views.show("page-2", 7)
    assert views.shows("page-2", 7) and not views.shows("page-1", 7)


def test_a_page_not_known_here_is_drawn_as_before() -> None:
    views = PageViews()
    assert views.shows("unknown", 5) and views.picked("unknown", 5)
    assert views.shows(None, 5) and views.picked(None, 5) and views.running(None) == []
    views.show(None, 5)  # a request with no page: nothing to remember
    views.started(None, 5)
    assert views.running(None) == []


def test_a_turn_does_not_make_a_forgotten_page_known() -> None:
    """A turn records what its page shows before it starts; a page forgotten since then
    stays forgotten (drawn as before), rather than known as showing nothing."""
    views = PageViews()
    views.started("forgotten", 3)
    assert views.running("forgotten") == []
    assert views.shows("forgotten", 3) and views.picked("forgotten", 1)


def test_the_key_names_the_user_too(services: Services) -> None:
    """The page says which session it is: another user naming it gets another page."""
    alice = services.auth.register("alice@example.com", "correct horse battery")
    mallory = services.auth.register("mallory@example.com", "correct horse battery")
    assert page_key(alice, "abc") != page_key(mallory, "abc")
    assert page_key(alice, None) is None and page_key(alice, "") is None
    views = PageViews()
    views.show(page_key(alice, "abc"), 7)
    views.started(page_key(alice, "abc"), 7)
    assert views.running(page_key(mallory, "abc")) == []


def test_turns_are_counted_per_chat() -> None:
    views = PageViews()
    views.show("page", 1)
    views.started("page", 1)
    views.started("page", 1)  # a retry while the turn still ends
    views.started("page", 2)
    assert sorted(views.running("page")) == [1, 2]
    views.ended("page", 1)
    assert sorted(views.running("page")) == [1, 2]
    views.ended("page", 1)
    views.ended("page", 1)  # once too often: no count below zero
    assert views.running("page") == [2]
    views.ended("page", 2)
    assert views.running("page") == []


def test_the_oldest_idle_page_is_forgotten() -> None:
    views = PageViews(max_pages=2)
    views.show("streaming", 1)
    views.started("streaming", 1)  # the oldest, but streaming: kept
    views.show("idle", 4)
    views.show("newest", 5)
    assert views.running("streaming") == [1]
    assert views.shows("newest", 5) and not views.shows("newest", 4)
    # "idle" was forgotten: drawn as before for anything.
    assert views.shows("idle", 99)
    views.show("streaming", 2)  # touched: now the newest
    views.show("another", 6)
    assert views.shows("newest", 99)  # the oldest idle one went
    assert not views.shows("streaming", 1) and views.running("streaming") == [1]


def test_a_handler_that_waited_settles_only_if_nothing_was_recorded_meanwhile() -> None:
    views = PageViews()
    views.show("page", 1)
    views.pick("page", 10)
    seen = views.version("page")
    assert views.settle("page", seen, None, 11)  # nothing happened meanwhile
    assert views.shows("page", None) and views.picked("page", 11)
    seen = views.version("page")
    views.show("page", 2)  # the person opened a chat while the start waited
    assert not views.settle("page", seen, None, 12)
    assert views.shows("page", 2) and views.picked("page", 11)
    # A page not known yet: settled if it stayed unknown, not if it became known.
    assert views.version("new") == 0
    assert views.settle("new", 0, 5, 13) and views.shows("new", 5)
    views.show("other", 6)
    assert not views.settle("other", 0, 7, 14) and views.shows("other", 6)
    assert views.settle(None, 0, 7, 14)  # no page: nothing to check, drawn as before


def test_what_was_never_recorded_stays_unknown() -> None:
    """A page met first by an event that records only the chat (New chat on a page
    forgotten since) does not claim to have picked nothing."""
    views = PageViews()
    views.show("page", None)
    assert views.picked("page", 3) and views.picked("page", None)
    views.pick("fresh", 4)
    assert views.shows("fresh", 9) and views.chat_of("fresh") is None

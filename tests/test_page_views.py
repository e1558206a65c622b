"""What the Chat tab records per open page (components/chat/page_views.py): the chat it
shows, its pick and its running turns, so that late updates do not draw over them."""

from __future__ import annotations

from components.chat.page_views import PageViews, Settled, page_key
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


def test_a_handler_that_waited_records_only_what_nothing_else_changed_meanwhile() -> None:
    views = PageViews()
    views.show("page", 1)
    views.pick("page", 10)
    seen = views.version("page")
    assert views.settle("page", seen, None, 11) == Settled(True, True)  # nothing happened
    assert views.shows("page", None) and views.picked("page", 11)
    # The person opened chat 2 of the same server while a start waited: the pick stands.
    seen = views.version("page")
    views.show("page", 2)
    assert views.settle("page", seen, None, 11) == Settled(False, True)
    assert views.shows("page", 2) and views.picked("page", 11)
    # ... or a chat of another server: neither.
    seen = views.version("page")
    views.show("page", 3)
    views.pick("page", 12)
    assert views.settle("page", seen, None, 13) == Settled(False, False)
    assert views.shows("page", 3) and views.picked("page", 12)
    # New chat, which records the chat only: the pick of a waiting handler stands.
    seen = views.version("page")
    views.show("page", None)
    assert views.settle("page", seen, 4, 14) == Settled(False, True)
    assert views.shows("page", None) and views.picked("page", 14)
    # Picking what the picker names already changes nothing (a name typed again) ...
    seen = views.version("page")
    views.pick("page", 14)
    assert views.version("page") == seen
    # ... but the chat drawn again does: a pick that waited must not empty a chat that a
    # send drew meanwhile, though it was the one shown.
    views.show("page", None)
    assert views.settle("page", seen, None, 15) == Settled(False, True)


def test_a_page_unknown_or_forgotten_during_a_wait_records_what_the_handler_draws() -> None:
    views = PageViews(max_pages=1)
    assert views.version("new") == (0, 0)
    assert views.settle("new", views.version("new"), 5, 13) == Settled(True, True)
    assert views.shows("new", 5) and views.picked("new", 13)
    # Known at first, then forgotten (another page came) while the start waited.
    seen = views.version("new")
    views.show("another", 1)
    assert views.settle("new", seen, 6, 14) == Settled(True, True)
    assert views.shows("new", 6)
    # Unknown at first, known since (an open recorded it): that open's drawing stands.
    seen = views.version("later")
    views.show("later", 7)
    assert views.settle("later", seen, 8, 15) == Settled(False, True)
    assert views.settle(None, (0, 0), 7, 14) == Settled(True, True)  # no page: as before


def test_a_chat_takes_one_send_at_a_time_per_page() -> None:
    views = PageViews()
    claim = views.claim("page", 1)
    assert claim and views.claim("page", 1) is None  # taken, not streaming yet
    assert views.claim("page", 2) and views.claim("other", 1)  # another chat, another page
    views.unclaim("page", 1, claim)  # refused before it streamed
    claim = views.claim("page", 1)
    assert claim
    views.started("page", 1)  # its turn streams: still refused
    assert views.claim("page", 1) is None
    views.unclaim("page", 1, claim)  # the taken send's end after its turn: changes nothing
    assert views.claim("page", 1) is None
    views.ended("page", 1)
    newer = views.claim("page", 1)
    assert newer
    views.unclaim("page", 1, claim)  # an older claim does not release a newer one
    assert views.claim("page", 1) is None
    assert views.claim(None, 1) == 0  # no page: nothing to refuse on
    # Stop cancels the page's sends, the queued ones too, whose steps never run: their
    # claims (the newer one on chat 1, one on chat 3) go with them.
    assert views.claim("page", 3) and views.claim("page", 3) is None
    views.unclaim_all("page")
    assert views.claim("page", 3) and views.claim("page", 1)


def test_what_was_never_recorded_stays_unknown() -> None:
    """A page met first by an event that records only the chat (New chat on a page
    forgotten since) does not claim to have picked nothing."""
    views = PageViews()
    views.show("page", None)
    assert views.picked("page", 3) and views.picked("page", None)
    views.pick("fresh", 4)
    assert views.shows("fresh", 9) and views.chat_of("fresh") is None

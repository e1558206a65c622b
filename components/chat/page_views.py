"""What each open page shows in the Chat tab: the chat on screen, the server picked, and
the turns it has running.

Gradio runs a page's events side by side. A turn's updates kept drawing its chat over
another the person opened while it streamed, and a status poll that set out before a
pick drew the server left behind. Handlers record here what the page shows now, keyed
by the signed-in user and the page's Gradio session (the page says which session it is,
so the user is part of the key: another user's page is never touched); an update that
set out earlier checks it before drawing. What is not known here (a page none of whose
events has run yet, or one forgotten to keep the record small) is drawn as before.

A handler that waits before it draws (a server's start can take seconds) reads the
page's `version` first and `settle`s after: it records (and draws) the chat only if no
other chat was recorded meanwhile, and the pick likewise; else it leaves the page to
what was.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import gradio as gr

from manager.accounts.auth import User

#: Pages remembered; the oldest untouched one is forgotten past this (a page that was
#: closed says nothing, so the record would grow with every page ever opened).
MAX_PAGES = 2048


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


#: A chat or a pick not recorded for a page (every check on it passes).
UNKNOWN: Final = _Unknown()


@dataclass
class _Page:
    chat_id: int | None | _Unknown = UNKNOWN
    profile_id: int | None | _Unknown = UNKNOWN
    running: Counter[int] = field(default_factory=Counter)
    #: Chats a send was taken for, whose turn has not started yet (chat id -> claim).
    pending: dict[int, int] = field(default_factory=dict)
    #: Count the changes recorded to the chat and to the pick, so that a handler can
    #: tell that nothing was.
    chat_version: int = 0
    pick_version: int = 0


class Version(NamedTuple):
    """How many changes were recorded to a page's chat and to its pick."""

    chat: int
    pick: int


class Settled(NamedTuple):
    """Which of the chat and the pick `settle` recorded."""

    chat: bool
    pick: bool


def page_key(user: User, session_hash: str | None) -> str | None:
    """The key of a user's page (one Gradio session per browser tab or API client)."""
    return f"{user.id}:{session_hash}" if session_hash else None


def page_of(user: User, request: gr.Request | None) -> str | None:
    """The key of the page a request comes from."""
    return page_key(user, getattr(request, "session_hash", None))


class PageViews:
    """Per page: the open chat (None: a new chat, not saved yet), the picked profile and
    the chats whose turns it is streaming. Safe to share between Gradio's worker threads."""

    def __init__(self, max_pages: int = MAX_PAGES) -> None:
        self._max = max_pages
        self._lock = threading.Lock()
        self._pages: OrderedDict[str, _Page] = OrderedDict()
        self._claims = 0

    def show(self, session: str | None, chat_id: int | None) -> None:
        """The page now shows this chat (drawn anew, if it showed it already: a handler
        that waited must not draw over it)."""
        with self._lock:
            self._set_chat(self._page(session), chat_id, again=True)

    def opened(self, session: str | None, chat_id: int | None, profile_id: int | None
               ) -> None:
        """The page now shows this chat, and its picker names this profile."""
        self.show(session, chat_id)
        self.pick(session, profile_id)

    def pick(self, session: str | None, profile_id: int | None) -> None:
        """The picker now names this profile (None: none)."""
        with self._lock:
            self._set_pick(self._page(session), profile_id)

    def version(self, session: str | None) -> Version:
        """What was recorded for the page so far, for `settle` (zeros: not known here)."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            if session is None or page is None:
                return Version(0, 0)
            self._pages.move_to_end(session)  # a handler waits on it: keep it known
            return Version(page.chat_version, page.pick_version)

    def settle(self, session: str | None, seen: Version, chat_id: int | None,
               profile_id: int) -> Settled:
        """Records the chat if no other chat was recorded for the page since `seen`, and
        likewise the pick; says which it recorded (the other was drawn by what changed
        it). A page forgotten meanwhile records both."""
        with self._lock:
            known = self._pages.get(session) if session is not None else None
            page = self._page(session)
            if page is None:
                return Settled(True, True)
            fresh = known is None
            chat = fresh or page.chat_version == seen.chat
            pick = fresh or page.pick_version == seen.pick
            if chat:
                self._set_chat(page, chat_id, again=True)
            if pick:
                self._set_pick(page, profile_id)
            return Settled(chat, pick)

    def shows(self, session: str | None, chat_id: int | None) -> bool:
        """Whether this chat (None: a new one) is still the one on the page."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            return page is None or page.chat_id is UNKNOWN or page.chat_id == chat_id

    def chat_of(self, session: str | None) -> int | None:
        """The chat the page shows (None: a new one, or not known here)."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            chat_id = page.chat_id if page is not None else None
            return chat_id if isinstance(chat_id, int) else None

    def picked(self, session: str | None, profile_id: int | None) -> bool:
        """Whether the picker still names this profile."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            return page is None or page.profile_id is UNKNOWN or page.profile_id == profile_id

    def claim(self, session: str | None, chat_id: int) -> int | None:
        """A send is taken for this chat: its claim (released by `started` or `unclaim`),
        or None while another send of the page for this chat is taken or streams."""
        with self._lock:
            page = self._page(session)
            if page is None:
                return 0  # no page to keep: nothing to refuse on
            if chat_id in page.pending or page.running[chat_id]:
                return None
            self._claims += 1
            page.pending[chat_id] = self._claims
            return self._claims

    def unclaim_all(self, session: str | None) -> None:
        """Stop cancelled the page's sends, also those whose turns had not started (a
        queued step that never runs cannot release its claim)."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            if page is not None:
                page.pending.clear()

    def unclaim(self, session: str | None, chat_id: int | None, claim: int | None) -> None:
        """The taken send ended before its turn started (refused, or lost); nothing for a
        send that claimed nothing (a new chat, no page)."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            if claim and chat_id is not None and page is not None \
                    and page.pending.get(chat_id) == claim:
                del page.pending[chat_id]

    def started(self, session: str | None, chat_id: int) -> None:
        """A turn of this chat streams to the page (until `ended`). The turn recorded what
        the page shows first: a page not known by now was forgotten, and stays so."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            if page is not None:
                page.pending.pop(chat_id, None)
                page.running[chat_id] += 1

    def ended(self, session: str | None, chat_id: int) -> None:
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            if page is not None and page.running[chat_id] > 0:
                page.running[chat_id] -= 1
                if not page.running[chat_id]:
                    del page.running[chat_id]

    def running(self, session: str | None) -> list[int]:
        """The chats whose turns stream to this page now."""
        with self._lock:
            page = self._pages.get(session) if session is not None else None
            return list(page.running) if page is not None else []

    @staticmethod
    def _set_chat(page: _Page | None, chat_id: int | None, *, again: bool) -> None:
        if page is not None and (again or page.chat_id != chat_id):
            page.chat_id = chat_id
            page.chat_version += 1

    @staticmethod
    def _set_pick(page: _Page | None, profile_id: int | None) -> None:
        if page is not None and page.profile_id != profile_id:
            page.profile_id = profile_id
            page.pick_version += 1

    def _page(self, session: str | None) -> _Page | None:
        if session is None:
            return None
        page = self._pages.get(session)
        if page is None:
            page = self._pages[session] = _Page()
            if len(self._pages) > self._max:  # the oldest page with nothing streaming
                idle = next((s for s, p in self._pages.items() if not p.running), None)
                if idle is not None and idle != session:
                    del self._pages[idle]
        else:
            self._pages.move_to_end(session)
        return page

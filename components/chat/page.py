"""Lookups every part of the Chat tab shares: the picked profile, the open chat (always
read with the signed-in user as owner), and the sidebar: one list of the user's chats,
filtered by server when the person asks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from components.chat.layout import ALL_SERVERS, ChatUI
from components.chat.outbox import Outbox
from components.chat.page_views import PageViews
from components.chat.status import server_choices, server_state, status_markdown
from components.chat_view import chat_list_html, chatbot_messages
from components.session import refusals
from manager.accounts.auth import User
from manager.chat.history import Chat
from manager.errors import NotFound
from manager.servers.profiles import Profile
from manager.servers.supervisor import ServerState
from manager.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatPage:
    services: Services
    ui: ChatUI
    #: What each open page shows (its late updates check it before drawing).
    views: PageViews = field(default_factory=PageViews)
    #: Messages the pages' sends took, until their turns stream.
    outbox: Outbox = field(default_factory=Outbox)

    def profile_of(self, ref: Any) -> Profile:
        """The profile a page value names (its id, or a name typed into the picker)."""
        if ref is None or str(ref).strip() == "":
            raise gr.Error("Pick a server first.")
        with refusals(f"server {ref!r}"):
            return self.services.profiles.find(ref if isinstance(ref, int)
                                               else str(ref).strip())

    def maybe_profile(self, ref: Any) -> Profile | None:
        if ref is None or str(ref).strip() == "":
            return None
        return self.profile_of(ref)

    def profile_of_chat(self, profile_id: int | None) -> Profile | None:
        """A chat's profile, or None when it was deleted since."""
        if profile_id is None:
            return None
        try:
            return self.services.profiles.get(profile_id)
        except NotFound:
            log.info("chat profile %s is gone", profile_id)
            return None

    def read_chat(self, user: User, chat_id: Any) -> Chat:
        if chat_id is None or not str(chat_id).strip().isdigit():
            raise gr.Error("Open a chat first.")
        with refusals(f"chat {chat_id!r} for {user.email}"):
            return self.services.chats.get(user, int(str(chat_id).strip()))

    def shown_profile(self, shown: int | str | None) -> Profile | None:
        """The server the history filter names; None shows every server's chats."""
        if _all_servers(shown):
            return None
        try:
            return self.services.profiles.find(shown if isinstance(shown, int)
                                               else str(shown).strip())
        except NotFound:
            log.info("chat history filter %r names no server: showing all", shown)
            return None

    def sidebar(self, user: User, shown: int | str | None, search_text: str,
                chat_id: int | None) -> str:
        """The user's chats (of the server the filter `shown` names, or all)."""
        profile = self.shown_profile(shown)
        found = self.services.chats.list(user, profile.id if profile is not None else None,
                                         search=search_text or "")
        return chat_list_html(found, chat_id, search=search_text or "",
                              server=profile.name if profile is not None else None)

    def filter_update(self, user: User, shown: int | str | None) -> Any:
        """The history filter set to `shown`: all servers, or one the user has chats with."""
        profile = self.shown_profile(shown)
        return gr.Dropdown(choices=self._filter_choices(user, profile),
                           value=profile.id if profile is not None else ALL_SERVERS)

    def filter_refresh(self, user: User, shown: int | str | None) -> Any:
        """The history filter's choices read afresh, its value left alone: the answer can
        land after the person picked another (an update carrying the value undid the pick).
        A filter naming a server that is gone falls back to all servers."""
        profile = self.shown_profile(shown)
        choices = self._filter_choices(user, profile)
        if profile is None and not _all_servers(shown):
            return gr.Dropdown(choices=choices, value=ALL_SERVERS)
        return gr.Dropdown(choices=choices)

    def _filter_choices(self, user: User, profile: Profile | None) -> list[tuple[str, Any]]:
        servers = self.services.chats.servers(user)
        choices: list[tuple[str, Any]] = [("All servers", ALL_SERVERS)]
        choices += [(f"{s.name} ({s.chats})", s.profile_id) for s in servers]
        if profile is not None and all(s.profile_id != profile.id for s in servers):
            choices.append((f"{profile.name} (0)", profile.id))  # its last chat was deleted
        return choices

    def server_update(self, profile: Profile | None) -> Any:
        return gr.Dropdown(choices=server_choices(self.services),
                           value=profile.id if profile is not None else None, interactive=True)

    def server_refresh(self) -> Any:
        """The picker's choices read afresh (their states move), its value left alone: an
        answer that set out before the person picked another server lands after that pick."""
        return gr.Dropdown(choices=server_choices(self.services))

    def timer_for(self, profile: Profile | None) -> gr.Timer:
        starting = (profile is not None
                    and server_state(self.services, profile) is ServerState.STARTING)
        return gr.Timer(active=starting)

    def opened(self, user: User, chat: Chat, search_text: str, shown: int | str | None,
               session: str | None) -> dict[Any, Any]:
        """Showing a chat on the page `session`: its messages, title and sidebar, and its
        server (a chat goes on with the server it was started with)."""
        ui = self.ui
        profile = self.profile_of_chat(chat.summary.profile_id)
        self.views.opened(session, chat.id, profile.id if profile is not None else None)
        return {ui.chatbot: chatbot_messages(chat.messages), ui.current: chat.id,
                ui.title: chat.summary.title,
                ui.chat_list: self.sidebar(user, shown, search_text, chat.id),
                ui.server: self.server_update(profile),
                ui.server_status: status_markdown(self.services, profile)}

    def emptied(self, user: User, shown: int | str | None, search_text: str
                ) -> dict[Any, Any]:
        """No chat open (a new one starts with the next message); the caller records it."""
        ui = self.ui
        return {ui.chatbot: [], ui.current: None, ui.title: "",
                ui.chat_list: self.sidebar(user, shown, search_text, None)}


def _all_servers(shown: int | str | None) -> bool:
    """The history filter shows every server's chats (it names none)."""
    return shown is None or str(shown).strip() in ("", ALL_SERVERS)

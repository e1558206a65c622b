"""Picking a server in the Chat tab: what a page shows when it opens, starting a profile
that is not running, and following its status until it is ready."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from components.chat.layout import ALL_SERVERS
from components.chat.page import ChatPage
from components.chat.page_views import page_of
from components.chat.status import server_state, status_markdown
from components.chat_view import chatbot_messages
from components.session import handler
from manager.accounts.auth import User
from manager.servers.supervisor import ACTIVE_STATES, ServerState

log = logging.getLogger(__name__)


def wire(page: ChatPage) -> tuple[Any, list[gr.components.Component]]:
    """Connects the picker's events; returns the page-open loader and its outputs."""
    services, ui = page.services, page.ui

    @handler(services, "chat tab load")
    def load(user: User, request: gr.Request) -> dict[Any, Any]:
        recent = services.chats.list(user)
        profile = page.profile_of_chat(recent[0].profile_id) if recent else None
        if profile is None:
            profile = next((p for p in services.profiles.list()
                            if server_state(services, p) is ServerState.READY), None)
        shown: dict[Any, Any] = {ui.chatbot: [], ui.current: None, ui.title: ""}
        if profile is not None and recent and recent[0].profile_id == profile.id:
            chat = services.chats.get(user, recent[0].id)
            shown = {ui.chatbot: chatbot_messages(chat.messages), ui.current: chat.id,
                     ui.title: chat.summary.title}
        session = page_of(user, request)
        page.views.opened(session, shown[ui.current],
                          profile.id if profile is not None else None)
        # The history opens unfiltered: every chat of the user, each with its server.
        return {**shown, ui.server: page.server_update(profile),
                ui.server_status: status_markdown(services, profile),
                ui.chat_list: page.sidebar(user, ALL_SERVERS, "", shown[ui.current]),
                ui.history_server: page.filter_update(user, ALL_SERVERS),
                ui.shown: ALL_SERVERS,
                ui.status_timer: page.timer_for(profile)}

    @handler(services, "picking a chat server")
    def pick_server(user: User, ref: Any, search_text: str, shown_ref: Any,
                    request: gr.Request) -> dict[Any, Any]:
        profile = page.profile_of(ref)
        session = page_of(user, request)
        seen = page.views.version(session)
        started = False
        if server_state(services, profile) not in ACTIVE_STATES:
            # Can take seconds (another start, room made in memory) or be refused.
            services.placement.start(user, profile.id)
            started = True
            log.info("%s started %s from the chat tab", user.email, profile.name)
        settled = page.views.settle(session, seen, None, profile.id)
        # What the page opened or picked meanwhile drew itself.
        drawn: dict[Any, Any] = {ui.server_status: gr.skip()}
        if settled.chat:
            drawn.update(page.emptied(user, shown_ref, search_text))
        if settled.pick:
            drawn.update({ui.server: page.server_update(profile),
                          ui.server_status: status_markdown(services, profile,
                                                            started=started),
                          ui.status_timer: page.timer_for(profile)})
        return drawn

    @handler(services, "chat server status")
    def poll_status(user: User, ref: Any, request: gr.Request) -> dict[Any, Any]:
        profile = page.maybe_profile(ref)
        if profile is not None and server_state(services, profile) is ServerState.STARTING:
            answer = {ui.server_status: status_markdown(services, profile, started=True),
                      ui.status_timer: page.timer_for(profile)}
        else:
            answer = {ui.server_status: status_markdown(services, profile),
                      ui.status_timer: page.timer_for(profile), ui.server: page.server_refresh()}
        if not page.views.picked(page_of(user, request), profile.id if profile else None):
            # Set out before the person picked another server, whose pick drew its own line
            # and set the timer for it: this answer would undo both.
            return {ui.server_status: gr.skip()}
        return answer

    @handler(services, "chat server list")
    def refresh_servers(_user: User, ref: Any) -> Any:
        return page.server_refresh()

    @handler(services, "typing a chat server")
    def typed(user: User, ref: Any, request: gr.Request) -> None:
        """A name typed into the picker and left there (no option picked, so no `select`):
        the page's pick is that profile now, and its status line follows it."""
        if isinstance(ref, str) and not ref.strip().isdigit():
            try:
                profile = page.maybe_profile(ref)
            except gr.Error:
                return  # names no profile: a send says so
            if profile is not None:
                page.views.pick(page_of(user, request), profile.id)

    ui.server.select(pick_server, [ui.server, ui.search, ui.shown],
                     [ui.server, ui.server_status, ui.chat_list, ui.chatbot, ui.current,
                      ui.title, ui.status_timer], api_name="chat_pick_server")
    ui.server.focus(refresh_servers, ui.server, ui.server, show_progress="hidden",
                    api_visibility="private")
    ui.server.blur(typed, ui.server, None, queue=False, show_progress="hidden",
                   api_visibility="private")
    ui.status_timer.tick(poll_status, ui.server, [ui.server_status, ui.status_timer, ui.server],
                         show_progress="hidden", api_visibility="private")
    return load, [ui.server, ui.server_status, ui.chat_list, ui.chatbot, ui.current, ui.title,
                  ui.status_timer, ui.history_server, ui.shown]

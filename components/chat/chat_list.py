"""The Chat tab's sidebar: one list of the signed-in user's chats (each with its server),
a server filter, searching them, opening one, starting a new one, renaming and deleting
(with a confirmation).

API endpoints take the filter as their server argument (a profile id or name, or "all");
events whose API names the server to talk to read the filter from `ui.shown`."""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.chat.page import ChatPage
from components.chat.page_views import page_of
from components.session import handler
from manager.accounts.auth import User


def wire(page: ChatPage) -> None:
    services, ui = page.services, page.ui
    chats = services.chats

    @handler(services, "chat list")
    def list_chats(user: User, shown: Any, search_text: str, chat_id: int | None) -> str:
        return page.sidebar(user, shown, search_text, chat_id)

    @handler(services, "filtering chats by server")
    def filter_chats(user: User, shown: Any, search_text: str, chat_id: int | None
                     ) -> dict[Any, Any]:
        return {ui.chat_list: page.sidebar(user, shown, search_text, chat_id),
                ui.shown: shown}

    @handler(services, "chat history servers")
    def refresh_filter(user: User, shown: Any) -> Any:
        return page.filter_refresh(user, shown)

    @handler(services, "opening a chat")
    def open_chat(user: User, chat_ref: Any, search_text: str, shown: Any,
                  request: gr.Request) -> dict[Any, Any]:
        return page.opened(user, page.read_chat(user, chat_ref), search_text, shown,
                           page_of(user, request))

    @handler(services, "opening a chat from the list")
    def open_from_list(user: User, search_text: str, shown: Any, evt: gr.EventData,
                       request: gr.Request) -> dict[Any, Any]:
        data = getattr(evt, "_data", None) or {}
        return page.opened(user, page.read_chat(user, data.get("chat")), search_text, shown,
                           page_of(user, request))

    @handler(services, "starting a new chat")
    def start_new(user: User, shown: Any, search_text: str, request: gr.Request
                  ) -> dict[Any, Any]:
        page.views.show(page_of(user, request), None)
        return page.emptied(user, shown, search_text)

    @handler(services, "renaming a chat")
    def rename_chat(user: User, chat_id: int | None, new_title: str, shown: Any,
                    search_text: str) -> dict[Any, Any]:
        chat = page.read_chat(user, chat_id)
        summary = chats.rename(user, chat.id, new_title or "")
        gr.Info(f"Renamed to “{summary.title}”.")
        return {ui.title: summary.title,
                ui.chat_list: page.sidebar(user, shown, search_text, chat.id)}

    @handler(services, "deleting a chat")
    def delete_chat(user: User, chat_id: int | None, shown: Any,
                    search_text: str, request: gr.Request) -> dict[Any, Any]:
        chat = page.read_chat(user, chat_id)
        chats.delete(user, chat.id)
        gr.Info(f"Deleted “{chat.summary.title}”.")
        page.views.show(page_of(user, request), None)
        return {**page.emptied(user, shown, search_text),
                ui.confirm_row: gr.Row(visible=False)}

    ui.search.input(list_chats, [ui.history_server, ui.search, ui.current], ui.chat_list,
                    trigger_mode="always_last", show_progress="hidden", api_name="chat_list")
    ui.history_server.change(filter_chats, [ui.history_server, ui.search, ui.current],
                             [ui.chat_list, ui.shown], show_progress="hidden",
                             api_visibility="private")
    # Servers the user chats with change as they chat: the choices are read on opening.
    ui.history_server.focus(refresh_filter, ui.history_server, ui.history_server,
                            show_progress="hidden", api_visibility="private")
    open_outputs = [ui.chatbot, ui.current, ui.title, ui.chat_list, ui.server,
                    ui.server_status]
    ui.chat_list.click(open_from_list, [ui.search, ui.shown], open_outputs,
                       api_visibility="private")
    ui.api_open.click(open_chat, [ui.api_chat_id, ui.search, ui.shown], open_outputs,
                      api_name="chat_open")
    new_outputs = [ui.chatbot, ui.current, ui.title, ui.chat_list]
    ui.new_chat.click(start_new, [ui.history_server, ui.search], new_outputs,
                      api_name="chat_new")
    ui.clear.click(start_new, [ui.history_server, ui.search], new_outputs,
                   api_name="chat_clear")
    # The Chatbot's own trash icon: the same as Clear (the saved chat stays in the list).
    ui.chatbot.clear(start_new, [ui.history_server, ui.search], new_outputs,
                     api_visibility="private")

    ui.rename.click(rename_chat, [ui.current, ui.title, ui.history_server, ui.search],
                    [ui.title, ui.chat_list], api_name="chat_rename")
    ui.delete.click(lambda: gr.Row(visible=True), None, ui.confirm_row,
                    api_visibility="private")
    ui.cancel_delete.click(lambda: gr.Row(visible=False), None, ui.confirm_row,
                           api_visibility="private")
    ui.confirm_delete.click(delete_chat, [ui.current, ui.history_server, ui.search],
                            [ui.chatbot, ui.current, ui.title, ui.chat_list, ui.confirm_row],
                            api_name="chat_delete")

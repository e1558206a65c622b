"""The dashboard shell: header, tabs, what fills them when a page opens, and the one
live feed that redraws them when something changes (components/live.py)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from components import (
    admin_tab,
    first_run,
    keys_tab,
    models_tab,
    profiles_tab,
    servers_tab,
    toolcheck_tab,
)
from components.chat.tab import build_page as build_chat
from components.live import LiveFeed, LivePart
from components.session import TabLoader, user_of
from components.views import admin_tab_label, header_html
from manager.accounts.auth import User
from manager.accounts.permissions import Action, allowed
from manager.changes import Topic
from manager.services import Services


def build_dashboard(services: Services) -> gr.Blocks:
    # No analytics: they would also ask the internet for the latest Gradio at every build.
    with gr.Blocks(title="MLX Model Manager", analytics_enabled=False) as demo:
        header = gr.HTML(header_html(None, 0), elem_id="mm-header")
        banner = first_run.build()
        with gr.Tabs() as tabs:
            with gr.Tab("Models", id="models"):
                load_models = models_tab.build(services)
            with gr.Tab("Profiles", id="profiles"):
                load_profiles = profiles_tab.build(services)
            with gr.Tab("Servers", id="servers"):
                load_servers = servers_tab.build(services)
            with gr.Tab("Chat", id="chat"):
                load_chat, chat_page = build_chat(services)
            with gr.Tab("Tool use", id="toolcheck"):
                load_toolcheck = toolcheck_tab.build(services)
            with gr.Tab("API keys", id="keys"):
                load_keys = keys_tab.build(services)
            with gr.Tab("Admin", id="admin", visible=False, elem_id="admin-tab") as admin:
                load_admin = admin_tab.build(services)
        first_run.wire(services, banner, tabs, chat_page)

        def shell(user: User) -> tuple:
            may_admin = allowed(user, Action.MANAGE_USERS)
            pending = services.auth.pending_count() if may_admin else 0
            tab = gr.Tab(visible=may_admin, label=admin_tab_label(pending))
            return header_html(user, pending), tab

        def on_open(request: gr.Request) -> dict[Any, Any]:
            shown_header, shown_tab = shell(user_of(services, request))
            return {header: shown_header, admin: shown_tab, **load_admin.fn(request),
                    **first_run.load_values(services, banner)}

        live = LiveFeed(services)
        # One load fills every tab and starts the live feed (components/live.py). Accounts
        # may also change through the CLI (another process): the header is redrawn on each
        # wait that ends without news too.
        live.add_loader(TabLoader(on_open, [header, admin, *load_admin.outputs, *banner.outputs],
                                  live=(LivePart(frozenset({Topic.ACCOUNTS}), shell,
                                                 [header, admin], on_timeout=True),
                                        *load_admin.live)))
        for loader in (load_models, load_profiles, load_servers, load_chat, load_keys,
                       load_toolcheck):
            live.add_loader(loader)
        live.attach(demo)
    return demo


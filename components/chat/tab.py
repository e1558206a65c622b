"""The Chat tab: pick a server, chat with streaming thinking / tool panels, keep chats.

The sidebar lists all the signed-in user's chats, each with its server, and a filter
narrows it to one server. The open chat's
id lives in a gr.State (kept on the server, per browser tab); a chat id that comes
from the page (the sidebar, the API) is only ever handed to `services.chats` with the
signed-in user as owner, so another user's id finds nothing. MCP servers are managed
in the Admin tab (components/mcp_admin.py).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.chat import chat_list, exports, picking, sending
from components.chat.layout import build_layout
from components.chat.page import ChatPage
from components.chat.page_views import page_key
from components.chat.status import status_markdown
from components.live import LivePart
from components.session import TabLoader
from manager.accounts.auth import User
from manager.changes import Topic
from manager.errors import NotFound
from manager.services import Services


def build(services: Services) -> TabLoader:
    return build_page(services)[0]


def build_page(services: Services) -> tuple[TabLoader, ChatPage]:
    """The tab, and its page for the parts outside it that open a chat (first_run)."""
    page = ChatPage(services, build_layout(services))
    load, outputs = picking.wire(page)
    chat_list.wire(page)
    sending.wire(page)
    exports.wire(page)

    def status_line(user: User, ref: Any, *, session: str | None) -> tuple[Any]:
        """The picked server's state line, redrawn when a server changes state; not for a
        server the page picked another over since this tick set out (the next tick, seeing
        the new pick, draws its line at once)."""
        try:
            profile = page.maybe_profile(ref)
        except NotFound:
            return (status_markdown(services, None),)
        if not page.views.picked(page_key(user, session),
                                 profile.id if profile is not None else None):
            return (gr.skip(),)
        return (status_markdown(services, profile),)

    def if_failed() -> dict[Any, Any]:
        """A failed load still leaves a picker to use (it is built disabled: layout.py)."""
        return {page.ui.server: page.server_update(None)}

    return TabLoader(load, outputs, if_failed=if_failed, live=(
        LivePart(frozenset({Topic.SERVERS}), status_line, [page.ui.server_status],
                 inputs=[page.ui.server], follows=[page.ui.server], with_session=True),)), page

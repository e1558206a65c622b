"""The Chat tab: pick a server, chat with streaming thinking / tool panels, keep chats.

The sidebar lists the signed-in user's chats for the selected server. The open chat's
id lives in a gr.State (kept on the server, per browser tab); a chat id that comes
from the page (the sidebar, the API) is only ever handed to `services.chats` with the
signed-in user as owner, so another user's id finds nothing. MCP servers are managed
in the Admin tab (components/mcp_admin.py).
"""

from __future__ import annotations

from components.chat import chat_list, exports, picking, sending
from components.chat.layout import build_layout
from components.chat.page import ChatPage
from components.session import TabLoader
from manager.services import Services


def build(services: Services) -> TabLoader:
    page = ChatPage(services, build_layout(services))
    load, outputs = picking.wire(page)
    chat_list.wire(page)
    sending.wire(page)
    exports.wire(page)
    return TabLoader(load, outputs)

"""The Chat tab's components: a sidebar (server, chats) and the conversation column.

Element ids are what the browser tests and API clients find things by: keep them.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from components.chat.status import status_markdown
from components.chat_view import CHAT_LIST_CSS, chat_list_html
from manager.chat.events import (
    DEFAULT_MAX_TOOL_ROUNDS,
    MAX_FRAMES,
    MAX_TOOL_ROUNDS,
    ChatOptions,
    VideoMode,
)
from manager.services import Services

STATUS_POLL_S = 1.5
#: The history filter's value that shows every server's chats.
ALL_SERVERS = "all"

# The sidebar is HTML: a click on a chat becomes a "click" event carrying its id.
CHAT_LIST_JS = """
element.addEventListener('click', (event) => {
  const item = event.target.closest('button[data-chat]');
  if (!item) return;
  trigger('click', {chat: item.dataset.chat});
});
"""


@dataclass(frozen=True)
class ChatUI:
    """Every component of the tab, by name, for the handlers and the wiring."""

    current: gr.State  # the open chat's id; set only after an owner-checked read
    #: The token of the message the box handed over (components/chat/outbox.py), hidden
    outbox: gr.Textbox
    shown: gr.State  # the history filter's value, for events whose API it must not change
    server: gr.Dropdown
    server_status: gr.Markdown
    new_chat: gr.Button
    search: gr.Textbox
    history_server: gr.Dropdown
    chat_list: gr.HTML
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm_delete: gr.Button
    cancel_delete: gr.Button
    chatbot: gr.Chatbot
    box: gr.MultimodalTextbox
    stop: gr.Button
    retry: gr.Button
    clear: gr.Button
    copy_md: gr.Button
    export_json: gr.Button
    markdown_out: gr.Textbox
    json_out: gr.File
    tools_on: gr.Checkbox
    max_rounds: gr.Slider
    max_frames: gr.Slider
    video_mode: gr.Radio
    show_tools: gr.Button
    tools_md: gr.Markdown
    status_timer: gr.Timer
    api_chat_id: gr.Textbox
    api_open: gr.Button
    api_send: gr.Button

    @property
    def send_options(self) -> list[gr.components.Component]:
        """The send options: tools, rounds, frames, video mode."""
        return [self.tools_on, self.max_rounds, self.max_frames, self.video_mode]

    @property
    def options(self) -> list[gr.components.Component]:
        """The send options, then the sidebar's search text (handlers take them last)."""
        return [*self.send_options, self.search]


def build_layout(services: Services) -> ChatUI:
    current = gr.State(None)
    outbox = gr.Textbox(visible=False, elem_id="chat-outbox")
    shown = gr.State(ALL_SERVERS)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            # Usable once the page load filled it: a pick made before that landed would
            # be replaced by the load's choice (picking.wire's `load`).
            server = gr.Dropdown(label="Server", choices=[], allow_custom_value=True,
                                 filterable=True, elem_id="chat-server", interactive=False,
                                 info="A Ready server, or a profile to start.")
            server_status = gr.Markdown(status_markdown(services, None),
                                        elem_id="chat-server-status")
            new_chat = gr.Button("New chat", variant="primary", size="sm", elem_id="chat-new")
            gr.Markdown("**Your chats**", elem_classes="mm-chats-heading")
            search = gr.Textbox(placeholder="Search chats", label="Search chats",
                                show_label=False, max_lines=1, elem_id="chat-search")
            # One list of the user's chats; the filter narrows it to one server.
            history_server = gr.Dropdown(label="Show chats with",
                                         choices=[("All servers", ALL_SERVERS)],
                                         value=ALL_SERVERS, allow_custom_value=True,
                                         elem_id="chat-history-server")
            chat_list = gr.HTML(chat_list_html([], None), elem_id="chat-list",
                                js_on_load=CHAT_LIST_JS, css_template=CHAT_LIST_CSS)
            with gr.Group():
                title = gr.Textbox(label="Title", max_lines=1, elem_id="chat-title")
                with gr.Row():
                    rename = gr.Button("Rename", size="sm", elem_id="chat-rename")
                    delete = gr.Button("Delete…", size="sm", variant="stop",
                                       elem_id="chat-delete")
            # Deleting is final, so it takes a second, explicit click.
            with gr.Row(visible=False) as confirm_row:
                gr.Markdown("**Delete this chat for good?** Its messages and files go too.")
                confirm_delete = gr.Button("Yes, delete", size="sm", variant="stop",
                                           elem_id="chat-confirm-delete")
                cancel_delete = gr.Button("Keep it", size="sm", elem_id="chat-cancel-delete")
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(label="Chat", height=560, elem_id="chat-bot",
                                 buttons=["copy", "copy_all"], feedback_options=None,
                                 placeholder="Pick a server and say hello. Drop images or "
                                             "videos on the box below to attach them.")
            box = gr.MultimodalTextbox(
                file_types=["image", "video"], file_count="multiple", sources=["upload"],
                placeholder="Message… (attach or drop images and videos)", show_label=False,
                elem_id="chat-input", autofocus=True)
            with gr.Row():
                # Grey and disabled at rest; red and clickable only while an answer is
                # being written (the turn's own updates switch it: sending.py).
                stop = gr.Button("Stop", size="sm", variant="secondary", interactive=False,
                                 elem_id="chat-stop")
                retry = gr.Button("Retry", size="sm", elem_id="chat-retry")
                clear = gr.Button("Clear", size="sm", elem_id="chat-clear")
                copy_md = gr.Button("Copy as Markdown", size="sm", elem_id="chat-copy-md")
                export_json = gr.Button("Export JSON", size="sm", elem_id="chat-export-json")
            markdown_out = gr.Textbox(label="This chat as Markdown", lines=8, max_lines=20,
                                      visible=False, buttons=["copy"],
                                      elem_id="chat-markdown")
            json_out = gr.File(label="This chat as JSON", visible=False,
                               elem_id="chat-json-file")
            with gr.Accordion("Options", open=False, elem_id="chat-options"):
                with gr.Row():
                    tools_on = gr.Checkbox(label="Tools (MCP)", value=True,
                                           elem_id="chat-tools")
                    max_rounds = gr.Slider(1, MAX_TOOL_ROUNDS, value=DEFAULT_MAX_TOOL_ROUNDS,
                                           step=1, label="Max tool rounds",
                                           elem_id="chat-max-rounds")
                    max_frames = gr.Slider(1, MAX_FRAMES, value=ChatOptions().max_frames,
                                           step=1, label="Video frames (for models "
                                           "without native video)",
                                           elem_id="chat-max-frames")
                    video_mode = gr.Radio(
                        [("Auto (native where the model reads video)", VideoMode.AUTO.value),
                         ("Always as frames", VideoMode.FRAMES.value)],
                        value=VideoMode.AUTO.value, label="Send videos",
                        elem_id="chat-video-mode")
                show_tools = gr.Button("List available tools", size="sm",
                                       elem_id="chat-list-tools")
                tools_md = gr.Markdown(elem_id="chat-tools-list")
    status_timer = gr.Timer(STATUS_POLL_S, active=False)
    # For API clients (and tests): open a chat by id, as a sidebar click does.
    with gr.Row(visible=False):
        api_chat_id = gr.Textbox(elem_id="chat-api-id")
        api_open = gr.Button("Open", elem_id="chat-api-open")
        # Sends a message in one event (the box's own submit takes two: sending.py).
        api_send = gr.Button("Send", elem_id="chat-api-send")
    return ChatUI(
        current=current, outbox=outbox, shown=shown, server=server, server_status=server_status, new_chat=new_chat,
        search=search, history_server=history_server, chat_list=chat_list, title=title, rename=rename, delete=delete,
        confirm_row=confirm_row, confirm_delete=confirm_delete, cancel_delete=cancel_delete,
        chatbot=chatbot, box=box, stop=stop, retry=retry, clear=clear, copy_md=copy_md,
        export_json=export_json, markdown_out=markdown_out, json_out=json_out,
        tools_on=tools_on, max_rounds=max_rounds, max_frames=max_frames,
        video_mode=video_mode, show_tools=show_tools, tools_md=tools_md,
        status_timer=status_timer, api_chat_id=api_chat_id, api_open=api_open,
        api_send=api_send)

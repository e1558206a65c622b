"""The Chat tab: pick a server, chat with streaming thinking / tool panels, keep chats.

The sidebar lists the signed-in user's chats for the selected server. The open chat's
id lives in a gr.State (kept on the server, per browser tab); a chat id that comes
from the page (the sidebar, the API) is only ever handed to `services.chats` with the
signed-in user as owner, so another user's id finds nothing. Admins get an accordion
to add, enable, disable and remove extra MCP servers; `services.tools` checks the role
again for every action.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import gradio as gr

from components.chat_view import CHAT_LIST_CSS, TurnView, chat_list_html, chatbot_messages
from components.session import TabLoader, user_of
from manager.accounts.auth import User
from manager.chat.attachments import uploaded_file
from manager.chat.events import (
    DEFAULT_MAX_TOOL_ROUNDS,
    MAX_FRAMES,
    MAX_TOOL_ROUNDS,
    ChatEventKind,
    ChatOptions,
    EventStream,
    VideoMode,
)
from manager.chat.history import Chat
from manager.chat.mcp_config import ServerKind, parse_args
from manager.errors import ManagerError, ValidationError
from manager.servers.profiles import Profile
from manager.servers.supervisor import ACTIVE_STATES, ServerSnapshot, ServerState
from manager.services import Services

log = logging.getLogger(__name__)

#: How often a streaming answer is pushed to the page (structural events go at once).
PUSH_EVERY_S = 0.08
STATUS_POLL_S = 1.5
EXPORTS_DIR = Path(tempfile.gettempdir()) / "mlx-manager-exports"
EXPORT_KEEP_S = 3600.0
#: How long Stop waits for the stopped generation to save its partial answer.
STOP_WAIT_S = 10.0
#: Generations that may stream at the same time (each waits on its own server).
CHAT_CONCURRENCY = 16
_STRUCTURAL = frozenset({
    ChatEventKind.USER, ChatEventKind.ROUND, ChatEventKind.THINKING_STARTED,
    ChatEventKind.THINKING_ENDED, ChatEventKind.TOOL_STARTED, ChatEventKind.TOOL_FINISHED,
    ChatEventKind.ERROR, ChatEventKind.DONE,
})
_STATE_ICONS = {ServerState.READY: "🟢", ServerState.STARTING: "⏳",
                ServerState.STOPPING: "⏳", ServerState.FAILED: "🔴",
                ServerState.STOPPED: "⚪"}
MCP_COLUMNS = ["ID", "Name", "Kind", "Runs / URL", "Enabled", "Tools"]

# The sidebar is HTML: a click on a chat becomes a "click" event carrying its id.
CHAT_LIST_JS = """
element.addEventListener('click', (event) => {
  const item = event.target.closest('button[data-chat]');
  if (!item) return;
  trigger('click', {chat: item.dataset.chat});
});
"""
# Best effort: the clipboard API exists only on https:// and localhost pages.
COPY_JS = """
(text) => {
  if (text && navigator.clipboard) { navigator.clipboard.writeText(text).catch(() => {}); }
  return [];
}
"""


def _error(exc: ManagerError, what: str = "chat action") -> gr.Error:
    """The message for the page; the refusal is logged with what was asked."""
    log.info("%s refused: %s", what, exc.message)
    return gr.Error(exc.message)


def _snapshot(services: Services, profile: Profile) -> ServerSnapshot | None:
    return services.supervisor.snapshot(profile.id)


def _state(services: Services, profile: Profile) -> ServerState:
    snap = _snapshot(services, profile)
    return snap.state if snap is not None else ServerState.STOPPED


def server_choices(services: Services) -> list[tuple[str, int]]:
    """Every profile, Ready servers first, labelled with its server's state."""
    rows = []
    for profile in services.profiles.list():
        state = _state(services, profile)
        rank = 0 if state is ServerState.READY else 1 if state in ACTIVE_STATES else 2
        rows.append((rank, profile.name.casefold(),
                     (f"{profile.name} · {state.label}", profile.id)))
    return [choice for *_, choice in sorted(rows)]


def status_markdown(services: Services, profile: Profile | None, *, started: bool = False
                    ) -> str:
    if profile is None:
        return "Pick a server (a profile that is not running is started for you)."
    snap = _snapshot(services, profile)
    state = snap.state if snap is not None else ServerState.STOPPED
    icon = _STATE_ICONS.get(state, "")
    name = f"**{profile.name}**"
    if state is ServerState.READY:
        return f"{icon} {name} is ready."
    if state is ServerState.STARTING:
        waited = ""
        if snap is not None and snap.started_at is not None:
            waited = f" ({time.time() - snap.started_at:.0f} s so far)"
        lead = f"Started {name} for you: it" if started else f"{name}"
        return (f"{icon} {lead} is loading its model{waited}. You can type now: the message "
                "goes out when it is ready.")
    if state is ServerState.FAILED:
        reason = snap.reason if snap is not None else ""
        return f"{icon} {name} failed: {reason} Pick it again to restart it."
    if state is ServerState.STOPPING:
        return f"{icon} {name} is stopping."
    return f"{icon} {name} is stopped."


def _files_of(box: Any) -> tuple[str, list[Path]]:
    """Text and attachment paths from a MultimodalTextbox value; every path must be in
    Gradio's upload folder (raises NotUploaded before anything opens it)."""
    if not isinstance(box, dict):
        return (box or "") if isinstance(box, str) else "", []
    files = []
    for item in box.get("files") or []:
        path = item.get("path") if isinstance(item, dict) else item
        if path:
            files.append(uploaded_file(str(path), [gr.utils.get_upload_folder()]))
    return str(box.get("text") or ""), files


def remove_old_exports(root: Path, older_than_s: float) -> None:
    cutoff = time.time() - older_than_s
    for folder in root.iterdir():
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder)
        except OSError as exc:  # another dashboard removing it too, permissions
            log.warning("could not remove old export %s: %s", folder, exc)


def _export_name(title: str, suffix: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", title).strip("-.")[:60] or "chat"
    return f"{stem}{suffix}"


def build(services: Services) -> TabLoader:
    engine = services.chat_engine
    chats = services.chats

    # -- layout ---------------------------------------------------------------------------
    current = gr.State(None)  # the open chat's id; set only after an owner-checked read
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=260):
            server = gr.Dropdown(label="Server", choices=[], allow_custom_value=True,
                                 filterable=True, elem_id="chat-server",
                                 info="A Ready server, or a profile to start.")
            server_status = gr.Markdown(status_markdown(services, None),
                                        elem_id="chat-server-status")
            new_chat = gr.Button("New chat", variant="primary", size="sm", elem_id="chat-new")
            search = gr.Textbox(placeholder="Search chats", show_label=False, max_lines=1,
                                elem_id="chat-search")
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
                stop = gr.Button("Stop", size="sm", variant="stop", elem_id="chat-stop")
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
            with gr.Accordion("MCP servers (admins)", open=False, visible=False,
                              elem_id="chat-mcp") as mcp_box:
                mcp_table = gr.Dataframe(headers=MCP_COLUMNS, interactive=False, wrap=True,
                                         elem_id="mcp-table")
                with gr.Row():
                    mcp_name = gr.Textbox(label="Name", max_lines=1, elem_id="mcp-name")
                    mcp_kind = gr.Radio([("stdio command", ServerKind.STDIO.value),
                                         ("streamable HTTP URL", ServerKind.HTTP.value)],
                                        value=ServerKind.STDIO.value, label="Kind",
                                        elem_id="mcp-kind")
                with gr.Row():
                    mcp_command = gr.Textbox(label="Command (stdio)", max_lines=1,
                                             elem_id="mcp-command")
                    mcp_args = gr.Textbox(label="Arguments (stdio, split like a shell)",
                                          max_lines=1, elem_id="mcp-args")
                    mcp_url = gr.Textbox(label="URL (http)", max_lines=1,
                                         placeholder="http://127.0.0.1:8000/mcp",
                                         elem_id="mcp-url")
                mcp_add = gr.Button("Add server", variant="primary", size="sm",
                                    elem_id="mcp-add")
                with gr.Row():
                    mcp_pick = gr.Dropdown(label="Server", choices=[], allow_custom_value=True,
                                           elem_id="mcp-pick")
                    mcp_enable = gr.Button("Enable", size="sm", elem_id="mcp-enable")
                    mcp_disable = gr.Button("Disable", size="sm", elem_id="mcp-disable")
                    mcp_remove = gr.Button("Remove", size="sm", variant="stop",
                                           elem_id="mcp-remove")
                mcp_refresh = gr.Button("Refresh and list their tools", size="sm",
                                        elem_id="mcp-refresh")
                mcp_result = gr.Markdown(elem_id="mcp-result")
    status_timer = gr.Timer(STATUS_POLL_S, active=False)
    # For API clients (and tests): open a chat by id, as a sidebar click does.
    with gr.Row(visible=False):
        api_chat_id = gr.Textbox(elem_id="chat-api-id")
        api_open = gr.Button("Open", elem_id="chat-api-open")

    # -- helpers ----------------------------------------------------------------------------

    def profile_of(ref: Any) -> Profile:
        if ref is None or str(ref).strip() == "":
            raise gr.Error("Pick a server first.")
        try:
            return services.profiles.find(ref if isinstance(ref, int) else str(ref).strip())
        except ManagerError as exc:
            raise _error(exc, f"server {ref!r}") from exc

    def maybe_profile(ref: Any) -> Profile | None:
        if ref is None or str(ref).strip() == "":
            return None
        return profile_of(ref)

    def options_of(tools: bool, rounds: float | None, frames: float | None,
                   video: str | None) -> ChatOptions:
        try:
            return ChatOptions(
                tools=bool(tools),
                max_tool_rounds=int(rounds if rounds is not None else DEFAULT_MAX_TOOL_ROUNDS),
                max_frames=int(frames if frames is not None else ChatOptions().max_frames),
                video_mode=VideoMode(video or VideoMode.AUTO.value)).checked()
        except ValueError as exc:  # ValidationError, or an unknown video mode
            message = exc.message if isinstance(exc, ValidationError) else \
                "Pick how videos are sent: auto or frames."
            log.info("chat options refused: %s", exc)
            raise gr.Error(message) from exc

    def sidebar(user: User, profile: Profile | None, search_text: str,
                chat_id: int | None) -> str:
        if profile is None:
            return chat_list_html([], None)
        found = chats.list(user, profile.id, search=search_text or "")
        return chat_list_html(found, chat_id, search=search_text or "", server=profile.name)

    def read_chat(user: User, chat_id: Any) -> Chat:
        if chat_id is None or not str(chat_id).strip().isdigit():
            raise gr.Error("Open a chat first.")
        try:
            return chats.get(user, int(str(chat_id).strip()))
        except ManagerError as exc:
            raise _error(exc, f"chat {chat_id!r} for {user.email}") from exc

    def server_update(profile: Profile | None) -> Any:
        return gr.Dropdown(choices=server_choices(services),
                           value=profile.id if profile is not None else None)

    def timer_for(profile: Profile | None) -> gr.Timer:
        starting = profile is not None and _state(services, profile) is ServerState.STARTING
        return gr.Timer(active=starting)

    def opened(user: User, chat: Chat, search_text: str) -> tuple:
        """Outputs of showing a chat: chatbot, current, title, sidebar, and its server
        (a chat goes on with the server it was started with)."""
        profile = _profile_of_chat(chat.summary.profile_id)
        return (chatbot_messages(chat.messages), chat.id, chat.summary.title,
                sidebar(user, profile, search_text, chat.id), server_update(profile),
                status_markdown(services, profile))

    def _profile_of_chat(profile_id: int | None) -> Profile | None:
        if profile_id is None:
            return None
        try:
            return services.profiles.get(profile_id)
        except ManagerError:
            log.info("chat profile %s is gone", profile_id)
            return None

    # -- loading and picking --------------------------------------------------------------

    def load(request: gr.Request) -> tuple:
        user = user_of(services, request)
        recent = chats.list(user)
        profile = _profile_of_chat(recent[0].profile_id) if recent else None
        if profile is None:
            profile = next((p for p in services.profiles.list()
                            if _state(services, p) is ServerState.READY), None)
        chat_view, chat_id, chat_title = [], None, ""
        if profile is not None and recent and recent[0].profile_id == profile.id:
            chat = chats.get(user, recent[0].id)
            chat_view, chat_id, chat_title = (chatbot_messages(chat.messages), chat.id,
                                              chat.summary.title)
        mcp = mcp_snapshot(user, list_tools=False) if user.is_admin else ([], gr.Dropdown())
        return (server_update(profile), status_markdown(services, profile),
                sidebar(user, profile, "", chat_id), chat_view, chat_id, chat_title,
                timer_for(profile), gr.Accordion(visible=user.is_admin), *mcp)

    def pick_server(ref: Any, search_text: str, request: gr.Request) -> tuple:
        user = user_of(services, request)
        profile = profile_of(ref)
        started = False
        if _state(services, profile) not in ACTIVE_STATES:
            try:
                services.supervisor.start(profile.id, by=user.email)
            except ManagerError as exc:
                raise _error(exc, f"starting {profile.name} for {user.email}") from exc
            started = True
            log.info("%s started %s from the chat tab", user.email, profile.name)
        return (server_update(profile), status_markdown(services, profile, started=started),
                sidebar(user, profile, search_text, None), [], None, "",
                timer_for(profile))

    def poll_status(ref: Any, request: gr.Request) -> tuple:
        user_of(services, request)
        profile = maybe_profile(ref)
        timer = timer_for(profile)
        if profile is not None and _state(services, profile) is ServerState.STARTING:
            return status_markdown(services, profile, started=True), timer, gr.skip()
        return status_markdown(services, profile), timer, server_update(profile)

    def refresh_servers(ref: Any, request: gr.Request) -> Any:
        user_of(services, request)
        return gr.Dropdown(choices=server_choices(services))

    def list_chats(ref: Any, search_text: str, chat_id: int | None,
                   request: gr.Request) -> str:
        user = user_of(services, request)
        return sidebar(user, maybe_profile(ref), search_text, chat_id)

    def open_chat(chat_ref: Any, search_text: str, request: gr.Request) -> tuple:
        user = user_of(services, request)
        chat = read_chat(user, chat_ref)
        return opened(user, chat, search_text)

    def open_from_list(search_text: str, evt: gr.EventData, request: gr.Request) -> tuple:
        data = getattr(evt, "_data", None) or {}
        return open_chat(data.get("chat"), search_text, request)

    def start_new(ref: Any, search_text: str, request: gr.Request) -> tuple:
        user = user_of(services, request)
        return [], None, "", sidebar(user, maybe_profile(ref), search_text, None)

    # -- chatting ----------------------------------------------------------------------------

    def stream(user: User, chat_id: int, history: Sequence[Any], events: EventStream,
               search_text: str, profile: Profile) -> Iterator[tuple]:
        """Push the turn to the page as it happens, then show exactly what was saved."""
        view = TurnView(history)
        pushed = 0.0
        with closing(events):
            try:
                for event in events:
                    view.apply(event)
                    now = time.monotonic()
                    if event.kind in _STRUCTURAL or now - pushed >= PUSH_EVERY_S:
                        pushed = now
                        yield view.messages(), gr.skip(), gr.skip(), gr.skip()
            except ManagerError as exc:
                raise _error(exc, f"chat {chat_id} of {user.email}") from exc
        chat = chats.get(user, chat_id)
        yield (chatbot_messages(chat.messages), chat.summary.title,
               sidebar(user, profile, search_text, chat_id), status_markdown(services, profile))

    def send(box_value: Any, ref: Any, chat_id: int | None, tools: bool, rounds: float,
             frames: float, video: str, search_text: str, request: gr.Request
             ) -> Iterator[tuple]:
        user = user_of(services, request)
        profile = profile_of(ref)
        options = options_of(tools, rounds, frames, video)
        try:
            text, files = _files_of(box_value)
            prepared = engine.prepare(profile.id, text, files, options)
            chat = chats.get(user, int(chat_id)) if chat_id is not None else None
            summary = chat.summary if chat is not None else engine.start_chat(user, profile)
            started = _state(services, profile) not in ACTIVE_STATES
            if started:
                # A stopped or failed server is started; the message waits for it.
                services.supervisor.start(profile.id, by=user.email)
        except ManagerError as exc:
            # Nothing was sent or saved; the box keeps the message to fix it.
            raise _error(exc, f"message of {user.email} to {profile.name}") from exc
        history = list(chat.messages) if chat is not None else []
        yield (chatbot_messages(history), summary.id, gr.MultimodalTextbox(value=None),
               summary.title, sidebar(user, profile, search_text, summary.id),
               status_markdown(services, profile, started=True) if started else gr.skip())
        for shown, *rest in stream(user, summary.id, history,
                                   engine.send(user, summary.id, prepared, options),
                                   search_text, profile):
            yield (shown, gr.skip(), gr.skip(), *rest)

    def retry_turn(ref: Any, chat_id: int | None, tools: bool, rounds: float, frames: float,
                   video: str, search_text: str, request: gr.Request) -> Iterator[tuple]:
        user = user_of(services, request)
        profile = profile_of(ref)
        options = options_of(tools, rounds, frames, video)
        if chat_id is None:
            raise gr.Error("Nothing to retry yet: send a message first.")
        chat = read_chat(user, chat_id)
        last_user = next((m for m in reversed(chat.messages) if m.role == "user"), None)
        if last_user is None:
            raise gr.Error("Nothing to retry yet: send a message first.")
        history = [m for m in chat.messages if m.position <= last_user.position]
        yield from stream(user, chat.id, history,
                          engine.retry(user, chat.id, profile.id, options), search_text,
                          profile)

    def after_stop(chat_id: int | None, request: gr.Request) -> Any:
        """Show what was saved when the user stopped (the partial answer, marked)."""
        user = user_of(services, request)
        if chat_id is None:
            return gr.skip()
        chat = read_chat(user, chat_id)
        # Gradio closes the stopped generation right after this event starts; it saves
        # the partial answer as it closes.
        if not engine.wait_idle(chat.id, STOP_WAIT_S):
            log.warning("chat %s still answering %.0f s after Stop", chat.id, STOP_WAIT_S)
        return chatbot_messages(read_chat(user, chat.id).messages)

    # -- chat management ----------------------------------------------------------------------

    def rename_chat(chat_id: int | None, new_title: str, ref: Any, search_text: str,
                    request: gr.Request) -> tuple:
        user = user_of(services, request)
        chat = read_chat(user, chat_id)
        try:
            summary = chats.rename(user, chat.id, new_title or "")
        except ManagerError as exc:
            raise _error(exc, f"renaming chat {chat.id}") from exc
        gr.Info(f"Renamed to “{summary.title}”.")
        return summary.title, sidebar(user, maybe_profile(ref), search_text, chat.id)

    def delete_chat(chat_id: int | None, ref: Any, search_text: str,
                    request: gr.Request) -> tuple:
        user = user_of(services, request)
        chat = read_chat(user, chat_id)
        try:
            chats.delete(user, chat.id)
        except ManagerError as exc:
            raise _error(exc, f"deleting chat {chat.id}") from exc
        gr.Info(f"Deleted “{chat.summary.title}”.")
        return ([], None, "", sidebar(user, maybe_profile(ref), search_text, None),
                gr.Row(visible=False))

    def export_markdown(chat_id: int | None, request: gr.Request) -> str:
        user = user_of(services, request)
        chat = read_chat(user, chat_id)
        return chats.export_markdown(user, chat.id)

    def export_file(chat_id: int | None, request: gr.Request) -> str:
        user = user_of(services, request)
        chat = read_chat(user, chat_id)
        data = chats.export_json(user, chat.id)
        # Gradio serves a returned file from its own cache (it copies it there); a fresh
        # folder keeps names apart, and folders older than an hour are removed.
        EXPORTS_DIR.mkdir(parents=True, exist_ok=True)
        remove_old_exports(EXPORTS_DIR, EXPORT_KEEP_S)
        folder = Path(tempfile.mkdtemp(dir=EXPORTS_DIR))
        path = folder / _export_name(chat.summary.title, ".json")
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        return str(path)

    def list_tools(request: gr.Request) -> str:
        user_of(services, request)
        toolset = services.tools.toolset()
        lines = [f"- **{t.name}** ({t.server}): {t.description}" for t in toolset.tools]
        lines += [f"- ⚠️ MCP server *{p.server}*: {p.message}" for p in toolset.problems]
        return "\n".join(lines) or "No tools are available."

    # -- MCP servers (admins) -------------------------------------------------------------------

    def mcp_snapshot(actor: User, *, list_tools: bool) -> tuple:
        configs = services.tools.servers(actor)
        by_server: dict[str, list[str]] = {}
        problems: dict[str, str] = {}
        if list_tools:
            toolset = services.tools.toolset()
            for tool in toolset.tools:
                by_server.setdefault(tool.server, []).append(tool.name)
            problems = {p.server: p.message for p in toolset.problems}
        rows = []
        for config in configs:
            if not list_tools:
                tools = "(press Refresh)"
            elif not config.enabled:
                tools = "(disabled)"
            else:
                tools = problems.get(config.name) or ", ".join(by_server.get(config.name, [])) \
                    or "(none)"
            rows.append([config.id if config.id is not None else "", config.name,
                         config.kind.value, config.target, "yes" if config.enabled else "no",
                         tools])
        choices = [(f"{c.name} ({'on' if c.enabled else 'off'})", c.id) for c in configs
                   if c.id is not None]
        return rows, gr.Dropdown(choices=choices)

    def mcp_add_server(server_name: str, kind: str, command: str, arg_line: str, url: str,
                       request: gr.Request) -> tuple:
        actor = user_of(services, request)
        try:
            config = services.tools.add_server(
                actor, server_name or "", kind or ServerKind.STDIO.value,
                command=command or None, args=parse_args(arg_line or ""), url=url or None)
            return (*mcp_snapshot(actor, list_tools=True),
                    f"Added the MCP server **{config.name}**.")
        except ManagerError as exc:
            raise _error(exc, f"adding an MCP server by {actor.email}") from exc

    def mcp_change(action: str) -> Any:
        def handler(ref: Any, request: gr.Request) -> tuple:
            actor = user_of(services, request)
            if ref is None or not str(ref).strip().isdigit():
                raise gr.Error("Pick an MCP server first.")
            server_id = int(str(ref).strip())
            try:
                if action == "remove":
                    services.tools.remove_server(actor, server_id)
                    message = "Removed."
                else:
                    config = services.tools.set_enabled(actor, server_id, action == "enable")
                    message = f"**{config.name}** is {'on' if config.enabled else 'off'}."
                return (*mcp_snapshot(actor, list_tools=action != "remove"), message)
            except ManagerError as exc:
                raise _error(exc, f"MCP {action} by {actor.email}") from exc

        return handler

    def mcp_refresh_all(request: gr.Request) -> tuple:
        actor = user_of(services, request)
        try:
            return (*mcp_snapshot(actor, list_tools=True), "")
        except ManagerError as exc:
            raise _error(exc, f"listing MCP servers for {actor.email}") from exc

    # -- events ---------------------------------------------------------------------------------

    options_inputs = [tools_on, max_rounds, max_frames, video_mode, search]
    server.select(pick_server, [server, search],
                          [server, server_status, chat_list, chatbot, current, title,
                           status_timer], api_name="chat_pick_server")
    server.focus(refresh_servers, server, server, show_progress="hidden",
                 api_visibility="private")
    status_timer.tick(poll_status, server, [server_status, status_timer, server],
                      show_progress="hidden", api_visibility="private")
    search.input(list_chats, [server, search, current], chat_list, trigger_mode="always_last",
                 show_progress="hidden", api_name="chat_list")
    open_outputs = [chatbot, current, title, chat_list, server, server_status]
    chat_list.click(open_from_list, search, open_outputs, api_visibility="private")
    api_open.click(open_chat, [api_chat_id, search], open_outputs, api_name="chat_open")
    new_outputs = [chatbot, current, title, chat_list]
    new_chat.click(start_new, [server, search], new_outputs, api_name="chat_new")
    clear.click(start_new, [server, search], new_outputs, api_name="chat_clear")
    # The Chatbot's own trash icon: the same as Clear (the saved chat stays in the list).
    chatbot.clear(start_new, [server, search], new_outputs, api_visibility="private")

    sent = box.submit(send, [box, server, current, *options_inputs],
                      [chatbot, current, box, title, chat_list, server_status],
                      api_name="chat_send", concurrency_limit=CHAT_CONCURRENCY,
                      show_progress="minimal")
    retried = retry.click(retry_turn, [server, current, *options_inputs],
                          [chatbot, title, chat_list, server_status], api_name="chat_retry",
                          concurrency_limit=CHAT_CONCURRENCY, show_progress="minimal")
    # The page sends the cancel once the click's own event is done: keep that event empty,
    # then show what the stopped turn saved.
    stop.click(None, None, None, cancels=[sent, retried]).then(
        after_stop, current, chatbot, api_name="chat_stop")

    rename.click(rename_chat, [current, title, server, search], [title, chat_list],
                 api_name="chat_rename")
    delete.click(lambda: gr.Row(visible=True), None, confirm_row, api_visibility="private")
    cancel_delete.click(lambda: gr.Row(visible=False), None, confirm_row,
                        api_visibility="private")
    confirm_delete.click(delete_chat, [current, server, search],
                         [chatbot, current, title, chat_list, confirm_row],
                         api_name="chat_delete")
    copy_md.click(export_markdown, current, markdown_out, api_name="chat_export_markdown"
                  ).success(lambda: gr.Textbox(visible=True), None, markdown_out,
                            api_visibility="private"
                  ).then(None, markdown_out, None, js=COPY_JS)
    export_json.click(export_file, current, json_out, api_name="chat_export_json"
                      ).success(lambda: gr.File(visible=True), None, json_out,
                                api_visibility="private")
    show_tools.click(list_tools, None, tools_md, api_name="chat_tools")

    mcp_outputs = [mcp_table, mcp_pick, mcp_result]
    mcp_add.click(mcp_add_server, [mcp_name, mcp_kind, mcp_command, mcp_args, mcp_url],
                  mcp_outputs, api_name="mcp_add")
    for action, button in (("enable", mcp_enable), ("disable", mcp_disable),
                           ("remove", mcp_remove)):
        button.click(mcp_change(action), mcp_pick, mcp_outputs, api_name=f"mcp_{action}")
    mcp_refresh.click(mcp_refresh_all, None, mcp_outputs, api_name="mcp_servers")
    return TabLoader(load, [server, server_status, chat_list, chatbot, current, title,
                            status_timer, mcp_box, mcp_table, mcp_pick])

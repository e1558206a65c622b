"""What the Chat tab shows, as pure functions: saved messages (and the reply being
streamed) -> Chatbot messages with thinking and tool panels; chats -> the sidebar list.

One renderer serves both: a saved chat after a reload and a reply while it streams
(`TurnView` folds the engine's events into drafts shaped like saved messages), so a
chat comes back exactly as it was shown.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from components.inert_markdown import inert_markdown
from manager.chat.events import NOT_RUN, AnswerStats, ChatEvent, ChatEventKind, ToolCall
from manager.chat.history import Attachment, ChatSummary, Message
from manager.units import format_duration

log = logging.getLogger(__name__)

K = ChatEventKind
THINKING_TITLE = "Thinking…"
EMPTY_ANSWER = "*(The answer has no text.)*"
_FENCE = re.compile(r"`{3,}")


@dataclass
class Draft:
    """A message being streamed; the same fields as a saved `Message`."""

    role: str
    content: str = ""
    thinking: str | None = None
    thinking_seconds: float | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    live: bool = True  # tool calls without a result yet are "running"
    thinking_live: bool = False

    @classmethod
    def of(cls, message: Message) -> Draft:
        return cls(role=message.role, content=message.content, thinking=message.thinking,
                   thinking_seconds=message.thinking_seconds,
                   tool_calls=list(message.tool_calls), tool_call_id=message.tool_call_id,
                   tool_name=message.tool_name, meta=dict(message.meta),
                   attachments=message.attachments, live=False)


Shown = Message | Draft


# --- messages -> chatbot -------------------------------------------------------------------


def fenced(text: str, lang: str = "") -> str:
    """A Markdown code block that the text cannot close early."""
    longest = max((len(m) for m in _FENCE.findall(text)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def pretty_arguments(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError as exc:  # the model wrote arguments that are not JSON: show them as is
        log.debug("tool arguments are not JSON (%s): %.80r", exc, arguments)
        return arguments


def thinking_title(seconds: float | None, *, unfinished: bool = False) -> str:
    if seconds is None:
        return "Thought" + (" (cut off)" if unfinished else "")
    # The duration is in the title, in the one format (units.py); Gradio's own
    # "duration" suffix would add a second one in another format ("30.0ms").
    title = f"Thought for {format_duration(seconds)}"
    return title + " (cut off before it finished)" if unfinished else title


def stats_line(meta: Mapping[str, Any]) -> str:
    stats = AnswerStats.from_meta(meta)
    if stats is None or "completion_tokens" not in meta:
        return ""
    return f"<small>{html.escape(stats.label())}</small>"


def _user_message(message: Shown) -> list[dict[str, Any]]:
    content: list[Any] = [
        {"path": str(a.path), "orig_name": a.name, "mime_type": a.mime}
        for a in message.attachments
    ]
    text = inert_markdown(message.content)
    notes = [f"*ℹ️ {html.escape(n)}*" for n in message.meta.get("notes", [])]
    if notes:
        text = "\n\n".join([t for t in (text, *notes) if t])
    if text:
        content.append(text)
    if len(content) == 1:
        return [{"role": "user", "content": content[0]}]
    return [{"role": "user", "content": content}]


def _tool_panel(call: ToolCall, result: Shown | None, live: bool) -> dict[str, Any]:
    body = f"**Arguments**\n\n{fenced(pretty_arguments(call.arguments), 'json')}"
    metadata: dict[str, Any] = {}
    if result is None:
        if live:
            metadata = {"title": f"🛠️ Calling {call.name}…", "status": "pending"}
        else:
            metadata = {"title": f"🛠️ {call.name} (not run)", "status": "done"}
            body += "\n\n*Not run: the chat was stopped first.*"
        return {"role": "assistant", "content": body, "metadata": metadata}
    status = result.meta.get("status", "ok")
    if status == "ok":
        title = f"🛠️ Used {call.name}"
    elif status == NOT_RUN:
        title = f"🛠️ {call.name} (not run)"
    else:
        title = f"🛠️ {call.name} failed"
    metadata = {"title": title, "status": "done"}
    seconds = result.meta.get("seconds")
    if isinstance(seconds, (int, float)):
        metadata["duration"] = round(float(seconds), 3)
    server = result.meta.get("server")
    if server:
        metadata["log"] = f"MCP server: {server}"
    body += f"\n\n**Result**\n\n{fenced(result.content)}"
    return {"role": "assistant", "content": body, "metadata": metadata}


def _assistant_messages(message: Shown, results: Mapping[str, Shown]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    meta = message.meta
    live = isinstance(message, Draft) and message.live
    for note in meta.get("notes", []):
        out.append({"role": "assistant", "content": f"*ℹ️ {html.escape(note)}*"})
    thinking_live = isinstance(message, Draft) and message.thinking_live
    if message.thinking or thinking_live:
        if thinking_live:
            metadata: dict[str, Any] = {"title": THINKING_TITLE, "status": "pending"}
        else:
            seconds = message.thinking_seconds
            metadata = {"title": thinking_title(
                seconds, unfinished=bool(meta.get("thinking_unfinished"))), "status": "done"}
        out.append({"role": "assistant", "content": inert_markdown(message.thinking or ""),
                    "metadata": metadata})
    finished_empty = not live and not message.tool_calls and not meta.get("error")
    if message.content.strip() or finished_empty:
        text = inert_markdown(message.content) if message.content.strip() else EMPTY_ANSWER
        stats = "" if live else stats_line(meta)
        if stats:
            text = f"{text}\n\n{stats}"
        out.append({"role": "assistant", "content": text})
    for raw in message.tool_calls:
        call = ToolCall.from_openai(raw)
        out.append(_tool_panel(call, results.get(call.id), live))
    error = meta.get("error")
    if error:
        icon = "⏹️" if meta.get("stopped") else "⚠️"
        out.append({"role": "assistant", "content": f"{icon} {inert_markdown(error)}"})
    return out


def chatbot_messages(messages: Sequence[Shown]) -> list[dict[str, Any]]:
    """Chatbot (messages format) entries for saved and streaming messages."""
    results = {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}
    called = {ToolCall.from_openai(c).id for m in messages for c in m.tool_calls}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "user":
            out += _user_message(message)
        elif message.role == "assistant":
            out += _assistant_messages(message, results)
        elif message.role == "tool" and message.tool_call_id not in called:
            # A result whose call is not shown (should not happen): show it on its own.
            call = ToolCall(message.tool_call_id or "", message.tool_name or "tool",
                            str(message.meta.get("arguments", "{}")))
            out.append(_tool_panel(call, message, False))
        elif message.role == "system":
            out.append({"role": "assistant",
                        "content": f"*System: {inert_markdown(message.content)}*"})
    return out


class TurnView:
    """Folds a turn's events into drafts on top of the saved history."""

    def __init__(self, history: Sequence[Message]) -> None:
        self._history = list(history)
        self.items: list[Shown] = []
        self._current: Draft | None = None
        self._current_index: int | None = None
        self._pending_notes: list[str] = []

    def apply(self, event: ChatEvent) -> None:
        kind = event.kind
        if kind is K.USER and event.message is not None:
            self.items.append(event.message)
        elif kind is K.NOTE:
            if event.message is None:  # notes of the user's message are shown with it
                self._pending_notes.append(event.text)
        elif kind is K.ROUND:
            self._current = Draft("assistant", meta={"notes": self._pending_notes}
                                  if self._pending_notes else {})
            self._pending_notes = []
            self._current_index = len(self.items)
            self.items.append(self._current)
        elif kind is K.ERROR:
            draft = self._draft()
            draft.meta["error"] = event.text
            draft.live = False
        elif kind is K.DONE:
            for item in self.items:
                if isinstance(item, Draft):
                    item.live = False
        else:
            self._apply_to_reply(event)

    def _apply_to_reply(self, event: ChatEvent) -> None:
        kind = event.kind
        if kind is K.SAVED and event.message is not None and self._current_index is not None:
            current = self._current
            self._current = Draft.of(event.message)
            self._current.live = current.live if current is not None else True
            self.items[self._current_index] = self._current
            return
        draft = self._draft()
        if kind is K.THINKING_STARTED:
            draft.thinking_live = True
            draft.thinking = draft.thinking or ""
        elif kind is K.THINKING:
            draft.thinking = (draft.thinking or "") + event.text
        elif kind is K.THINKING_ENDED:
            draft.thinking_live = False
            draft.thinking_seconds = event.seconds
            if not event.finished:
                draft.meta["thinking_unfinished"] = True
        elif kind is K.RECLASSIFIED:
            draft.thinking, draft.content = event.text, ""
        elif kind is K.ANSWER:
            draft.content += event.text
        elif kind is K.STATS and event.stats is not None:
            draft.meta.update(event.stats.meta())
        elif kind in (K.TOOL_STARTED, K.TOOL_FINISHED) and event.call is not None:
            if all(ToolCall.from_openai(c).id != event.call.id for c in draft.tool_calls):
                draft.tool_calls.append(event.call.openai())
            if kind is K.TOOL_FINISHED and event.message is not None:
                self.items.append(event.message)

    def _draft(self) -> Draft:
        """The reply being built; a refusal before any request gets one of its own."""
        if self._current is None:
            self._current = Draft("assistant")
            self._current_index = len(self.items)
            self.items.append(self._current)
        return self._current

    def messages(self) -> list[dict[str, Any]]:
        return chatbot_messages([*self._history, *self.items])


# --- the sidebar -----------------------------------------------------------------------------


def when_label(iso: str) -> str:
    try:
        moment = datetime.fromisoformat(iso).astimezone()
    except ValueError as exc:
        log.debug("not an ISO time %r: %s", iso, exc)
        return iso
    return moment.strftime("%Y-%m-%d %H:%M")


def chat_list_html(chats: Sequence[ChatSummary], current: int | None, *, search: str = "",
                   server: str | None = None) -> str:
    """The user's chats, newest first, each with its server; `server` names the filter
    when the list shows one server's chats only. The open chat is marked."""
    if not chats:
        if search.strip():
            empty = f"No chats match “{html.escape(search.strip())}”."
        elif server:
            empty = f"No chats with {html.escape(server)} yet: say hello below."
        else:
            empty = "No chats yet: pick a server and say hello below."
        return f'<div class="mm-chats"><p class="mm-chats-empty">{empty}</p></div>'
    rows = []
    for chat in chats:
        active = " mm-chat-active" if chat.id == current else ""
        count = f"{chat.message_count} message{'s' if chat.message_count != 1 else ''}"
        rows.append(
            f'<button type="button" class="mm-chat{active}" data-chat="{chat.id}" '
            f'title="{html.escape(chat.title)}">'
            f'<span class="mm-chat-title">{html.escape(chat.title)}</span>'
            f'<span class="mm-chat-server">{html.escape(chat.server or "n/a")}</span>'
            f'<span class="mm-chat-meta">{when_label(chat.updated_at)} · {count}</span>'
            "</button>")
    return f'<div class="mm-chats">{"".join(rows)}</div>'


CHAT_LIST_CSS = """
.mm-chats { display: flex; flex-direction: column; gap: 4px; max-height: 480px;
  overflow-y: auto; }
.mm-chat { display: flex; flex-direction: column; align-items: flex-start; text-align: left;
  width: 100%; padding: 6px 8px; border-radius: 6px; border: 1px solid transparent;
  background: transparent; cursor: pointer; }
.mm-chat:hover { background: var(--background-fill-secondary); }
.mm-chat-active { border-color: var(--color-accent); background: var(--background-fill-secondary); }
.mm-chat-title { font-weight: 600; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; max-width: 100%; }
.mm-chat-server { font-size: 0.8em; color: var(--body-text-color-subdued); }
.mm-chat-meta { font-size: 0.8em; font-weight: normal; opacity: 0.7; }
.mm-chats-empty { opacity: 0.7; font-size: 0.9em; }
"""

"""Pieces of a turn: how an attachment is sent, the notes that say so, tool calls
gathered from a stream, the reply being streamed (Draft), and a stored reply turned back into a request message."""

from __future__ import annotations

import json
import logging
import mimetypes
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manager.chat.attachments import DEFAULT_LIMITS, AttachmentError, probe_video
from manager.chat.events import AnswerStats, AttachmentKind, ChatOptions, ToolCall, VideoMode
from manager.chat.history import Message, NewMessage
from manager.chat.thinking import ThinkingParser
from manager.models.capabilities import Capabilities
from manager.servers.profiles import Backend, Profile
from manager.servers.vlm_requests import ONE_MESSAGE_ONLY

log = logging.getLogger(__name__)


def attachment_kind(path: Path, name: str | None = None) -> AttachmentKind:
    """Image or video, from the name's type; an unknown name is tried as an image first."""
    mime = mimetypes.guess_type(name or path.name)[0] or ""
    if mime.startswith("video/"):
        return AttachmentKind.VIDEO
    if mime.startswith("image/"):
        return AttachmentKind.IMAGE
    try:
        probe_video(path, DEFAULT_LIMITS, name=name)
    except AttachmentError as exc:
        log.debug("%s is not a video (%s): checked as an image", name or path.name, exc.message)
        return AttachmentKind.IMAGE  # prepare_image then says what is wrong with it
    return AttachmentKind.VIDEO


def uses_native_video(caps: Capabilities, profile: Profile, mode: VideoMode) -> bool:
    """Whether a video goes to the server as itself (mlx_vlm reads it) or as frames."""
    native_possible = caps.video and profile.backend is Backend.MLX_VLM
    if mode is VideoMode.NATIVE:
        if not native_possible:
            raise AttachmentError(
                f"{profile.name} cannot read a video itself (that needs a video model served "
                "by mlx_vlm); send it as frames instead.")
        return True
    return mode is VideoMode.AUTO and native_possible


def native_video_fits(history: Sequence[Message], adding: int = 0) -> bool:
    """Whether a video can go natively in a request built from `history` (plus `adding`
    new user messages): mlx_vlm fails on a video in a request with more than one user or
    plain assistant message (manager/servers/vlm_requests.py); tool calls and results
    do not count."""
    said = [m for m in history if m.role == "user"
            or (m.role == "assistant" and not m.tool_calls)]
    return len(said) + adding <= 1


def frames_instead_note(frames: str) -> str:
    """A frames note for a video that would have gone natively, saying why it did not."""
    return f"{frames} Not as a video: {ONE_MESSAGE_ONLY}."


def frames_note(count: int, name: str) -> str:
    return f"{count} frame{'s' if count != 1 else ''} sent from {name} (evenly spaced)."


def native_note(name: str) -> str:
    return f"{name} sent as a video (the model reads it natively)."


class ToolCallCollector:
    """Tool calls of one streamed reply. Servers send each call whole (mlx_lm) or in
    pieces keyed by `index` (the OpenAI way): pieces of the same index are joined."""

    def __init__(self) -> None:
        self._calls: list[dict[str, Any]] = []
        self._by_index: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Sequence[Mapping[str, Any]]) -> None:
        for delta in deltas:
            function = delta.get("function") or {}
            index = delta.get("index")
            entry = self._by_index.get(index) if isinstance(index, int) else None
            if entry is None:
                entry = {"id": delta.get("id") or "", "name": function.get("name") or "",
                         "arguments": function.get("arguments")}
                self._calls.append(entry)
                if isinstance(index, int):
                    self._by_index[index] = entry
                continue
            entry["id"] = entry["id"] or delta.get("id") or ""
            entry["name"] = entry["name"] or function.get("name") or ""
            piece = function.get("arguments")
            if isinstance(piece, str) and isinstance(entry["arguments"], str):
                entry["arguments"] += piece
            elif piece is not None:
                entry["arguments"] = piece

    def calls(self) -> list[ToolCall]:
        out = []
        for entry in self._calls:
            arguments = entry["arguments"]
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments if arguments is not None else {})
            out.append(ToolCall(id=entry["id"] or f"call_{uuid.uuid4().hex[:12]}",
                                name=entry["name"], arguments=arguments))
        return out


def assistant_openai(message: Message) -> dict[str, Any] | None:
    """A stored assistant reply as the model should see it again (None: nothing to send)."""
    if not message.content and not message.tool_calls:
        return None  # e.g. only an error was recorded
    out: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [ToolCall.from_openai(c).openai() for c in message.tool_calls]
    return out


@dataclass
class Draft:
    """The assistant reply being streamed, and where it is saved."""

    profile: Profile
    round: int
    notes: list[str] = field(default_factory=list)
    parser: ThinkingParser = field(default_factory=ThinkingParser)
    calls: ToolCallCollector = field(default_factory=ToolCallCollector)
    stats: AnswerStats | None = None
    error: str | None = None
    stopped: bool = False
    thinking_cut: bool = False  # the stream stopped inside thinking
    reasoning_field: bool = False  # the server sent thinking in its own field
    finish_reason: str | None = None
    message_id: int | None = None
    saved_at: float = 0.0

    def new_message(self) -> NewMessage:
        meta: dict[str, Any] = {"profile": self.profile.name, "model": self.profile.model,
                                "round": self.round}
        if self.notes:
            meta["notes"] = list(self.notes)
        if self.stats is not None:
            meta.update(self.stats.meta())
        if self.error:
            meta["error"] = self.error
        if self.stopped:
            meta["stopped"] = True
        if self.thinking_cut:
            meta["thinking_unfinished"] = True
        thinking = self.parser.thinking or None
        return NewMessage(
            role="assistant", content=self.parser.answer, thinking=thinking,
            thinking_seconds=self.parser.thinking_seconds if thinking else None,
            tool_calls=[c.openai() for c in self.calls.calls()], meta=meta)


def tool_refusal(calls: list[ToolCall], options: ChatOptions, rounds_run: int
             ) -> tuple[str, str] | None:
    """(reason for the tool message, message for the user) when calls must not run."""
    names = ", ".join(dict.fromkeys(c.name for c in calls))
    if not options.tools:
        return ("tools are turned off in this chat",
                f"The model asked for {names}, but tools are off, so nothing was run. "
                "Turn tools on to let it use them.")
    if rounds_run >= options.max_tool_rounds:
        rounds = options.max_tool_rounds
        return ("the limit of tool rounds was reached",
                f"Stopped: the model still asked for tools ({names}) after {rounds} "
                f"round{'s' if rounds != 1 else ''}, the limit. Raise “Max tool rounds” "
                "to let it go on, or turn tools off.")
    return None

"""Chat requests shaped for what mlx_vlm.server (0.7.x) can read when they carry a video.

mlx_vlm's `prompt_utils.apply_chat_template` hands the request's videos to EVERY message
it formats (system and assistant turns included, only tool calls and tool results pass
through), so the chat template emits one video placeholder per message while the
processor holds one video: `IndexError: index 1 is out of bounds` (a 500, or an `error`
chunk in a stream). The same video in a request of one message works. So here:

- system (and developer) messages before the first user turn travel folded into that
  turn as a leading text part;
- a request that still has more than one formatted message is refused with a message a
  person can act on (the chat sends such videos as frames instead, see
  `native_video_fits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from manager.errors import ValidationError

VIDEO_PART_TYPES = ("video_url", "input_video", "video")
_INSTRUCTION_ROLES = ("system", "developer")

#: Why a video went as frames or was refused; shown to people, so plain words.
ONE_MESSAGE_ONLY = ("mlx_vlm reads a video itself only in a conversation's first message "
                    "(it repeats the video in every earlier message and fails)")


class VideoRequestUnsupported(ValidationError):
    """A video in a request mlx_vlm cannot process (see the module docstring)."""


def has_video(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any message carries a video part."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(
                isinstance(part, Mapping) and part.get("type") in VIDEO_PART_TYPES
                for part in content):
            return True
    return False


def _passes_through(message: Mapping[str, Any]) -> bool:
    """Tool calls and tool results: mlx_vlm hands them to the template as they are."""
    return (message.get("role") == "tool" or "tool_calls" in message
            or "tool_call_id" in message)


def fold_instructions(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages with leading system/developer messages folded into the first user
    turn (a text part before its content). Unchanged without such a turn."""
    out = [dict(m) for m in messages]
    first_user = next((i for i, m in enumerate(out) if m.get("role") == "user"), None)
    if first_user is None:
        return out
    lead = [m for m in out[:first_user] if m.get("role") in _INSTRUCTION_ROLES]
    if not lead:
        return out
    text = "\n\n".join(_text_of(m.get("content")) for m in lead).strip()
    user = out[first_user]
    content = user.get("content")
    parts = list(content) if isinstance(content, list) else [
        {"type": "text", "text": str(content or "")}]
    if text:
        parts.insert(0, {"type": "text", "text": f"{text}\n\n"})
    rest = [m for m in out[:first_user] if m.get("role") not in _INSTRUCTION_ROLES]
    return [*rest, {**user, "content": parts}, *out[first_user + 1:]]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content
                       if isinstance(p, Mapping) and p.get("type") in ("text", "input_text"))
    return ""


def for_mlx_vlm(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages to send to mlx_vlm: as they are without a video; with one, folded,
    or VideoRequestUnsupported when mlx_vlm would fail on them."""
    if not has_video(messages):
        return [dict(m) for m in messages]
    folded = fold_instructions(messages)
    formatted = sum(1 for m in folded if not _passes_through(m))
    if formatted > 1:
        raise VideoRequestUnsupported(
            f"This request has a video and {formatted} messages, but {ONE_MESSAGE_ONLY}. "
            "Send the video in a new conversation, or send its frames as images.",
            "messages")
    return folded

"""Anthropic Messages API <-> the OpenAI chat form the MLX servers speak.

Pure functions and one small streaming state machine, so every mapping is table-tested
without a server: requests go Anthropic -> OpenAI, responses and stream chunks go back.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from manager.api.client_fields import CLIENT_FIELD
from manager.errors import ValidationError

log = logging.getLogger(__name__)

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}

Event = tuple[str, dict[str, Any]]


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"),
                                       "message": message}}


# --- requests ----------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """Text of a system prompt or tool result given as a string or a list of blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for block in content:
            if isinstance(block, Mapping) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            elif isinstance(block, Mapping) and block.get("type") == "image":
                parts.append("[image omitted]")
            elif isinstance(block, Mapping) and block.get("type") == "document":
                parts.append(document_text(block))
        return "\n".join(parts)
    raise ValidationError("content must be a string or a list of content blocks")


def document_text(block: Mapping[str, Any]) -> str:
    """A `document` block as the text the model reads: its title, then its text.

    Text sources (`{"type": "text", "data": ...}`) and content sources (text blocks)
    are read; PDFs and other binary sources are refused, since the model servers
    cannot read them.
    """
    source = block.get("source")
    if not isinstance(source, Mapping):
        raise ValidationError("document: source must be an object", "source")
    kind = source.get("type")
    if kind == "text":
        text = str(source.get("data") or "")
    elif kind == "content":
        text = _text_of(source.get("content"))
    else:
        media = source.get("media_type") or kind
        raise ValidationError(
            f"document: {media!s} documents are not supported: the models here read text "
            "only. Send the document's text as a text source ({\"type\": \"text\", "
            "\"media_type\": \"text/plain\", \"data\": ...}).", "source")
    title = block.get("title")
    context = block.get("context")
    head = [f"Document: {title}" if title else "Document:"]
    if context:
        head.append(str(context))
    return "\n".join(head) + "\n\n" + text


def _image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """An image block at `where` (messages[i].content[j]) as an OpenAI part; the gate's
    errors name its source's field (client_fields.CLIENT_FIELD)."""
    given = block.get("source")
    source: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    kind = source.get("type")
    if kind == "base64":
        media = source.get("media_type") or "image/png"
        url, field = f"data:{media};base64,{source.get('data', '')}", f"{where}.source.data"
    elif kind == "url":
        url, field = str(source.get("url", "")), f"{where}.source.url"
    else:
        raise ValidationError(f"{where}.source.type: unsupported image source type "
                              f"{str(kind)[:40]!r} (use base64 or url)", f"{where}.source.type")
    return {"type": "image_url", "image_url": {"url": url}, CLIENT_FIELD: field}


def _convert_message(message: Mapping[str, Any], index: int) -> list[dict[str, Any]]:
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise ValidationError(f"messages: role must be 'user', 'assistant' or 'system', "
                              f"not {role!r}")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, Sequence):
        raise ValidationError("messages: content must be a string or a list of blocks")
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    tool_results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        if not isinstance(block, Mapping):
            raise ValidationError("messages: each content block must be an object")
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image_part(block, f"messages[{index}].content[{j}]"))
        elif kind == "document":
            # Joined with the message's other text: keep the document apart.
            parts.append({"type": "text", "text": document_text(block) + "\n\n"})
        elif kind == "tool_use":
            tool_calls.append({
                "id": str(block.get("id") or f"toolu_{uuid.uuid4().hex[:24]}"),
                "type": "function",
                "function": {"name": str(block.get("name", "")),
                             "arguments": json.dumps(block.get("input") or {})},
            })
        elif kind == "tool_result":
            text = _text_of(block.get("content"))
            if block.get("is_error"):
                text = f"Error: {text}"
            tool_results.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
                                 "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning is not sent back to the model
        else:
            raise ValidationError(f"messages: unsupported content block type {kind!r}")
    converted: list[dict[str, Any]] = list(tool_results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        if text or tool_calls:
            entry: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                entry["tool_calls"] = tool_calls
            converted.append(entry)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        converted.append({"role": "user", "content": "".join(p["text"] for p in parts)
                          if only_text else parts})
    return converted


def _convert_tool_choice(choice: Any) -> Any:
    if not isinstance(choice, Mapping):
        return None
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool":
        return {"type": "function", "function": {"name": str(choice.get("name", ""))}}
    raise ValidationError(f"tool_choice: unsupported type {kind!r}")


def to_openai_request(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat completion request for `model`."""
    messages = body.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValidationError("messages: a non-empty list is required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, float) and max_tokens.is_integer():
        max_tokens = int(max_tokens)  # JSON's 1e12; the gateway caps it
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValidationError("max_tokens: a positive integer is required", "max_tokens")
    out: list[dict[str, Any]] = []
    # Agent clients put `system` entries inside `messages` too (mid-conversation
    # instructions): all of them join the system prompt, in order.
    systems = [_text_of(body.get("system"))]
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValidationError("messages: each message must be an object")
        if message.get("role") == "system":
            systems.append(_text_of(message.get("content")))
        else:
            out.extend(_convert_message(message, i))
    system = "\n\n".join(s for s in systems if s)
    if system:
        out.insert(0, {"role": "system", "content": system})
    request: dict[str, Any] = {"model": model, "messages": out, "max_tokens": max_tokens}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"),
                         ("top_k", "top_k")):
        if body.get(ours) is not None:
            request[theirs] = body[ours]
    if body.get("stop_sequences"):
        request["stop"] = list(body["stop_sequences"])
    tools = body.get("tools")
    if tools:
        request["tools"] = [
            {"type": "function", "function": {
                "name": str(tool.get("name", "")),
                "description": str(tool.get("description", "")),
                "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
            }}
            for tool in tools if isinstance(tool, Mapping)
        ]
        choice = _convert_tool_choice(body.get("tool_choice"))
        if choice is not None:
            request["tool_choice"] = choice
    if body.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


# --- responses ---------------------------------------------------------------------------


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, json.JSONDecodeError):
        log.warning("tool call arguments are not JSON: %.200r", arguments)
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"value": value}


def reasoning_of(message: Mapping[str, Any]) -> str:
    """mlx_lm sends `reasoning`, mlx_vlm `reasoning_content`: accept either."""
    return str(message.get("reasoning") or message.get("reasoning_content") or "")


def from_openai_response(response: Mapping[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic Message."""
    choice = (response.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    thinking = reasoning_of(message)
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": str(message["content"])})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": str(call.get("id") or _tool_id()),
                        "name": str(function.get("name", "")),
                        "input": _tool_input(function.get("arguments"))})
    usage = response.get("usage") or {}
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": int(usage.get("prompt_tokens") or 0),
                  "output_tokens": int(usage.get("completion_tokens") or 0)},
    }


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


@dataclass
class StreamTranslator:
    """Turns OpenAI stream chunks into the Anthropic event sequence.

    message_start, then for each block content_block_start / _delta... / _stop, then
    message_delta (stop reason, usage) and message_stop.
    """

    model: str
    message_id: str = field(default_factory=new_message_id)
    #: The prompt's token count, known before the stream (message_start carries it).
    input_tokens: int = 0
    _index: int = -1
    _open: str | None = None  # "thinking" | "text" | "tool_use"
    _tool_slot: int | None = None  # the OpenAI tool_calls index of the open tool block
    _stop_reason: str = "end_turn"
    _input_tokens: int = 0
    _output_tokens: int = 0
    _started: bool = False

    def start(self) -> Iterator[Event]:
        self._started = True
        yield "message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }}

    def feed(self, chunk: Mapping[str, Any]) -> Iterator[Event]:
        if not self._started:
            yield from self.start()
        usage = chunk.get("usage")
        if usage:
            self._input_tokens = int(usage.get("prompt_tokens") or 0)
            self._output_tokens = int(usage.get("completion_tokens") or 0)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            thinking = reasoning_of(delta)
            if thinking:
                yield from self._ensure("thinking")
                yield self._delta({"type": "thinking_delta", "thinking": thinking})
            if delta.get("content"):
                yield from self._ensure("text")
                yield self._delta({"type": "text_delta", "text": str(delta["content"])})
            for call in delta.get("tool_calls") or []:
                yield from self._tool_call(call)
            if choice.get("finish_reason"):
                self._stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")

    def next_delta(self, chunk: Mapping[str, Any]) -> bytes | None:
        """The SSE bytes for a chunk that only adds text or thinking to the open block
        (most chunks), written without building the event; None for any other chunk
        (then `feed` it). The same bytes `feed` gives, encoded by `sse`."""
        choices = chunk.get("choices")
        if not self._started or chunk.get("usage") or not choices or len(choices) != 1:
            return None
        choice = choices[0]
        delta = choice.get("delta")
        if choice.get("finish_reason") or not delta or delta.get("tool_calls"):
            return None
        content, thinking = delta.get("content"), reasoning_of(delta)
        if content and not thinking and self._open == "text":
            head, text = _TEXT_DELTA, str(content)
        elif thinking and not content and self._open == "thinking":
            head, text = _THINKING_DELTA, thinking
        else:
            return None
        return self._delta_event(head, json.dumps(text).encode())

    def literal_delta(self, thinking: bool, literal: bytes) -> bytes | None:
        """`next_delta` for a chunk that only adds `literal` (a JSON string as the server
        wrote it) to the open text or thinking block, or opens that block when none is
        open (a stream's first token: no event built and encoded on its way); None
        otherwise. The same bytes `feed` gives."""
        kind = "thinking" if thinking else "text"
        head = _THINKING_DELTA if thinking else _TEXT_DELTA
        if not self._started:
            return None
        if self._open == kind:
            return self._delta_event(head, literal)
        if self._open is not None or literal == b'""':  # feed opens no block for ""
            return None
        self._index += 1
        self._open = kind
        return b"".join((_BLOCK_START, str(self._index).encode(),
                         _THINKING_BLOCK if thinking else _TEXT_BLOCK,
                         self._delta_event(head, literal)))

    def _delta_event(self, head: bytes, literal: bytes) -> bytes:
        """The open block's delta event adding `literal` (a JSON string) after `head`."""
        return b"".join((_DELTA_EVENT, str(self._index).encode(), head, literal, b"}}\n\n"))

    def finish(self) -> Iterator[Event]:
        if not self._started:
            yield from self.start()
        yield from self._close()
        yield "message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
            "usage": {"input_tokens": self._input_tokens or self.input_tokens,
                      "output_tokens": self._output_tokens},
        }
        yield "message_stop", {"type": "message_stop"}

    @property
    def usage(self) -> tuple[int, int]:
        return self._input_tokens, self._output_tokens

    def _tool_call(self, call: Mapping[str, Any]) -> Iterator[Event]:
        function = call.get("function") or {}
        slot = call.get("index", 0)
        if self._open != "tool_use" or self._tool_slot != slot or function.get("name"):
            yield from self._close()
            self._index += 1
            self._open, self._tool_slot = "tool_use", slot
            yield "content_block_start", {
                "type": "content_block_start", "index": self._index,
                "content_block": {"type": "tool_use", "id": str(call.get("id") or _tool_id()),
                                  "name": str(function.get("name", "")), "input": {}},
            }
        arguments = function.get("arguments")
        if arguments:
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            yield self._delta({"type": "input_json_delta", "partial_json": text})

    def _ensure(self, kind: str) -> Iterator[Event]:
        if self._open == kind:
            return
        yield from self._close()
        self._index += 1
        self._open = kind
        block: dict[str, Any] = ({"type": "thinking", "thinking": "", "signature": ""}
                                 if kind == "thinking" else {"type": "text", "text": ""})
        yield "content_block_start", {"type": "content_block_start", "index": self._index,
                                      "content_block": block}

    def _delta(self, delta: dict[str, Any]) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": self._index,
                                       "delta": delta}

    def _close(self) -> Iterator[Event]:
        if self._open is None:
            return
        if self._open == "thinking":
            yield self._delta({"type": "signature_delta", "signature": ""})
        yield "content_block_stop", {"type": "content_block_stop", "index": self._index}
        self._open, self._tool_slot = None, None


# The pieces of a text or thinking content_block_start and content_block_delta, as
# `sse` writes them.
_BLOCK_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":'
_TEXT_BLOCK = b',"content_block":{"type":"text","text":""}}\n\n'
_THINKING_BLOCK = b',"content_block":{"type":"thinking","thinking":"","signature":""}}\n\n'
_DELTA_EVENT = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA = b',"delta":{"type":"text_delta","text":'
_THINKING_DELTA = b',"delta":{"type":"thinking_delta","thinking":'


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event in the framing the Anthropic SDK reads."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

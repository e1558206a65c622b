"""OpenAI Responses API <-> the chat completions form the MLX servers speak.

Pure functions, so every mapping is table-tested without a server: a Responses request
(with the items of an earlier response it continues) becomes a chat completions request,
and a chat completion becomes a Response object. Streams are translated by
`manager/api/responses_stream.py`; stored responses live in
`manager/chat/stored_responses.py`.

Items keep their Responses shape (with ids) so they can be stored, listed with
`input_items`, and turned into chat messages again when a later request names this
response as its `previous_response_id`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from manager.api.client_fields import CLIENT_FIELD
from manager.errors import ValidationError

log = logging.getLogger(__name__)

#: Tool types the gateway can serve (anything else is left out of the prompt).
SERVED_TOOL_TYPES = ("function",)
#: Header that tells a client what of its request was left out.
WARNING_HEADER = "warning"
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
_INPUT_ROLES = ("user", "system", "developer")
_STATUS_DONE = "completed"

Item = dict[str, Any]


def new_id(prefix: str) -> str:
    """`prefix`_ and the hex of a random (version 4) UUID: the bits `uuid.uuid4()` sets,
    without building its object (~4x less time out of the CPU's caches; a Responses
    request makes two on its way to the model server)."""
    n = int.from_bytes(os.urandom(16), "big")
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # the RFC 4122 variant
    n = (n & ~(0xF000 << 64)) | (4 << 76)  # version 4
    return f"{prefix}_{n:032x}"


# --- input items ----------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text of a string or a list of text parts (a tool's output, say)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content if isinstance(content, Sequence) else ():
        if isinstance(part, Mapping) and part.get("type") in _TEXT_PARTS:
            parts.append(str(part.get("text") or ""))
        elif isinstance(part, Mapping) and part.get("type") == "input_image":
            parts.append("[image omitted]")
    return "\n".join(parts)


def _input_part(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "input_text", "text": str(part.get("text") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise ValidationError(f"{where}.image_url: send the image as a data: URL (file "
                                  "ids are not supported by this gateway)", where)
        # Marked for the gate's errors until the request is translated (to_chat_request).
        return {"type": "input_image", "image_url": url, "detail": part.get("detail") or "auto",
                CLIENT_FIELD: f"{where}.image_url"}
    if kind == "input_file":
        raise ValidationError(f"{where}: input_file parts are not supported by this "
                              "gateway; send the file's text as input_text", where)
    raise ValidationError(f"{where}.type: unsupported content part type {kind!r}", where)


def _message_item(item: Mapping[str, Any], where: str) -> Item:
    role = item.get("role")
    content = item.get("content")
    if role == "assistant":
        text = _text_of(content)
        return {"id": _item_id(item, "msg"), "type": "message", "role": "assistant",
                "status": _STATUS_DONE,
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
    if role not in _INPUT_ROLES:
        raise ValidationError(f"{where}.role: must be user, assistant, system or "
                              f"developer, not {role!r}"[:200], where)
    if isinstance(content, str):
        parts = [{"type": "input_text", "text": content}]
    else:
        parts = [_input_part(part, f"{where}.content[{i}]")
                 for i, part in enumerate(content or [])]
    return {"id": _item_id(item, "msg"), "type": "message", "role": role,
            "status": _STATUS_DONE, "content": parts}


def _item_id(item: Mapping[str, Any], prefix: str) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and given else new_id(prefix)


def input_items(value: Any) -> list[Item]:
    """The request's `input` (a string or a list of items) as stored items with ids.
    Item types the gateway cannot use (a hosted tool's call, say) are left out."""
    if isinstance(value, str):
        return [{"id": new_id("msg"), "type": "message", "role": "user",
                 "status": _STATUS_DONE, "content": [{"type": "input_text", "text": value}]}]
    items: list[Item] = []
    for i, item in enumerate(value or []):
        where = f"input[{i}]"
        kind = item.get("type") or "message"
        if kind == "message":
            items.append(_message_item(item, where))
        elif kind == "function_call":
            items.append({"id": _item_id(item, "fc"), "type": "function_call",
                          "call_id": str(item.get("call_id") or ""),
                          "name": str(item.get("name") or ""),
                          "arguments": _arguments(item.get("arguments")),
                          "status": _STATUS_DONE})
        elif kind == "function_call_output":
            output = item.get("output")
            items.append({"id": _item_id(item, "fco"), "type": "function_call_output",
                          "call_id": str(item.get("call_id") or ""),
                          "output": output if isinstance(output, (str, list)) else
                          json.dumps(output), "status": _STATUS_DONE})
        elif kind == "reasoning":
            items.append({"id": _item_id(item, "rs"), "type": "reasoning",
                          "summary": list(item.get("summary") or [])})
        elif kind == "item_reference":
            raise ValidationError(f"{where}: item_reference is not supported by this "
                                  "gateway; send the item itself, or previous_response_id",
                                  where)
        else:
            log.info("responses: input item of type %r left out", kind)
    return items


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {})


def chat_messages(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored items as chat messages: a function call joins the assistant message before
    it (one turn with text and tool calls), reasoning items are not sent back (like the
    thinking of earlier chat turns), `developer` becomes `system`."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            if role == "assistant":
                messages.append({"role": "assistant", "content": _text_of(item.get("content"))})
            else:
                messages.append({"role": "system" if role == "developer" else role,
                                 "content": _chat_content(item.get("content") or [])})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name", ""),
                                 "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id") or "",
                             "content": _text_of(item.get("output"))})
    return messages


def _chat_content(parts: Sequence[Mapping[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p.get("type") == "input_text" for p in parts):
        return "".join(str(p.get("text") or "") for p in parts)
    out: list[dict[str, Any]] = []
    for part in parts:
        if part.get("type") == "input_image":
            image = {"type": "image_url", "image_url": {"url": part.get("image_url")}}
            if CLIENT_FIELD in part:  # this request's own image, not one from the history
                image[CLIENT_FIELD] = part[CLIENT_FIELD]
            out.append(image)
        else:
            out.append({"type": "text", "text": str(part.get("text") or "")})
    return out


# --- tools ----------------------------------------------------------------------------


def left_out_tools(body: Mapping[str, Any]) -> list[str]:
    """The types of the request's tools the gateway leaves out (hosted tools)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind not in SERVED_TOOL_TYPES and str(kind) not in out:
            out.append(str(kind))
    return out


def warning_header(left_out: Sequence[str]) -> dict[str, str]:
    """An HTTP Warning (299, a persistent warning) naming the tools left out."""
    if not left_out:
        return {}
    names = ", ".join(left_out)
    return {WARNING_HEADER: f'299 mlx-manager "Tools left out of the prompt: {names}. '
                            'This gateway serves function tools only."'}


def _chat_tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for tool in tools or []:
        if tool.get("type") != "function":
            continue
        function: dict[str, Any] = {
            "name": tool.get("name"),
            "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _chat_tool_choice(choice: Any, names: set[str]) -> Any:
    """Responses' tool_choice as chat's; a hosted tool's choice falls back to auto."""
    if choice is None or isinstance(choice, str):
        return choice
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if name not in names:
            raise ValidationError(f"tool_choice.name: no function tool named {name!r}",
                                  "tool_choice")
        return {"type": "function", "function": {"name": name}}
    if kind == "allowed_tools":
        return choice.get("mode") or "auto"
    return "auto"


# --- the request ----------------------------------------------------------------------


@dataclass(frozen=True)
class Translated:
    """A Responses request as the chat request to send, and what the response echoes."""

    chat: dict[str, Any]
    input_items: list[Item]
    echo: dict[str, Any]


def to_chat_request(body: Mapping[str, Any], model: str,
                    history: Sequence[Mapping[str, Any]] = ()) -> Translated:
    """The chat completions request for a (checked) Responses request. `history`: the
    items of the conversation so far (the previous response's context, input and
    output). `instructions` are not carried over from earlier responses."""
    items = input_items(body.get("input"))
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        messages.append({"role": "system", "content": str(instructions)})
    messages.extend(chat_messages([*history, *items]))
    if not messages:
        raise ValidationError("input: nothing to answer (no message in input or history)",
                              "input")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    tools = _chat_tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        choice = _chat_tool_choice(body.get("tool_choice"),
                                   {t["function"]["name"] for t in tools})
        if choice is not None:
            chat["tool_choice"] = choice
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = int(body["max_output_tokens"])
    for field in ("temperature", "top_p"):
        if body.get(field) is not None:
            chat[field] = body[field]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and isinstance(reasoning.get("effort"), str):
        # The MLX servers know one switch: thinking on or off.
        chat["chat_template_kwargs"] = {"enable_thinking": reasoning["effort"] != "none"}
    if body.get("stream"):
        chat["stream"] = True
    return Translated(chat, [_unmarked(item) for item in items], echo_fields(body))


def _unmarked(item: Item) -> Item:
    """`item` as it is stored and shown: its parts without the gate's field names."""
    content = item.get("content")
    if item.get("type") != "message" or not isinstance(content, list):
        return item
    return {**item, "content": [
        {k: v for k, v in part.items() if k != CLIENT_FIELD} if isinstance(part, dict)
        else part for part in content]}


def echo_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request settings a Response object repeats."""
    given = body.get("reasoning")
    reasoning: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True) is not False,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": [t for t in body.get("tools") or [] if t.get("type") in SERVED_TOOL_TYPES],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "user": body.get("user"),
    }


# --- the response ---------------------------------------------------------------------


def usage_object(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0
                 ) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": prompt_tokens + completion_tokens}


def response_object(response_id: str, model: str, echo: Mapping[str, Any], *,
                    created_at: float, status: str, output: list[Item],
                    usage: Mapping[str, Any] | None = None,
                    error: Mapping[str, Any] | None = None,
                    incomplete_reason: str | None = None) -> dict[str, Any]:
    """A Response object as the openai SDK's `Response` type reads it."""
    return {
        "id": response_id, "object": "response", "created_at": int(created_at),
        "status": status, "error": dict(error) if error else None,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        **echo_fields({}), **echo, "model": model, "output": output,
        "usage": dict(usage) if usage else None,
        "completed_at": int(time.time()) if status == _STATUS_DONE else None,
    }


def status_of(finish_reason: str | None) -> tuple[str, str | None]:
    """The Response status (and incomplete reason) for a chat finish reason."""
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return _STATUS_DONE, None


def reasoning_item(text: str, item_id: str | None = None) -> Item:
    return {"id": item_id or new_id("rs"), "type": "reasoning", "status": _STATUS_DONE,
            "summary": [{"type": "summary_text", "text": text}]}


def message_item(text: str, item_id: str | None = None, status: str = _STATUS_DONE) -> Item:
    return {"id": item_id or new_id("msg"), "type": "message", "role": "assistant",
            "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def function_call_item(call: Mapping[str, Any], item_id: str | None = None) -> Item:
    function = call.get("function") or {}
    return {"id": item_id or new_id("fc"), "type": "function_call",
            "call_id": str(call.get("id") or new_id("call")),
            "name": str(function.get("name") or ""),
            "arguments": _arguments(function.get("arguments")), "status": _STATUS_DONE}


def from_chat_response(raw: Mapping[str, Any], response_id: str, model: str,
                       echo: Mapping[str, Any], created_at: float) -> dict[str, Any]:
    """A whole chat completion as a Response object."""
    choice = (raw.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[Item] = []
    thinking = str(message.get("reasoning") or message.get("reasoning_content") or "")
    if thinking:
        output.append(reasoning_item(thinking))
    if message.get("content"):
        output.append(message_item(str(message["content"])))
    output.extend(function_call_item(call) for call in message.get("tool_calls") or [])
    usage = raw.get("usage") or {}
    status, reason = status_of(choice.get("finish_reason"))
    return response_object(
        response_id, model, echo, created_at=created_at, status=status, output=output,
        usage=usage_object(int(usage.get("prompt_tokens") or 0),
                           int(usage.get("completion_tokens") or 0)),
        incomplete_reason=reason)


def output_text(output: Iterable[Mapping[str, Any]]) -> str:
    """The text of a response's assistant messages (the SDKs' `output_text`)."""
    return "".join(part.get("text", "") for item in output if item.get("type") == "message"
                   for part in item.get("content") or [] if part.get("type") == "output_text")

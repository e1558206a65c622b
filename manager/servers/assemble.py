"""A whole (non-streamed) answer put together from an mlx_lm stream.

mlx_lm generates a non-streamed answer to the end before it writes a byte, so closing
the connection cannot stop it; streamed, it notices a closed connection at its next
token. Requests that must be cancellable (the gateway's) are therefore streamed from
the server and assembled here into the answer mlx_lm would have sent whole (the same
keys as its `generate_response`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def whole_response(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The chat completion (or text completion) the stream's chunks add up to."""
    head: Mapping[str, Any] = {}
    text: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    logprobs: list[Any] = []
    finish_reason: str | None = None
    usage: Any = None
    for chunk in chunks:
        if not head and chunk.get("choices"):
            head = chunk
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta") or {}
            text.append(str(delta.get("content") or choice.get("text") or ""))
            reasoning.append(str(delta.get("reasoning") or ""))
            for call in delta.get("tool_calls") or []:
                if isinstance(call, Mapping):
                    tool_calls.append({k: v for k, v in call.items() if k != "index"})
            content = (choice.get("logprobs") or {}).get("content")
            if isinstance(content, list):
                logprobs.extend(content)
            if choice.get("finish_reason"):
                finish_reason = choice["finish_reason"]
    kind = str(head.get("object") or "chat.completion.chunk").removesuffix(".chunk")
    choice_out: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if logprobs:
        choice_out["logprobs"] = {"content": logprobs}
    if kind == "text_completion":
        choice_out["text"] = "".join(text)
    else:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if "".join(reasoning):
            message["reasoning"] = "".join(reasoning)
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice_out["message"] = message
    out: dict[str, Any] = {key: head[key] for key in ("id", "system_fingerprint", "model",
                                                       "created") if key in head}
    out["object"] = kind
    out["choices"] = [choice_out]
    if usage is not None:
        out["usage"] = usage
    return out

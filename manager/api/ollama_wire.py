"""What the gateway writes for Ollama clients (pure): answer lines built from the MLX
servers' OpenAI chunks, the model list entries, and errors (`{"error": "..."}`).

`OllamaReply` is fed the server's parsed chunks. Streamed, each chunk becomes one
NDJSON line (`message.content` / `message.thinking`, or `response` / `thinking` for
/api/generate); tool calls are gathered and sent whole in one line, as Ollama does;
the last line has `done: true`, the reason, the token counts and the durations in
nanoseconds. Not streamed, the same figures come in one object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from manager.models.capabilities import Capabilities
from manager.servers.profiles import Profile

log = logging.getLogger(__name__)

CHAT = "chat"
GENERATE = "generate"
NDJSON = "application/x-ndjson"
_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "bf16": "BF16",
           "fp16": "F16", "fp32": "F32"}


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


def dumps_line(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def timestamp(when: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes `created_at`."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Timestamps:
    """`timestamp()` for the reads of one stream: the text down to the second is
    written once per second (a stream's first in `OllamaFormat.start`, before its first
    token), the microseconds rounded as datetime.fromtimestamp rounds them."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, when: float | None = None) -> str:
        fraction, whole = math.modf(time.time() if when is None else when)
        micros = round(fraction * 1e6)
        second = int(whole)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%S.")
            self._second = second
        return f"{self._prefix}{micros:06d}Z"


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _arguments(text: str) -> dict[str, Any]:
    """Ollama sends tool arguments as an object (the servers send JSON text)."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        log.warning("tool call arguments are not JSON: %.200r", text)
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


class OllamaReply:
    """One /api/chat or /api/generate answer, built from the server's chunks.

    `ready()` marks the moment the server was ready and the request went out (the time
    before it is the load); `feed` returns the lines to stream for a chunk; `finish`
    the last lines (gathered tool calls, then `done: true`); `whole()` the answer as
    one object for `stream: false`.
    """

    def __init__(self, kind: str, model: str, *, started_ns: int | None = None,
                 clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self.kind = kind
        self.model = model
        self._clock = clock
        self._started = clock() if started_ns is None else started_ns
        self._ready: int | None = None
        self._first: int | None = None
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}
        self._sent_calls = 0
        self._finish: str | None = None
        self._prompt_tokens: int | None = None
        self._completion_tokens: int | None = None
        self._head = b'{"model":' + json.dumps(model, ensure_ascii=False).encode() \
            + b',"created_at":"'

    def ready(self, at_ns: int | None = None) -> None:
        self._ready = self._clock() if at_ns is None else at_ns

    def _line(self, text: str = "", thinking: str = "",
              tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": timestamp()}
        if self.kind == CHAT:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            line["message"] = message
        else:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
        line["done"] = False
        return line

    def literal_line(self, thinking: bool, literal: bytes, created_at: str) -> bytes | None:
        """The line `feed` streams for a chunk that only adds `literal` (a JSON string as
        the server wrote it) to the text or thinking, written without decoding it."""
        if literal == b'""':
            return None
        if self._first is None:
            self._first = self._clock()
        text, extra = (b'""', b',"thinking":' + literal) if thinking else (literal, b"")
        if self.kind == CHAT:
            body = b'"message":{"role":"assistant","content":' + text + extra + b"}"
        else:
            body = b'"response":' + text + extra
        return b"".join((self._head, created_at.encode(), b'",', body, b',"done":false}\n'))

    def _gather(self, chunk: Mapping[str, Any]) -> tuple[str, str]:
        """Counts, the finish reason and tool calls of one chunk (a stream's delta or a
        whole answer's message); returns its text and thinking."""
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._prompt_tokens = _count(usage.get("prompt_tokens"))
            self._completion_tokens = _count(usage.get("completion_tokens"))
        choices = chunk.get("choices") or []
        choice = choices[0] if choices and isinstance(choices[0], Mapping) else {}
        if choice.get("finish_reason"):
            self._finish = str(choice["finish_reason"])
        part = choice.get("delta") or choice.get("message") or {}
        # mlx_lm sends `reasoning`, mlx_vlm `reasoning_content` too; completions `text`.
        text = str(part.get("content") or choice.get("text") or "")
        thinking = str(part.get("reasoning") or part.get("reasoning_content") or "")
        for call in part.get("tool_calls") or ():
            if not isinstance(call, Mapping):
                continue
            index = call.get("index")
            if not isinstance(index, int):  # a whole call without an index: a new one
                index = len(self._calls)
            slot = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            function = call.get("function") or {}
            slot["id"] = slot["id"] or str(call.get("id") or "")
            slot["name"] += str(function.get("name") or "")
            arguments = function.get("arguments")
            if arguments:
                slot["arguments"] += arguments if isinstance(arguments, str) \
                    else json.dumps(arguments)
        return text, thinking

    def feed(self, chunk: Mapping[str, Any], *, stream: bool = True) -> list[dict[str, Any]]:
        """The lines to stream for one OpenAI chunk (none when `stream` is False: the
        text is kept for `whole`)."""
        text, thinking = self._gather(chunk)
        if not (text or thinking):
            return []
        if self._first is None:
            self._first = self._clock()
        if not stream:
            self._content.append(text)
            self._thinking.append(thinking)
            return []
        return [self._line(text, thinking)]

    def answered(self, response: Mapping[str, Any], ttft_ns: int | None) -> dict[str, Any]:
        """The whole answer from a whole OpenAI response; `ttft_ns` (when the server's
        first token is known) splits prompt processing from generation."""
        if ttft_ns is not None and self._ready is not None:
            self._first = self._ready + ttft_ns
        self.feed(response, stream=False)
        return self.whole()

    def _tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index in sorted(self._calls):
            slot = self._calls[index]
            calls.append({"id": slot["id"] or f"call_{index}", "function": {
                "index": index, "name": slot["name"],
                "arguments": _arguments(slot["arguments"])}})
        return calls

    def _done(self, line: dict[str, Any]) -> dict[str, Any]:
        end = self._clock()
        ready = self._ready if self._ready is not None else end
        first = self._first if self._first is not None else end
        line["done"] = True
        line["done_reason"] = "length" if self._finish == "length" else "stop"
        line["total_duration"] = end - self._started
        line["load_duration"] = max(0, ready - self._started)
        if self._prompt_tokens is not None:
            line["prompt_eval_count"] = self._prompt_tokens
        line["prompt_eval_duration"] = max(0, first - ready)
        if self._completion_tokens is not None:
            line["eval_count"] = self._completion_tokens
        line["eval_duration"] = max(0, end - first)
        return line

    def finish(self) -> list[dict[str, Any]]:
        """The last lines of a stream: the tool calls (whole), then `done: true`."""
        lines = []
        if self._calls:
            lines.append(self._line(tool_calls=self._tool_calls()))
        lines.append(self._done(self._line()))
        return lines

    def whole(self) -> dict[str, Any]:
        """The whole answer (`stream: false`)."""
        return self._done(self._line("".join(self._content), "".join(self._thinking),
                                     self._tool_calls() or None))

    def loaded(self, reason: str) -> dict[str, Any]:
        """The answer to a request with nothing to generate: the model was loaded (or
        unloaded, `reason` "unload")."""
        line = self._done(self._line())
        line["done_reason"] = reason
        for field in ("prompt_eval_duration", "eval_duration"):
            line.pop(field, None)
        return line


# --- models ----------------------------------------------------------------------------


def digest(profile: Profile) -> str:
    """A stable identifier of what the profile serves (changes when it is edited)."""
    text = f"{profile.id}\0{profile.model}\0{profile.updated_at or profile.created_at}"
    return hashlib.sha256(text.encode()).hexdigest()


def parameter_size(count: int | None) -> str:
    if not count:
        return ""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def quantization_level(caps: Capabilities | None) -> str:
    if caps is None:
        return ""
    if caps.quant_method and caps.quant_method.lower().startswith("mx"):
        return caps.quant_method.upper()
    if caps.quant_bits is not None:
        return f"Q{caps.quant_bits}"
    if caps.quant_method:
        return caps.quant_method.upper()
    return _DTYPES.get((caps.dtype or "").lower(), (caps.dtype or "").upper())


def details(caps: Capabilities | None) -> dict[str, Any]:
    family = (caps.architecture if caps else None) or ""
    return {"parent_model": "", "format": "mlx", "family": family,
            "families": [family] if family else None,
            "parameter_size": parameter_size(caps.parameter_count if caps else None),
            "quantization_level": quantization_level(caps)}


def modified_at(profile: Profile) -> str:
    return profile.updated_at or profile.created_at or timestamp()


def tags_entry(profile: Profile, caps: Capabilities | None) -> dict[str, Any]:
    """One model of GET /api/tags: a profile, by its name."""
    return {"name": profile.name, "model": profile.name, "modified_at": modified_at(profile),
            "size": (caps.weights_bytes if caps else None) or 0, "digest": digest(profile),
            "details": details(caps)}


def ps_entry(profile: Profile, caps: Capabilities | None, size: int | None,
             expires_at: str, context_length: int | None, *, unified_memory: bool
             ) -> dict[str, Any]:
    """One running model of GET /api/ps. On unified memory (Apple Silicon) all of it
    counts as VRAM, as Ollama reports it there."""
    size = size or 0
    entry = {"name": profile.name, "model": profile.name, "size": size,
             "digest": digest(profile), "details": details(caps), "expires_at": expires_at,
             "size_vram": size if unified_memory else 0}
    if context_length:
        entry["context_length"] = context_length
    return entry


def capabilities(caps: Capabilities | None) -> list[str]:
    out = ["completion"]
    if caps is not None:
        out += [name for name, has in (("tools", caps.tool_use), ("thinking", caps.thinking),
                                       ("vision", caps.multimodal)) if has]
    return out


def _parameters(profile: Profile, context_length: int | None) -> str:
    values = (("num_ctx", context_length), ("num_predict", profile.max_tokens),
              ("temperature", profile.temperature), ("top_p", profile.top_p))
    return "\n".join(f"{name:<15} {value}" for name, value in values if value is not None)


def show_payload(profile: Profile, caps: Capabilities | None, context_length: int | None
                 ) -> dict[str, Any]:
    """POST /api/show: what a client reads to decide what the model can do."""
    family = (caps.architecture if caps else None) or "mlx"
    info: dict[str, Any] = {"general.architecture": family, "general.basename": profile.name}
    if caps is not None and caps.parameter_count:
        info["general.parameter_count"] = caps.parameter_count
    if context_length:
        info[f"{family}.context_length"] = context_length
    return {
        "modelfile": f"# Served by MLX Model Manager: profile {profile.name}\n"
                     f"FROM {profile.model}\n",
        "parameters": _parameters(profile, context_length),
        "template": "",
        "system": profile.system_prompt,
        "license": "",
        "details": details(caps),
        "model_info": info,
        "capabilities": capabilities(caps),
        "modified_at": modified_at(profile),
    }

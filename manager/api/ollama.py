"""Ollama's API requests -> the OpenAI chat form the MLX servers speak (pure functions).

`check_chat` / `check_generate` refuse a malformed body with a 400 naming the field,
before anything acts on it; `chat_request` / `generate_request` then build the
OpenAI request for a profile (its backend decides how `format` is honoured).
Responses go the other way in ollama_wire.py.

Mapping:
- `options`: temperature, top_p, top_k, min_p, seed, stop, presence/frequency
  penalty as themselves; num_predict -> max_tokens (<= 0 means "no limit": the
  profile's); repeat_penalty -> repetition_penalty, repeat_last_n ->
  repetition_context_size. Hardware knobs (num_gpu, num_thread, num_ctx...) are the
  profile's business and ignored.
- `images` (base64) -> image parts as data URLs (the MediaGate checks them again).
- `tool_calls` (arguments as objects) -> OpenAI calls with ids; a `tool` message is
  matched to the call it answers by `tool_name`.
- `think` -> the chat template's enable_thinking (a level also as reasoning_effort).
- `format`: "json" or a JSON schema. mlx_vlm on Apple Silicon constrains its output
  (response_format); elsewhere (mlx_lm, or mlx_vlm on the CPU back-end) the server
  cannot, so the model is asked to in the system prompt.
- `keep_alive`: seconds or a Go duration ("5m", "1h30m"); 0 unloads after the answer,
  a negative value keeps the model loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from manager.api.client_fields import CLIENT_FIELD
from manager.api.images import image_type
from manager.api.schema import SEED_MAX, check_values, invalid, kind_of
from manager.api.wire import GatewayError
from manager.servers.profiles import Backend, Profile

#: The Ollama API level this gateway answers as (`GET /api/version`); clients gate
#: features such as tools and thinking on it.
OLLAMA_VERSION = "0.13.0"
ROLES = ("system", "user", "assistant", "tool")
THINK_LEVELS = ("high", "medium", "low")
_DURATION = re.compile(r"(-?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
#: A keep_alive this long or longer means "keep it loaded" (-1): /api/ps has no date for
#: a year past 9999.
NEVER_S = 100 * 365 * 86400.0
# option -> (OpenAI field, kind, low, high)
_OPTIONS: dict[str, tuple[str, str, float | None, float | None]] = {
    "temperature": ("temperature", "number", 0, 100),
    "top_p": ("top_p", "number", 0, 1),
    "min_p": ("min_p", "number", 0, 1),
    "top_k": ("top_k", "whole", 0, None),
    "seed": ("seed", "whole", None, SEED_MAX),  # below 0: random (sampling())
    "presence_penalty": ("presence_penalty", "number", -100, 100),
    "frequency_penalty": ("frequency_penalty", "number", -100, 100),
    "repeat_penalty": ("repetition_penalty", "number", 0, 100),
    "repeat_last_n": ("repetition_context_size", "whole", 0, None),
}
JSON_ONLY = "Answer with one JSON object and nothing else."


@dataclass(frozen=True)
class OllamaCall:
    """What a checked /api/chat or /api/generate body asks for, besides the prompt."""

    model: str
    stream: bool
    #: None: the profile's idle timeout; 0: unload after the answer; < 0: never unload.
    keep_alive_s: float | None
    #: Nothing to generate (no messages, or an empty prompt): load (or unload) only.
    load_only: bool


# --- small checks ----------------------------------------------------------------------


def _typed(body: Mapping[str, Any], field: str, kinds: tuple[type, ...], what: str,
           where: str = "") -> Any:
    value = body.get(field)
    if value is None:
        return None
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise invalid(where + field, f"must be {what}, not {kind_of(value)}")
    return value


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(field, "must be a list of strings")
    return value


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep the model loaded after this request; None = the profile's
    idle timeout, 0 = unload now, -1 = keep loaded."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad_keep_alive(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)  # a bare number counts as seconds
        except ValueError:
            if not _DURATION.fullmatch(text):
                raise _bad_keep_alive(value) from None
            seconds = sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(text))
            if text.startswith("-"):
                seconds = -seconds
    else:
        raise _bad_keep_alive(value)
    if not math.isfinite(seconds):
        raise _bad_keep_alive(value)
    return -1.0 if seconds < 0 or seconds >= NEVER_S else seconds


def _bad_keep_alive(value: Any) -> GatewayError:
    return invalid("keep_alive", f"{str(value)[:40]!r} is not a duration: use seconds (300), "
                   "a duration such as \"5m\" or \"1h30m\", 0 to unload after the answer, or "
                   "-1 to keep the model loaded")


def _check_options(options: Any) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise invalid("options", f"must be an object, not {kind_of(options)}")
    for name, (_, kind, low, high) in _OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        field = f"options.{name}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid(field, f"must be a number, not {kind_of(value)}")
        if kind == "whole" and isinstance(value, float) and not value.is_integer():
            raise invalid(field, f"must be a whole number, not {value:g}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise invalid(field, f"must be at least {low:g}" if high is None
                          else f"must be at most {high}" if low is None
                          else f"must be between {low:g} and {high:g}")
    predict = options.get("num_predict")
    if predict is not None and (isinstance(predict, bool) or not isinstance(predict, int)):
        raise invalid("options.num_predict", f"must be a whole number, not {kind_of(predict)}")
    stop = options.get("stop")
    if stop is not None and not isinstance(stop, str):
        _strings(stop, "options.stop")


def _check_common(body: Mapping[str, Any], values: bool) -> OllamaCall:
    if values:
        check_values(body)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GatewayError(400, "model is required: name a model from GET /api/tags.",
                           "model_required", param="model")
    stream = _typed(body, "stream", (bool,), "true or false")
    _check_options(body.get("options"))
    fmt = body.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        raise invalid("format", "must be \"json\" or a JSON schema (an object)")
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        raise invalid("think", "must be true, false, \"high\", \"medium\" or \"low\"")
    return OllamaCall(model=model.strip(), stream=True if stream is None else stream,
                      keep_alive_s=parse_keep_alive(body.get("keep_alive")),
                      load_only=False)


def _check_images(value: Any, field: str) -> None:
    for i, image in enumerate(_strings(value, field)):
        if not image:
            raise invalid(f"{field}[{i}]", "must not be empty")


def check_chat(body: Mapping[str, Any], *, values: bool = True) -> OllamaCall:
    """A POST /api/chat body; refuses what would fail later with a 400 naming the field.
    `values` False: the caller knows check_values has nothing to refuse."""
    call = _check_common(body, values)
    messages = body.get("messages")
    if messages is None:
        messages = []
    if not isinstance(messages, list):
        raise invalid("messages", f"must be a list, not {kind_of(messages)}")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, f"must be an object, not {kind_of(message)}")
        if message.get("role") not in ROLES:
            raise invalid(f"{where}.role", f"must be one of {', '.join(ROLES)}, not "
                          f"{message.get('role')!r}"[:200])
        for field in ("content", "thinking", "tool_name", "tool_call_id"):
            _typed(message, field, (str,), "a string", f"{where}.")
        _check_images(message.get("images"), f"{where}.images")
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise invalid(f"{where}.tool_calls", "must be a list")
            for j, tool_call in enumerate(calls):
                function = tool_call.get("function") if isinstance(tool_call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise invalid(f"{where}.tool_calls[{j}].function.name", "must be a string")
                arguments = function.get("arguments")
                if arguments is not None and not isinstance(arguments, (dict, str)):
                    raise invalid(f"{where}.tool_calls[{j}].function.arguments",
                                  "must be an object")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools", f"must be a list, not {kind_of(tools)}")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise invalid(f"tools[{i}].function.name", "must be a string")
            if function.get("parameters") is not None \
                    and not isinstance(function["parameters"], dict):
                raise invalid(f"tools[{i}].function.parameters", "must be an object")
    return OllamaCall(call.model, call.stream, call.keep_alive_s, load_only=not messages)


def check_generate(body: Mapping[str, Any], *, values: bool = True) -> OllamaCall:
    """A POST /api/generate body (`values` as for check_chat)."""
    call = _check_common(body, values)
    prompt = _typed(body, "prompt", (str,), "a string")
    _typed(body, "system", (str,), "a string")
    raw = _typed(body, "raw", (bool,), "true or false")
    _check_images(body.get("images"), "images")
    if body.get("suffix"):
        raise invalid("suffix", "fill-in-the-middle is not supported by this gateway: send "
                      "the text before the gap as the prompt")
    if body.get("template"):
        raise invalid("template", "is not accepted: every profile uses its model's own chat "
                      "template (use raw: true to send a prompt as is)")
    if raw and body.get("images"):
        raise invalid("images", "cannot be sent with raw: true")
    return OllamaCall(call.model, call.stream, call.keep_alive_s,
                      load_only=not prompt and not body.get("images"))


# --- requests ----------------------------------------------------------------------------


def _image_url(data: str, field: str) -> str:
    """A base64 image (or a data URL) as a data URL with its real type."""
    if data.startswith("data:"):
        return data
    try:
        head = base64.b64decode(data[:24], validate=True)
    except (binascii.Error, ValueError):
        raise invalid(field, "must be base64-encoded image data") from None
    kind = image_type(head)
    if kind is None:
        raise invalid(field, "is not an image this gateway reads (PNG, JPEG, GIF, WebP, BMP "
                      "or TIFF)")
    return f"data:{kind};base64,{data}"


def _user_content(text: str, images: Sequence[str], field: str) -> Any:
    if not images:
        return text
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": _image_url(image, f"{field}[{i}]")},
         CLIENT_FIELD: f"{field}[{i}]"}
        for i, image in enumerate(images)]
    if text:
        parts.append({"type": "text", "text": text})
    return parts


def _arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value or {}, ensure_ascii=False)


def convert_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI ones (tool calls get ids, tool results the id of
    the call they answer)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, tool name) not answered yet
    for i, message in enumerate(messages):
        role = message["role"]
        content = message.get("content") or ""
        if role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": content}
            calls = []
            for j, call in enumerate(message.get("tool_calls") or []):
                function = call["function"]
                call_id = str(call.get("id") or f"call_{i}_{j}")
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": function["name"],
                    "arguments": _arguments(function.get("arguments"))}})
                pending.append((call_id, function["name"]))
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            name = message.get("tool_name")
            if not call_id and pending:
                match = next((p for p in pending if p[1] == name), pending[0])
                pending.remove(match)
                call_id = match[0]
            out.append({"role": "tool", "tool_call_id": call_id or f"call_{i}",
                        "content": content})
        elif role == "user":
            out.append({"role": "user", "content": _user_content(
                content, message.get("images") or [], f"messages[{i}].images")})
        else:
            out.append({"role": "system", "content": content})
    return out


def sampling(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ollama `options` as OpenAI/MLX sampling fields."""
    out: dict[str, Any] = {}
    if not options:
        return out
    for name, (field, kind, _, _) in _OPTIONS.items():
        value = options.get(name)
        if name == "seed" and value is not None and value < 0:
            continue  # -1, as llama.cpp reads it: a random seed
        if value is not None:
            out[field] = int(value) if kind == "whole" else value
    predict = options.get("num_predict")
    if isinstance(predict, int) and predict > 0:
        out["max_tokens"] = predict
    stop = options.get("stop")
    if stop:
        out["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return out


def _with_format(request: dict[str, Any], fmt: Any, profile: Profile, constrain: bool
                 ) -> None:
    """`format` as a constraint (`constrain`: mlx_vlm on Metal) or, where the server has
    none, an instruction."""
    if fmt in (None, ""):
        return
    if constrain:
        request["response_format"] = {"type": "json_object"} if fmt == "json" else {
            "type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
        return
    rule = JSON_ONLY if fmt == "json" else (
        f"{JSON_ONLY} It must match this JSON schema: {json.dumps(fmt, ensure_ascii=False)}")
    messages = request["messages"]
    if messages and messages[0].get("role") == "system" \
            and isinstance(messages[0].get("content"), str):
        messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{rule}"}
    else:
        # A system message of our own would replace the profile's system prompt.
        system = f"{profile.system_prompt}\n\n{rule}" if profile.system_prompt else rule
        messages.insert(0, {"role": "system", "content": system})


def _with_think(request: dict[str, Any], think: Any) -> None:
    if think is None:
        return
    kwargs = dict(request.get("chat_template_kwargs") or {})
    kwargs["enable_thinking"] = bool(think)
    if isinstance(think, str):
        kwargs["reasoning_effort"] = think
    request["chat_template_kwargs"] = kwargs


def constrains_json(profile: Profile, metal: bool) -> bool:
    """Can the profile's server hold its output to a JSON schema? mlx_vlm can, with the
    Metal kernels of Apple Silicon (its structured output fails on the CPU back-end);
    mlx_lm has no structured output at all."""
    return profile.backend is Backend.MLX_VLM and metal


def chat_request(body: Mapping[str, Any], profile: Profile, *, constrain: bool = False
                 ) -> dict[str, Any]:
    """A checked /api/chat body as an OpenAI chat request for `profile`; `constrain`
    (see constrains_json) says how `format` is honoured."""
    request: dict[str, Any] = {"model": profile.name,
                               "messages": convert_messages(body.get("messages") or []),
                               **sampling(body.get("options"))}
    tools = body.get("tools")
    if tools:
        request["tools"] = [{"type": "function", "function": dict(t["function"])}
                            for t in tools]
    _with_format(request, body.get("format"), profile, constrain)
    _with_think(request, body.get("think"))
    request["stream"] = True
    return request


def generate_request(body: Mapping[str, Any], profile: Profile, *, constrain: bool = False
                     ) -> tuple[dict[str, Any], bool]:
    """A checked /api/generate body as an OpenAI request for `profile`, and whether it
    is a raw completion (`raw: true`: the prompt as is, to /v1/completions)."""
    prompt = body.get("prompt") or ""
    if body.get("raw"):
        if profile.backend is Backend.MLX_VLM:
            raise GatewayError(400, f"{profile.name} runs on mlx_vlm, which has no raw "
                               "completions: leave raw out.", "unsupported_endpoint")
        return {"model": profile.name, "prompt": prompt, "stream": True,
                **sampling(body.get("options"))}, True
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": _user_content(
        prompt, body.get("images") or [], "images")})
    request: dict[str, Any] = {"model": profile.name, "messages": messages,
                               **sampling(body.get("options"))}
    _with_format(request, body.get("format"), profile, constrain)
    _with_think(request, body.get("think"))
    request["stream"] = True
    return request, False

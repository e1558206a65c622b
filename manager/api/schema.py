"""The shape of gateway requests, checked before anything acts on them.

Every refusal is a 400 that names the field (`messages[0].content`, `temperature`),
so a malformed body never reaches code that would fail on it (a 500). Only the
fields the gateway or the model servers read are checked; unknown fields pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from manager.api.wire import GatewayError

#: JSON nested deeper than this is refused (tool schemas stay far below it).
MAX_DEPTH = 100
OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ANTHROPIC_ROLES = ("user", "assistant", "system")


#: The largest seed the MLX servers take (mx.random.seed: an unsigned 64-bit number).
SEED_MAX = 2 ** 64 - 1


def invalid(field: str, problem: str) -> GatewayError:
    return GatewayError(400, f"{field}: {problem}", "invalid_request", param=field)


def kind_of(value: Any) -> str:
    """A JSON value's kind in words, for messages that say what was sent instead."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check_values(body: Any) -> None:
    """Every string is valid Unicode (no lone surrogates, which cannot be sent on) and
    every number finite (JSON has no NaN, though Python's parser accepts it)."""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise invalid(path or "body", f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, str):
            _check_text(value, path or "body")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise invalid(path or "body", f"{value} is not a number JSON allows")
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path or "body")
                stack.append((item, _join(path, key), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, _join(path, i), depth + 1) for i, item in enumerate(value))


def values_known_good(raw: bytes | bytearray, strict: bool) -> bool:
    """True when check_values cannot refuse the body read from `raw`: its numbers and
    strings are known to be good (wire.parse_body_strict) and it has at most MAX_DEPTH
    brackets, so it cannot nest deeper (brackets inside strings only count extra).
    Two byte counts instead of a walk over every value of every request."""
    return strict and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH


def _check_text(text: str, field: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, "contains a lone surrogate (\\ud800-\\udfff), which is not "
                      "valid Unicode") from None


# --- field checks ----------------------------------------------------------------------


def _get(body: Mapping[str, Any], field: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise invalid(field, f"must be {what}, not {kind_of(value)}")
    if not isinstance(value, kinds):
        raise invalid(field, f"must be {what}, not {kind_of(value)}")
    return value


def _number(body: Mapping[str, Any], field: str, low: float | None = None,
            high: float | None = None) -> None:
    value = _get(body, field, (int, float), "a number")
    if value is None:
        return
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None \
            else f"at least {low:g}" if low is not None else f"at most {high:g}"
        raise invalid(field, f"must be {bounds}, not {value:g}")


def _whole(body: Mapping[str, Any], field: str, low: int, high: int | None = None) -> None:
    """A whole number (1e12 arrives as a float and is fine: the gateway caps it)."""
    value = _get(body, field, (int, float), "a whole number")
    if value is None:
        return
    if isinstance(value, float) and not value.is_integer():
        raise invalid(field, f"must be a whole number, not {value:g}")
    if value < low or (high is not None and value > high):
        limits = f"at least {low}" if high is None else f"between {low} and {high}"
        raise invalid(field, f"must be {limits}, not {value:g}")


def _flag(body: Mapping[str, Any], field: str) -> None:
    _get(body, field, (bool,), "true or false")


def _text_or_texts(body: Mapping[str, Any], field: str) -> None:
    value = body.get(field)
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid(field, "must be a string or a list of strings")


def _objects(value: Any, field: str, *, allow_empty: bool = True) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise invalid(field, f"must be a list, not {kind_of(value)}")
    if not value and not allow_empty:
        raise invalid(field, "must not be empty")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid(f"{field}[{i}]", f"must be an object, not {kind_of(item)}")
    return value


def _sampling(body: Mapping[str, Any]) -> None:
    _number(body, "temperature", 0, 100)
    _number(body, "top_p", 0, 1)
    _number(body, "min_p", 0, 1)
    _whole(body, "top_k", -1)
    for field in ("presence_penalty", "frequency_penalty"):
        _number(body, field, -100, 100)
    _number(body, "repetition_penalty", 0, 100)
    # MLX takes an unsigned 64-bit seed; one below 0 means a random one (gateway.py).
    _whole(body, "seed", -(2 ** 63), SEED_MAX)
    _flag(body, "stream")


def _path_fields(body: Mapping[str, Any]) -> None:
    """Fields that make a model server read local files or load other models."""
    for field in ("adapters", "adapter_path", "draft_model"):
        if body.get(field) is not None:
            raise invalid(field, "is not accepted by this gateway (it names files on the "
                          "server); the profile decides the model")


def _stream_options(body: Mapping[str, Any]) -> None:
    options = _get(body, "stream_options", (dict,), "an object")
    if options is not None and options.get("include_usage") is not None \
            and not isinstance(options["include_usage"], bool):
        raise invalid("stream_options.include_usage", "must be true or false")


# --- OpenAI ------------------------------------------------------------------------------


def _openai_content(value: Any, field: str) -> None:
    if value is None or isinstance(value, str):
        return
    for i, part in enumerate(_objects(value, field)):
        where = f"{field}[{i}]"
        kind = part.get("type")
        if not isinstance(kind, str):
            raise invalid(f"{where}.type", "must be a string such as 'text' or 'image_url'")
        if kind == "text" and not isinstance(part.get("text"), str):
            raise invalid(f"{where}.text", "must be a string")


def _tool_calls(value: Any, field: str) -> None:
    if value is None:
        return
    for i, call in enumerate(_objects(value, field)):
        function = call.get("function")
        if not isinstance(function, dict):
            raise invalid(f"{field}[{i}].function", "must be an object")
        if not isinstance(function.get("name"), str):
            raise invalid(f"{field}[{i}].function.name", "must be a string")
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, (str, dict)):
            raise invalid(f"{field}[{i}].function.arguments", "must be a JSON string")


def _openai_tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        for i, tool in enumerate(_objects(tools, "tools")):
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise invalid(f"tools[{i}].function.name", "must be a string")
            names.append(function["name"])
            params = function.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise invalid(f"tools[{i}].function.parameters", "must be an object")
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        _one_of(choice, ("none", "auto", "required"), "tool_choice")
    elif isinstance(choice, dict):
        if choice.get("type") == "function":  # (newer kinds, such as allowed_tools, pass)
            function = choice.get("function")
            _named_tool(function.get("name") if isinstance(function, dict) else None, names,
                        "tool_choice.function.name")
    elif choice is not None:
        raise invalid("tool_choice", f"must be a string or an object, not {kind_of(choice)}")


def _one_of(value: Any, allowed: tuple[str, ...], field: str) -> None:
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise invalid(field, f"must be one of {listed}, not {str(value)[:40]!r}")


def _named_tool(name: Any, names: list[str], field: str) -> None:
    """A tool_choice that names a tool names one of the request's tools."""
    if not isinstance(name, str):
        raise invalid(field, f"must be a string, not {kind_of(name)}")
    if name not in names:
        raise invalid(field, f"names no tool of this request: {name[:40]!r} is not among "
                             f"its tools ({', '.join(names)[:200] or 'none'})")


def _logit_bias(body: Mapping[str, Any]) -> None:
    """Token ids as whole-number strings, biases from -100 to 100 (OpenAI's range). The
    model's vocabulary bounds the ids later, once the profile is known (limits.py)."""
    bias = _get(body, "logit_bias", (dict,), "an object")
    for key, value in (bias or {}).items():
        if not (key.isascii() and key.isdigit()):
            raise invalid("logit_bias", f"keys must be token ids such as \"1234\", not {key!r}"[:200])
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not -100 <= value <= 100:
            raise invalid(f"logit_bias.{key}", "must be a number from -100 to 100")


def _common(body: Mapping[str, Any]) -> None:
    _whole(body, "max_tokens", 1)
    _whole(body, "max_completion_tokens", 1)
    _sampling(body)
    _text_or_texts(body, "stop")
    _stream_options(body)
    _path_fields(body)
    if body.get("n") not in (None, 1):  # one choice an answer, from these servers
        raise invalid("n", f"only 1 is served, not {str(body['n'])[:20]}: send one request "
                           "per answer")
    _logit_bias(body)
    _flag(body, "logprobs")
    _whole(body, "top_logprobs", 0)


def check_chat(body: Mapping[str, Any]) -> None:
    """An OpenAI chat completions request."""
    messages = _objects(body.get("messages"), "messages", allow_empty=False)
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in OPENAI_ROLES:
            raise invalid(f"messages[{i}].role",
                          f"must be one of {', '.join(OPENAI_ROLES)}, not {role!r}"[:200])
        _openai_content(message.get("content"), f"messages[{i}].content")
        _tool_calls(message.get("tool_calls"), f"messages[{i}].tool_calls")
        for field in ("name", "tool_call_id"):
            if message.get(field) is not None and not isinstance(message[field], str):
                raise invalid(f"messages[{i}].{field}", "must be a string")
    _common(body)
    _openai_tools(body)
    _get(body, "response_format", (dict,), "an object")
    _get(body, "chat_template_kwargs", (dict,), "an object")


def check_completion(body: Mapping[str, Any]) -> None:
    """An OpenAI legacy completions request (a prompt)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        # A batch of prompts gets one choice each from OpenAI; a model server answers one
        # prompt per request. Clients that always send a list send a list of one.
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise invalid("prompt", "must be one string (or a list of exactly one): send "
                                    "one request per prompt")
        prompt = prompt[0]
    elif not isinstance(prompt, str):
        raise invalid("prompt", f"must be a string, not {kind_of(prompt)}")
    if not prompt:
        # mlx_lm's generation thread dies on an empty prompt, and its server with it.
        raise invalid("prompt", "is empty: give the model some text to continue")
    _common(body)


# --- Anthropic ---------------------------------------------------------------------------


def _blocks(value: Any, field: str, *, text_only: bool = False) -> None:
    if isinstance(value, str):
        return
    for i, block in enumerate(_objects(value, field)):
        where = f"{field}[{i}]"
        kind = block.get("type")
        if not isinstance(kind, str):
            raise invalid(f"{where}.type", "must be a string such as 'text' or 'image'")
        if kind == "text" and not isinstance(block.get("text"), str):
            raise invalid(f"{where}.text", "must be a string")
        if text_only and kind != "document":
            continue
        if kind == "document":
            _document(block.get("source"), f"{where}.source")
        elif kind == "image":
            source = block.get("source")
            if not isinstance(source, dict):
                raise invalid(f"{where}.source", "must be an object")
            for name in ("type", "media_type", "data", "url"):
                if source.get(name) is not None and not isinstance(source[name], str):
                    raise invalid(f"{where}.source.{name}", "must be a string")
        elif kind == "tool_use":
            for name in ("id", "name"):
                if block.get(name) is not None and not isinstance(block[name], str):
                    raise invalid(f"{where}.{name}", "must be a string")
            if block.get("input") is not None and not isinstance(block["input"], dict):
                raise invalid(f"{where}.input", "must be an object")
        elif kind == "tool_result":
            if block.get("tool_use_id") is not None \
                    and not isinstance(block["tool_use_id"], str):
                raise invalid(f"{where}.tool_use_id", "must be a string")
            content = block.get("content")
            if content is not None:
                _blocks(content, f"{where}.content", text_only=True)


def _document(source: Any, field: str) -> None:
    if not isinstance(source, dict):
        raise invalid(field, "must be an object")
    for name in ("type", "media_type", "data", "url"):
        if source.get(name) is not None and not isinstance(source[name], str):
            raise invalid(f"{field}.{name}", "must be a string")
    if source.get("type") == "content" and source.get("content") is not None:
        _blocks(source["content"], f"{field}.content", text_only=True)


def check_messages(body: Mapping[str, Any]) -> None:
    """An Anthropic Messages request (or a count_tokens one, which has no max_tokens)."""
    messages = _objects(body.get("messages"), "messages", allow_empty=False)
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ANTHROPIC_ROLES:
            raise invalid(f"messages[{i}].role",
                          f"must be 'user', 'assistant' or 'system', not {role!r}"[:200])
        content = message.get("content")
        if not isinstance(content, (str, list)):
            raise invalid(f"messages[{i}].content",
                          f"must be a string or a list of blocks, not {kind_of(content)}")
        _blocks(content, f"messages[{i}].content", text_only=role == "system")
    system = body.get("system")
    if system is not None:
        _blocks(system, "system", text_only=True)
    _whole(body, "max_tokens", 1)
    _sampling(body)
    _text_or_texts(body, "stop_sequences")
    _path_fields(body)
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        for i, tool in enumerate(_objects(tools, "tools")):
            if not isinstance(tool.get("name"), str):
                raise invalid(f"tools[{i}].name", "must be a string")
            names.append(tool["name"])
            schema = tool.get("input_schema")
            if schema is not None and not isinstance(schema, dict):
                raise invalid(f"tools[{i}].input_schema", "must be an object")
    choice = _get(body, "tool_choice", (dict,), "an object")
    if choice is not None:
        _one_of(choice.get("type"), ("auto", "any", "tool", "none"), "tool_choice.type")
        if choice["type"] == "tool":
            _named_tool(choice.get("name"), names, "tool_choice.name")
    thinking = _get(body, "thinking", (dict,), "an object")
    budget = thinking.get("budget_tokens") if thinking is not None else None
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 1):
        raise invalid("thinking.budget_tokens", "must be a whole number of tokens")
    _get(body, "metadata", (dict,), "an object")


# --- OpenAI Responses ----------------------------------------------------------------

RESPONSES_ROLES = ("user", "assistant", "system", "developer")
_UNSUPPORTED = {
    "background": "background responses are not supported by this gateway; leave it out",
    "conversation": "conversations are not supported by this gateway; use "
                    "previous_response_id",
    "prompt": "prompt templates are not supported by this gateway; send input",
}


def _text(body: Mapping[str, Any], field: str, where: str | None = None) -> None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid(where or field, f"must be a string, not {kind_of(value)}")


def _response_item(item: Mapping[str, Any], where: str) -> None:
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise invalid(f"{where}.type", "must be a string such as 'message'")
    if kind == "message":
        role = item.get("role")
        if role not in RESPONSES_ROLES:
            raise invalid(f"{where}.role", f"must be one of {', '.join(RESPONSES_ROLES)}, "
                          f"not {role!r}"[:200])
        content = item.get("content")
        if isinstance(content, str):
            return
        for i, part in enumerate(_objects(content, f"{where}.content")):
            part_where = f"{where}.content[{i}]"
            if not isinstance(part.get("type"), str):
                raise invalid(f"{part_where}.type", "must be a string such as 'input_text'")
            if part["type"] in ("input_text", "output_text") \
                    and not isinstance(part.get("text"), str):
                raise invalid(f"{part_where}.text", "must be a string")
            _text(part, "image_url", f"{part_where}.image_url")
    elif kind == "function_call":
        for field in ("call_id", "name"):
            if not isinstance(item.get(field), str):
                raise invalid(f"{where}.{field}", "must be a string")
        _text(item, "arguments", f"{where}.arguments")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise invalid(f"{where}.call_id", "must be a string")
        output = item.get("output")
        if not isinstance(output, (str, list)):
            raise invalid(f"{where}.output", f"must be a string, not {kind_of(output)}")


def check_responses(body: Mapping[str, Any]) -> None:
    """An OpenAI Responses request."""
    for field, why in _UNSUPPORTED.items():
        if body.get(field) not in (None, False):
            raise invalid(field, why)
    value = body.get("input")
    if isinstance(value, list):
        for i, item in enumerate(_objects(value, "input", allow_empty=False)):
            _response_item(item, f"input[{i}]")
    elif not isinstance(value, str):
        raise invalid("input", f"a string or a list of items is required, not {kind_of(value)}")
    for field in ("instructions", "previous_response_id", "truncation", "user"):
        _text(body, field)
    _whole(body, "max_output_tokens", 1)
    _sampling(body)
    _path_fields(body)
    for field in ("store", "parallel_tool_calls"):
        _flag(body, field)
    include = body.get("include")
    if include is not None and (not isinstance(include, list)
                                or not all(isinstance(v, str) for v in include)):
        raise invalid("include", "must be a list of strings")
    for field in ("metadata", "text"):
        _get(body, field, (dict,), "an object")
    reasoning = _get(body, "reasoning", (dict,), "an object")
    if reasoning is not None:
        _text(reasoning, "effort", "reasoning.effort")
    tools = body.get("tools")
    if tools is not None:
        for i, tool in enumerate(_objects(tools, "tools")):
            if not isinstance(tool.get("type"), str):
                raise invalid(f"tools[{i}].type", "must be a string such as 'function'")
            if tool["type"] != "function":
                continue  # a hosted tool: left out of the prompt, with a warning
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise invalid(f"tools[{i}].name", "must be a non-empty string")
            params = tool.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise invalid(f"tools[{i}].parameters", "must be an object")
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise invalid("tool_choice", f"must be 'none', 'auto', 'required' or an object, "
                          f"not {choice!r}"[:200])
    elif choice is not None and not isinstance(choice, dict):
        raise invalid("tool_choice", f"must be a string or an object, not {kind_of(choice)}")


Checker = Callable[[Mapping[str, Any]], None]

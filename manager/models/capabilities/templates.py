"""Tool use and thinking from chat templates, tokenizer vocabularies and HF tags.

A template decides when there is one: it renders `tools`, or it carries thinking
markup (`manager.markup.THINKING_TAGS`) or a switch such as `enable_thinking`. A
template that ignores `tools` cannot show tool definitions to the model, so tool
markup inherited in the vocabulary does not count then. Only when no template is
known does markup in the vocabulary decide. `tool_parser_type` and tags always count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard

from manager.markup import THINKING_TAGS
from manager.models.capabilities.values import as_mapping, nonempty_str

_MAX_MARKUP_TOKEN_CHARS = 64

_TOOL_MARKUP = (
    "<tool_call>",
    "[TOOL_CALLS]",
    "<|python_tag|>",
    "<|tool_call_begin|>",
    "<|tool_calls_section_begin|>",
    "<|tool_call_start|>",
    "<|tool_call|>",
    "<|tool_call>",
    "<minimax:tool_call>",
    "<start_function_call>",
    "<longcat_tool_call>",
    "<function_call>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁call▁begin｜>",
)

_JINJA_CODE = re.compile(r"\{[{%](.*?)[%}]\}", re.S)

_TOOLS_VARIABLE = re.compile(r"(?<!\w)(?:custom_|builtin_)?tools(?!\w)")

_THINK_SWITCH = re.compile(
    r"(?<!\w)(?:enable_thinking|reasoning_effort|thinking_budget|thinking)(?!\w)"
)

_TOOL_TAGS = frozenset(
    {"tool-use", "tool_use", "tools", "tool-calling", "tool_calling", "function-calling",
     "function_calling", "function calling", "functions"}
)

_THINK_TAGS = frozenset({"reasoning", "thinking", "reasoner", "reasoning-model"})


def _jinja_code(template: str) -> str:
    return "\n".join(m.group(1) for m in _JINJA_CODE.finditer(template))


def has_tool_use(
    tok_config: Mapping[str, Any] | None,
    templates: list[str],
    vocab: set[str],
    tags: set[str],
) -> bool:
    """Tags or a tool parser say so; else the templates render `tools`; else vocabulary."""
    if tags & _TOOL_TAGS:
        return True
    if tok_config is not None and nonempty_str(tok_config.get("tool_parser_type")):
        return True
    if templates:
        return any(_TOOLS_VARIABLE.search(_jinja_code(t)) for t in templates)
    return any(marker in vocab for marker in _TOOL_MARKUP)


def has_thinking(templates: list[str], vocab: set[str], tags: set[str]) -> bool:
    """Tags say so; else a template has thinking markup or a switch; else both tags of a
    pair are in the vocabulary."""
    if tags & _THINK_TAGS:
        return True
    if templates:
        for template in templates:
            if any(p.open in template or p.close in template for p in THINKING_TAGS):
                return True
            if _THINK_SWITCH.search(_jinja_code(template)):
                return True
        return False
    return any(p.open in vocab and p.close in vocab for p in THINKING_TAGS)


def templates_from_tokenizer_config(tok_config: Mapping[str, Any] | None) -> list[str]:
    """chat_template is a string or a list of {"name", "template"} (named templates)."""
    if tok_config is None:
        return []
    raw = tok_config.get("chat_template")
    if isinstance(raw, str):
        return [raw] if raw.strip() else []
    if isinstance(raw, list):
        return [t["template"] for t in raw if isinstance(t, Mapping) and nonempty_str(t.get("template"))]
    return []


def is_markup(token: Any) -> TypeGuard[str]:
    return (
        isinstance(token, str)
        and 2 < len(token) <= _MAX_MARKUP_TOKEN_CHARS
        and token[0] in "<["
    )


def markup_tokens_from_tokenizer_config(tok_config: Mapping[str, Any] | None) -> list[str]:
    if tok_config is None:
        return []
    decoder = as_mapping(tok_config.get("added_tokens_decoder"))
    found = [as_mapping(v).get("content") for v in decoder.values()]
    extra = tok_config.get("additional_special_tokens")
    if isinstance(extra, list):
        found.extend(extra)
    return [t for t in found if is_markup(t)]


def markup_tokens_from_tokenizer_json(tokenizer: Mapping[str, Any] | None) -> list[str]:
    """Added tokens and markup-looking vocabulary entries (BPE dict or Unigram list)."""
    if tokenizer is None:
        return []
    found: list[Any] = []
    added = tokenizer.get("added_tokens")
    if isinstance(added, list):
        found.extend(as_mapping(t).get("content") for t in added)
    vocab = as_mapping(tokenizer.get("model")).get("vocab")
    if isinstance(vocab, Mapping):
        found.extend(vocab.keys())
    elif isinstance(vocab, list):
        found.extend(item[0] for item in vocab if isinstance(item, list) and item)
    return [t for t in found if is_markup(t)]

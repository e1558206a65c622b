"""Tool use and thinking from chat templates, vocabularies and tags (capabilities.templates)."""

from __future__ import annotations

from typing import Any

import pytest

from manager.models.capabilities import from_files
from tests.capability_samples import QWEN3_06B, QWEN3_TEMPLATE, tok

# --- tool use and thinking from templates, vocabularies and tags -------------------------


@pytest.mark.parametrize(
    ("tok_config", "vocab", "tags", "tool_use", "thinking"),
    [
        (tok("{% if tools %}{{ tools | tojson }}{% endif %}"), [], [], True, False),
        (tok("{%- if tools is not none -%}x{%- endif -%}"), [], [], True, False),
        (tok("{% if custom_tools is defined %}{% endif %}"), [], [], True, False),
        (tok("{% if 'tools' in message %}{{ message['tools'] }}{% endif %}"), [], [], True, False),
        # the word in plain text, outside Jinja code, is not a tools variable
        (tok("You can use tools. {{ messages[0]['content'] }}"), [], [], False, False),
        # template known and silent on tools: vocabulary markup does not count
        (tok("{{ messages[0]['content'] }}"), ["<tool_call>", "</tool_call>"], [], False, False),
        # no template: vocabulary markup decides
        (None, ["<tool_call>", "</tool_call>"], [], True, False),
        (None, ["[TOOL_CALLS]"], [], True, False),
        (None, ["<|python_tag|>"], [], True, False),
        (None, ["<|tool_call_begin|>"], [], True, False),
        (None, ["<think>"], [], False, False),  # needs both ends
        (None, ["<think>", "</think>"], [], False, True),
        (None, ["[THINK]", "[/THINK]"], [], False, True),
        (None, ["<thinking>", "</thinking>"], [], False, True),
        (tok("{{ '<think>\\n' }}"), [], [], False, True),
        (tok("{% if enable_thinking %}x{% endif %}"), [], [], False, True),
        (tok("Reasoning: {{ reasoning_effort }}"), [], [], False, True),
        (tok("{% if thinking %}x{% endif %}"), [], [], False, True),
        (tok("{% set ns.is_thinking = false %}"), [], [], False, False),
        (tok("{{ messages }}"), ["<think>", "</think>"], [], False, False),
        (tok(None, tool_parser_type="json_tools"), [], [], True, False),
        (tok("{{ messages }}"), [], ["tool-use"], True, False),
        (None, [], ["function-calling", "reasoning"], True, True),
        (None, [], ["Thinking"], False, True),
        # named templates (a list) are all considered
        (tok([{"name": "default", "template": "{{ messages }}"},
              {"name": "tool_use", "template": "{% for tool in tools %}{% endfor %}"}]),
         [], [], True, False),
        # added tokens from tokenizer_config count as vocabulary
        ({"added_tokens_decoder": {"1": {"content": "<think>"}, "2": {"content": "</think>"}}},
         [], [], False, True),
    ],
)
def test_tool_use_and_thinking(tok_config: dict[str, Any] | None, vocab: list[str],
                               tags: list[str], tool_use: bool, thinking: bool) -> None:
    caps = from_files(QWEN3_06B, tok_config, tags, vocab_tokens=vocab)
    assert (caps.tool_use, caps.thinking) == (tool_use, thinking)


def test_separate_chat_template_text_is_used() -> None:
    caps = from_files(QWEN3_06B, {}, chat_template=QWEN3_TEMPLATE)
    assert caps.tool_use and caps.thinking

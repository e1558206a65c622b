"""Anthropic <-> OpenAI translation, table by table, checked against the real anthropic SDK."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manager.api.anthropic import (
    StreamTranslator,
    anthropic_error,
    from_openai_response,
    sse,
    to_openai_request,
)
from manager.errors import ValidationError

TOOL = {"name": "get_weather", "description": "Weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        ),
        (
            {"max_tokens": 5, "system": "Be brief.", "temperature": 0.2, "top_p": 0.9,
             "top_k": 20, "stop_sequences": ["END"],
             "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b"}]}]},
            {"model": "m", "max_tokens": 5, "temperature": 0.2, "top_p": 0.9, "top_k": 20,
             "stop": ["END"],
             "messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "ab"}]},
        ),
        (
            {"max_tokens": 5, "system": [{"type": "text", "text": "S1"},
                                         {"type": "text", "text": "S2"}],
             "messages": [{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"},
                          {"role": "user", "content": "q2"}]},
            {"model": "m", "max_tokens": 5,
             "messages": [{"role": "system", "content": "S1\nS2"},
                          {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"},
                          {"role": "user", "content": "q2"}]},
        ),
        (
            {"max_tokens": 9, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "QUJD"}},
                {"type": "text", "text": "what is this?"}]}]},
            {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"},
                 # For the gate's errors (images.py), which drops it.
                 "mm_client_field": "messages[0].content[0].source.data"},
                {"type": "text", "text": "what is this?"}]}]},
        ),
        (
            {"max_tokens": 9, "tools": [TOOL], "tool_choice": {"type": "any"},
             "messages": [
                 {"role": "user", "content": "weather?"},
                 {"role": "assistant", "content": [
                     {"type": "thinking", "thinking": "hmm", "signature": ""},
                     {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                      "input": {"city": "Paris"}}]},
                 {"role": "user", "content": [
                     {"type": "tool_result", "tool_use_id": "toolu_1",
                      "content": [{"type": "text", "text": "sunny"}]}]}]},
            {"model": "m", "max_tokens": 9, "tool_choice": "required",
             "tools": [{"type": "function", "function": {
                 "name": "get_weather", "description": "Weather",
                 "parameters": TOOL["input_schema"]}}],
             "messages": [
                 {"role": "user", "content": "weather?"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "toolu_1", "type": "function",
                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                 {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]},
        ),
        (
            {"max_tokens": 3, "stream": True, "tools": [TOOL],
             "tool_choice": {"type": "tool", "name": "get_weather"},
             "messages": [{"role": "user", "content": [
                 {"type": "tool_result", "tool_use_id": "t9", "content": "boom",
                  "is_error": True},
                 {"type": "text", "text": "and now?"}]}]},
            {"model": "m", "max_tokens": 3, "stream": True,
             "stream_options": {"include_usage": True},
             "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
             "tools": [{"type": "function", "function": {
                 "name": "get_weather", "description": "Weather",
                 "parameters": TOOL["input_schema"]}}],
             "messages": [{"role": "tool", "tool_call_id": "t9", "content": "Error: boom"},
                          {"role": "user", "content": "and now?"}]},
        ),
    ],
    ids=["plain", "system-sampling-stop", "system-blocks-multiturn", "image", "tool-roundtrip",
         "stream-tool-error"],
)
def test_requests_translate_to_openai(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_openai_request(body, "m") == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 5, "messages": []}, "non-empty list"),
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": "JVBERi0="}}]}]},
         "application/pdf documents are not supported.*text source"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]},
         "url documents are not supported"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
         "unsupported content block type 'audio'"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
         "unsupported image source"),
    ],
)
def test_bad_requests_get_clear_messages(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        to_openai_request(body, "m")


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
     (None, "end_turn")],
)
def test_responses_translate_to_anthropic(finish: str | None, stop_reason: str) -> None:
    response = {
        "choices": [{"finish_reason": finish, "message": {
            "role": "assistant", "content": "It is sunny.", "reasoning": "Need weather.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7},
    }
    message = from_openai_response(response, "tiny")
    assert message["model"] == "tiny" and message["id"].startswith("msg_")
    assert message["stop_reason"] == stop_reason
    assert message["content"] == [
        {"type": "thinking", "thinking": "Need weather.", "signature": ""},
        {"type": "text", "text": "It is sunny."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message["usage"] == {"input_tokens": 11, "output_tokens": 7}


def test_vlm_reasoning_content_field_is_read_too() -> None:
    message = from_openai_response(
        {"choices": [{"finish_reason": "stop",
                      "message": {"content": "ok", "reasoning_content": "because"}}]}, "v")
    assert message["content"][0] == {"type": "thinking", "thinking": "because", "signature": ""}
    assert message["usage"] == {"input_tokens": 0, "output_tokens": 0}


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None,
           usage: dict[str, int] | None = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {"choices": [] if delta is None else
                             [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        chunk["usage"] = usage
    return chunk


def _run(chunks: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    translator = StreamTranslator(model="tiny")
    events = list(translator.start())
    for chunk in chunks:
        events.extend(translator.feed(chunk))
    events.extend(translator.finish())
    return events


def _accumulate(events: list[tuple[str, dict[str, Any]]]) -> Any:
    # Imported here: the SDK costs seconds to import, and every pytest-xdist worker
    # imports every test module to collect it, whichever worker runs this one.
    from anthropic.lib.streaming._messages import accumulate_event

    snapshot = None
    buffers: dict[int, bytes] = {}
    for _, data in events:
        # Through JSON, as it travels: the SDK parses exactly what it would receive.
        snapshot = accumulate_event(event=json.loads(json.dumps(data)),
                                    current_snapshot=snapshot, json_bufs=buffers)
    return snapshot


def test_stream_of_thinking_text_and_tool_call_follows_the_documented_sequence() -> None:
    events = _run([
        _chunk({"role": "assistant", "reasoning": "Need "}),
        _chunk({"reasoning": "weather."}),
        _chunk({"content": "Checking"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        _chunk({}, finish="tool_calls"),
        _chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 8}),
    ])
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "message_delta", "message_stop",
    ]
    assert [d["index"] for n, d in events if n == "content_block_start"] == [0, 1, 2]
    message = _accumulate(events)
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[0].thinking == "Need weather."
    assert message.content[1].text == "Checking"
    assert message.content[2].name == "get_weather"
    assert message.content[2].input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 8


def test_an_empty_stream_still_opens_and_closes_the_message() -> None:
    events = _run([_chunk({}, finish="length")])
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1][1]["delta"]["stop_reason"] == "max_tokens"


def test_two_tool_calls_become_two_blocks() -> None:
    events = _run([
        _chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f",
                                                                    "arguments": "{}"}}]}),
        _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g",
                                                                    "arguments": "{}"}}]}),
    ])
    message = _accumulate(events)
    assert [(b.id, b.name) for b in message.content] == [("a", "f"), ("b", "g")]


def test_sse_framing_and_errors() -> None:
    assert sse("message_stop", {"type": "message_stop"}) == (
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    assert anthropic_error(404, "no such model") == {
        "type": "error", "error": {"type": "not_found_error", "message": "no such model"}}
    assert anthropic_error(502, "backend died")["error"]["type"] == "api_error"


def test_system_entries_inside_messages_join_the_system_prompt_in_order() -> None:
    body = {"max_tokens": 5, "system": "First.", "messages": [
        {"role": "user", "content": "q1"},
        {"role": "system", "content": "Second."},
        {"role": "assistant", "content": "a1"},
        {"role": "system", "content": [{"type": "text", "text": "Third."}]},
        {"role": "user", "content": "q2"}]}
    assert to_openai_request(body, "m")["messages"] == [
        {"role": "system", "content": "First.\n\nSecond.\n\nThird."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"}]
    only_inside = {"max_tokens": 5, "messages": [{"role": "system", "content": "S"},
                                                 {"role": "user", "content": "q"}]}
    assert to_openai_request(only_inside, "m")["messages"][0] == {"role": "system",
                                                                  "content": "S"}


def test_text_documents_become_text_the_model_reads() -> None:
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "title": "Notes", "context": "From the wiki",
         "source": {"type": "text", "media_type": "text/plain", "data": "Cats sleep a lot."}},
        {"type": "document", "source": {"type": "content", "content": [
            {"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}},
        {"type": "text", "text": "Summarise."}]}]}
    assert to_openai_request(body, "m")["messages"] == [{"role": "user", "content": (
        "Document: Notes\nFrom the wiki\n\nCats sleep a lot.\n\n"
        "Document:\n\nPart one.\nPart two.\n\nSummarise.")}]


def test_message_start_carries_the_prompt_count_known_before_the_stream() -> None:
    translator = StreamTranslator("tiny", input_tokens=42)
    events = list(translator.feed(_chunk({"content": "Hi"})))
    events += list(translator.finish())
    assert events[0][1]["message"]["usage"] == {"input_tokens": 42, "output_tokens": 0}
    assert _accumulate(events).usage.input_tokens == 42

"""Responses API <-> chat completions, table by table, checked against the openai SDK's
own types and its stream accumulator (no server); the stored responses in real SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from manager.accounts.auth import AuthService
from manager.api.responses import (
    from_chat_response,
    left_out_tools,
    new_id,
    output_text,
    to_chat_request,
    warning_header,
)
from manager.api.responses_stream import ResponsesFormat, ResponsesStream, sse
from manager.api.schema import check_responses
from manager.api.wire import Failure, GatewayError
from manager.chat.stored_responses import DAY_S, ResponseStore
from manager.errors import NotFound, ValidationError
from manager.servers.server_stream import Batch
from manager.store import Store
from tests.conftest import PASSWORD, TEST_HASHER, Clock

if TYPE_CHECKING:
    from openai.lib.streaming.responses._responses import ResponseStreamState

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CHAT_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": WEATHER["parameters"]}}


@cache
def sdk() -> SimpleNamespace:
    """The openai SDK's types, imported on first use: they cost seconds, and every
    pytest-xdist worker imports this module to collect it, whichever worker runs it."""
    from openai import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    return SimpleNamespace(omit=omit, Response=Response, StreamState=ResponseStreamState,
                           events=TypeAdapter(ResponseStreamEvent))


def chat_of(body: dict[str, Any], history: list[dict[str, Any]] | None = None
            ) -> dict[str, Any]:
    return to_chat_request(body, "m", history or []).chat


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"input": "Hi"}, {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
        (
            {"input": "Hi", "instructions": "Be brief.", "max_output_tokens": 9,
             "temperature": 0.5, "top_p": 0.9, "stream": True},
            {"model": "m", "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "stream": True,
             "messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"}]},
        ),
        (
            {"input": [{"role": "developer", "content": "Rules."},
                       {"role": "system", "content": [{"type": "input_text", "text": "S"}]},
                       {"type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": "a"},
                                    {"type": "input_text", "text": "b"}]},
                       {"role": "assistant", "content": [
                           {"type": "output_text", "text": "ok", "annotations": []}]}]},
            {"model": "m", "messages": [{"role": "system", "content": "Rules."},
                                        {"role": "system", "content": "S"},
                                        {"role": "user", "content": "ab"},
                                        {"role": "assistant", "content": "ok"}]},
        ),
        (
            {"input": [{"role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,QUJD"}]}]},
            {"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"},
                 # For the gate's errors (images.py), which drops it.
                 "mm_client_field": "input[0].content[1].image_url"}]}]},
        ),
        (
            {"tools": [WEATHER, {"type": "web_search"}], "tool_choice": "required",
             "reasoning": {"effort": "none"},
             "input": [{"role": "user", "content": "Weather?"},
                       {"type": "reasoning", "id": "rs_1", "summary": [
                           {"type": "summary_text", "text": "Need weather."}]},
                       {"type": "function_call", "id": "fc_1", "call_id": "call_1",
                        "name": "get_weather", "arguments": '{"city": "Paris"}'},
                       {"type": "function_call_output", "call_id": "call_1",
                        "output": "sunny"}]},
            {"model": "m", "tools": [CHAT_WEATHER], "tool_choice": "required",
             "chat_template_kwargs": {"enable_thinking": False},
             "messages": [
                 {"role": "user", "content": "Weather?"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "call_1", "type": "function", "function": {
                         "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]},
        ),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
             "reasoning": {"effort": "high"},
             "input": [{"role": "assistant", "content": "Let me look."},
                       {"type": "function_call", "call_id": "c2", "name": "get_weather",
                        "arguments": "{}"},
                       {"type": "function_call_output", "call_id": "c2",
                        "output": [{"type": "input_text", "text": "rain"}]}]},
            {"model": "m", "tools": [CHAT_WEATHER],
             "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
             "chat_template_kwargs": {"enable_thinking": True},
             "messages": [
                 {"role": "assistant", "content": "Let me look.", "tool_calls": [
                     {"id": "c2", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "c2", "content": "rain"}]},
        ),
    ],
    ids=["string", "instructions-sampling", "roles", "image", "tool-roundtrip",
         "text-then-call"],
)
def test_requests_translate_to_chat(body: dict[str, Any], expected: dict[str, Any]) -> None:
    check_responses(body)
    assert chat_of(body) == expected


def test_an_image_is_stored_and_sent_again_without_the_gates_field_name() -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,QUJD"}
    first = to_chat_request({"input": [{"role": "user", "content": [image]}]}, "m")
    assert first.input_items[0]["content"] == [{**image, "detail": "auto"}]
    second = to_chat_request({"input": "And now?"}, "m", first.input_items)
    assert second.chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]


def test_history_comes_before_the_input_and_instructions_before_both() -> None:
    first = to_chat_request({"input": "My name is Ada.", "instructions": "Old rules"}, "m")
    reply = from_chat_response(
        {"choices": [{"message": {"content": "Hello Ada."}, "finish_reason": "stop"}]},
        "resp_1", "m", first.echo, 0)
    history = [*first.input_items, *reply["output"]]
    second = to_chat_request({"input": "My name?", "instructions": "New rules"}, "m", history)
    assert second.chat["messages"] == [
        {"role": "system", "content": "New rules"},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "My name?"}]
    # Input items get ids, as input_items lists them.
    assert second.input_items[0]["id"].startswith("msg_")
    assert second.input_items[0]["content"] == [{"type": "input_text", "text": "My name?"}]


def test_hosted_tools_are_left_out_with_a_warning() -> None:
    body = {"input": "x", "tools": [WEATHER, {"type": "web_search"},
                                    {"type": "file_search", "vector_store_ids": []},
                                    {"type": "web_search"}]}
    check_responses(body)
    assert left_out_tools(body) == ["web_search", "file_search"]
    assert "web_search, file_search" in warning_header(left_out_tools(body))["warning"]
    assert warning_header([]) == {}
    translated = to_chat_request(body, "m")
    assert translated.chat["tools"] == [CHAT_WEATHER]
    assert translated.echo["tools"] == [WEATHER]
    only_hosted = to_chat_request({"input": "x", "tools": [{"type": "web_search"}],
                                   "tool_choice": {"type": "web_search"}}, "m")
    assert "tools" not in only_hosted.chat and "tool_choice" not in only_hosted.chat


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "input_file"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
         "data: URL"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
         "no function tool named 'nope'"),
    ],
)
def test_untranslatable_requests_get_clear_messages(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        to_chat_request(body, "m")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": ["hi"]}, "input[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]},
         "input[0].content[0].text"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
         "input[0].call_id"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 4}]},
         "input[0].output"),
        ({"input": "x", "instructions": ["a"]}, "instructions"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": "hot"}, "temperature"),
        ({"input": "x", "top_p": 2}, "top_p"),
        ({"input": "x", "store": "yes"}, "store"),
        ({"input": "x", "previous_response_id": 7}, "previous_response_id"),
        ({"input": "x", "include": "reasoning"}, "include"),
        ({"input": "x", "reasoning": "high"}, "reasoning"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{"name": "f"}]}, "tools[0].type"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ],
)
def test_bad_bodies_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        check_responses(body)
    assert caught.value.failure.status == 400
    assert caught.value.failure.param == param


# --- responses and streams ---------------------------------------------------------------


def test_a_whole_answer_is_a_response_the_sdk_validates() -> None:
    echo = to_chat_request({"input": "x", "tools": [WEATHER], "max_output_tokens": 64},
                           "m").echo
    raw = {"choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Checking.", "reasoning": "Need weather.",
        "tool_calls": [{"id": "call_9", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7}}
    payload = from_chat_response(raw, "resp_1", "tiny", echo, 1_800_000_000)
    response = sdk().Response.model_validate(payload)
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    assert response.output_text == "Checking."
    assert response.output[0].summary[0].text == "Need weather."  # type: ignore[union-attr]
    call = response.output[2]
    assert call.type == "function_call" and call.call_id == "call_9"
    assert call.arguments == '{"city": "Paris"}'
    assert response.usage is not None and response.usage.total_tokens == 18
    assert response.status == "completed" and response.max_output_tokens == 64
    cut = from_chat_response({"choices": [{"finish_reason": "length", "message": {
        "content": "abc"}}]}, "resp_2", "tiny", echo, 0)
    details = sdk().Response.model_validate(cut).incomplete_details
    assert details is not None and details.reason == "max_output_tokens"


def _chunks(*deltas: dict[str, Any], finish: str = "stop") -> list[dict[str, Any]]:
    out = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    out.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    out.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}})
    return out


def _run(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ResponseStreamState[Any]]:
    """The events for `chunks` as the relay writes them (ResponsesFormat: most deltas on
    its quick path), each parsed from its SSE bytes, validated against the SDK's event
    types and fed to the SDK's own stream accumulator. The same chunks fed to a
    ResponsesStream one by one give the same events (the quick path is only quicker)."""
    echo = to_chat_request({"input": "x", "tools": [WEATHER]}, "m").echo
    fmt = ResponsesFormat(ResponsesStream("resp_t", "tiny", echo), lambda response: None)
    raw = fmt.start() + b"".join(
        fmt.batch(Batch(b"data: " + json.dumps(c).encode() + b"\n\n")) for c in chunks)
    raw += fmt.finish()
    plain = ResponsesStream("resp_t", "tiny", echo, created_at=fmt.stream.created_at)
    slow = [e for c in chunks for e in plain.feed(c)] + list(plain.finish())
    state: ResponseStreamState[Any] = sdk().StreamState(input_tools=sdk().omit,
                                                        text_format=sdk().omit)
    events = []
    for block, expected in zip(raw.decode().strip().split("\n\n"), slow, strict=True):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        state.handle_event(sdk().events.validate_python(event))
        events.append(event)
        assert _without_ids(event) == _without_ids(json.loads(sse(expected).split(b"\n")[1][6:]))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, state


def _without_ids(event: Any) -> Any:
    """An event with its generated ids and times blanked (two streams differ only there)."""
    if isinstance(event, dict):
        return {k: "" if k in ("id", "item_id", "completed_at") else _without_ids(v)
                for k, v in event.items()}
    if isinstance(event, list):
        return [_without_ids(v) for v in event]
    return event


def test_a_streamed_answer_accumulates_in_the_sdk() -> None:
    events, state = _run(_chunks({"reasoning": "Let me"}, {"reasoning": " think."},
                                 {"content": "The answer"}, {"content": " is 4."}))
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    final = state._completed_response
    assert final is not None and final.output_text == "The answer is 4."
    assert final.output[0].summary[0].text == "Let me think."  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.output_tokens == 4
    streamed = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert streamed == final.output_text


def test_a_streamed_tool_call_accumulates_in_the_sdk() -> None:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    events, state = _run(_chunks({"reasoning": "Need weather."}, {"tool_calls": [call]},
                                 finish="tool_calls"))
    final = state._completed_response
    assert final is not None
    assert [item.type for item in final.output] == ["reasoning", "function_call"]
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done[0]["arguments"] == '{"city": "Paris"}'
    assert final.output[1].call_id == "call_1"  # type: ignore[union-attr]
    assert final.output[1].arguments == '{"city": "Paris"}'  # type: ignore[union-attr]


def test_a_stream_cut_by_max_tokens_is_incomplete_and_a_failure_is_failed() -> None:
    events, _ = _run(_chunks({"content": "abc"}, finish="length"))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    stream = ResponsesStream("resp_f", "tiny", {})
    list(stream.feed({"choices": [{"delta": {"content": "par"}}]}))
    failed = list(stream.fail("backend_error", "tiny stopped answering"))
    assert [e["type"] for e in failed] == ["error", "response.failed"]
    for event in failed:
        sdk().events.validate_python(event)
    assert failed[1]["response"]["error"]["message"] == "tiny stopped answering"
    assert failed[1]["response"]["output"][0]["status"] == "incomplete"
    assert output_text(failed[1]["response"]["output"]) == "par"


# --- stored responses ---------------------------------------------------------------------


@pytest.fixture
def stored(tmp_path: Path, clock: Clock) -> Iterator[tuple[ResponseStore, Any, Any]]:
    store = Store(tmp_path / "manager.db")
    auth = AuthService(store, b"k" * 32, hasher=TEST_HASHER)
    ada = auth.register("ada@example.com", PASSWORD)
    bob = auth.approve(ada, auth.register("bob@example.com", PASSWORD).id)
    responses = ResponseStore(store, 2, clock=clock)
    yield responses, ada, bob
    responses.close()


def _response(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "model": "tiny", "output": [
        {"id": "msg_o", "type": "message", "role": "assistant", "content": []}]}


def test_stored_responses_belong_to_their_owner(stored: Any) -> None:
    responses, ada, bob = stored
    items = [{"id": f"msg_{i}", "type": "message"} for i in range(5)]
    assert responses.save(ada, _response("resp_a"), history=[{"id": "h"}], input_items=items)
    got = responses.get(ada, "resp_a")
    assert got.size > 0
    assert [i["id"] for i in got.context()] == ["h", *[i["id"] for i in items], "msg_o"]
    # Another owner finds nothing, and cannot delete it.
    with pytest.raises(NotFound, match="resp_a"):
        responses.get(bob, "resp_a")
    with pytest.raises(NotFound):
        responses.delete(bob, "resp_a")
    page = responses.input_items(ada, "resp_a", limit=2)
    assert [i["id"] for i in page.items] == ["msg_4", "msg_3"] and page.has_more
    page = responses.input_items(ada, "resp_a", order="asc", after="msg_2")
    assert [i["id"] for i in page.items] == ["msg_3", "msg_4"] and not page.has_more
    with pytest.raises(ValidationError, match="after"):
        responses.input_items(ada, "resp_a", after="msg_x")
    responses.delete(ada, "resp_a")
    with pytest.raises(NotFound):
        responses.get(ada, "resp_a")


def test_old_responses_are_not_found_then_pruned(stored: Any, clock: Clock) -> None:
    responses, ada, _ = stored
    responses.save(ada, _response("resp_old"), history=[], input_items=[])
    clock.now += 2 * DAY_S + 1
    with pytest.raises(NotFound):
        responses.get(ada, "resp_old")
    # The next save an hour or more after the last prune deletes it.
    responses.save(ada, _response("resp_new"), history=[], input_items=[])
    assert responses.prune() == 0
    assert responses.get(ada, "resp_new").id == "resp_new"
    off = ResponseStore(responses._store, 0)
    assert not off.save(ada, _response("resp_x"), history=[], input_items=[])


def test_the_relay_format_stores_before_the_last_event_and_fails_in_shape() -> None:
    saved: list[dict[str, Any]] = []
    fmt = ResponsesFormat(ResponsesStream("resp_r", "tiny", {}), saved.append)
    # A failure before the stream began (the model did not load): OpenAI's error data,
    # which the SDK raises as an APIError.
    assert fmt.error(Failure(503, "tiny did not load", "server_start_failed")) \
        .startswith(b'data: {"error":')
    head = fmt.start()
    assert head.startswith(b"event: response.created\n")
    body = fmt.batch(Batch(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'))
    assert b"response.output_text.delta" in body and not saved
    # Text for the open item takes the quick path; anything else does not.
    assert fmt.stream.next_delta({"choices": [{"delta": {"content": "!"}}]}) \
        .startswith(b"event: response.output_text.delta\n")
    for other in ({"choices": [{"delta": {"reasoning": "hm"}}]},
                  {"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}]},
                  {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}):
        assert fmt.stream.next_delta(other) is None
    last = fmt.finish()
    assert saved and saved[0]["status"] == "completed"
    assert output_text(saved[0]["output"]) == "Hi!"
    assert last.rstrip().splitlines()[-2] == b"event: response.completed"
    failing = ResponsesFormat(ResponsesStream("resp_s", "tiny", {}), saved.append)
    failing.start()
    events = failing.error(Failure(502, "tiny stopped answering", "backend_error"))
    assert b"event: error\n" in events and b"event: response.failed\n" in events
    assert len(saved) == 1


def test_a_response_saved_from_the_event_loop_is_found_at_once_and_written(
        stored: Any, tmp_path: Path) -> None:
    responses, ada, bob = stored
    assert responses.save_soon(ada, _response("resp_soon"), history=[], input_items=[])
    assert responses.get(ada, "resp_soon").id == "resp_soon"  # written or not yet
    with pytest.raises(NotFound):
        responses.get(bob, "resp_soon")
    responses.save_soon(ada, _response("resp_gone"), history=[], input_items=[])
    responses.delete(ada, "resp_gone")  # before or after its write: it stays deleted
    responses.close()  # every pending write done
    again = ResponseStore(Store(tmp_path / "manager.db"), 2, clock=responses._clock)
    assert again.get(ada, "resp_soon").response["output"][0]["id"] == "msg_o"
    with pytest.raises(NotFound):
        again.get(ada, "resp_gone")
    again.close()


def test_ids_are_a_prefix_and_a_random_version_4_uuid() -> None:
    import uuid

    ids = {new_id("resp") for _ in range(200)}
    assert len(ids) == 200
    for made in ids:
        prefix, _, text = made.partition("_")
        parsed = uuid.UUID(hex=text)
        assert prefix == "resp" and parsed.hex == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_prepared_requests_id_is_made_once() -> None:
    from manager.api.responses_routes import Prepared

    prepared = Prepared(None, {}, {}, [], [], None)  # type: ignore[arg-type]
    first = prepared.response_id
    assert first.startswith("resp_") and prepared.response_id == first
    assert prepared.format("tiny").stream.response_id == first


@pytest.mark.parametrize("extra", [
    {"metadata": {"note": "café ☃ \u2028 \x01"}},  # raw UTF-8, control characters escaped
    {"metadata": {"n": 2**70}},  # past 64 bits: orjson cannot write it, json does
    {"temperature": 0.7, "top_p": 1e-05},
])
def test_an_event_is_its_compact_json_whatever_writes_it(extra: dict[str, Any]) -> None:
    event = {"type": "response.created", "sequence_number": 0,
             "response": {"id": "resp_1", **extra}}
    written = sse(event)
    head, data, tail = written.split(b"\n", 2)
    assert head == b"event: response.created" and tail == b"\n"
    assert data.startswith(b"data: ") and json.loads(data[6:]) == event
    assert b": " not in data[6:] and b", " not in data[6:]  # compact
    if extra.get("metadata", {}).get("note"):
        assert "café ☃".encode() in data  # not escaped as \uXXXX

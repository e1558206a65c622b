"""Ollama API <-> OpenAI translation, table by table; every answer shape is read back
through the official ollama client's own response models."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from ollama import ChatResponse, GenerateResponse, ListResponse, ProcessResponse, ShowResponse

from manager.api.ollama import (
    JSON_ONLY,
    chat_request,
    check_chat,
    check_generate,
    constrains_json,
    generate_request,
    parse_keep_alive,
    sampling,
)
from manager.api.ollama_wire import (
    CHAT,
    GENERATE,
    OllamaReply,
    ps_entry,
    show_payload,
    tags_entry,
)
from manager.api.wire import GatewayError
from manager.models.capabilities import Capabilities
from manager.servers.profiles import Backend, Profile

TEXT = Profile(id=1, name="tiny", model="/models/tiny", backend=Backend.MLX_LM,
               host="127.0.0.1", port=1, system_prompt="Be kind.", max_tokens=64,
               temperature=0.5, created_at="2026-12-01T10:00:00+00:00",
               updated_at="2026-12-01T11:00:00.123456+00:00")
VISION = Profile(id=2, name="eyes", model="/models/eyes", backend=Backend.MLX_VLM,
                 host="127.0.0.1", port=2, created_at="2026-12-01T10:00:00+00:00")
CAPS = Capabilities(architecture="qwen3", context_length=4096, quant_bits=4,
                    parameter_count=1_540_000_000, weights_bytes=900_000_000, tool_use=True,
                    thinking=True)


def png_base64() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), ("0", 0.0), (300, 300.0), (1.5, 1.5), ("300", 300.0),
     ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("-1", -1.0), (-5, -1.0),
     ("-1m", -1.0), ("2h45m10s", 9910.0),
     # Past a century: kept loaded (a date in the year 31,000 made /api/ps a 500).
     (1e12, -1.0), ("99999999999h", -1.0), (99999999999999999999, -1.0)],
)
def test_keep_alive_in_seconds_or_go_durations(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m5", True, [1], {"s": 1}, "nan"])
def test_keep_alive_that_is_no_duration_is_a_400(value: Any) -> None:
    with pytest.raises(GatewayError, match="keep_alive") as caught:
        parse_keep_alive(value)
    assert caught.value.failure.status == 400


def test_a_negative_ollama_seed_is_a_random_one_and_one_past_64_bits_a_400() -> None:
    assert sampling({"seed": -1, "temperature": 0.2}) == {"temperature": 0.2}
    with pytest.raises(GatewayError, match="options.seed: must be at most") as caught:
        check_chat({"model": "tiny", "messages": [], "options": {"seed": 2 ** 64}})
    assert caught.value.failure.status == 400


def test_options_map_to_sampling_fields() -> None:
    assert sampling({"temperature": 0.2, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
                     "seed": 7, "num_predict": 12, "stop": "END", "repeat_penalty": 1.1,
                     "repeat_last_n": 64, "presence_penalty": 0.5, "frequency_penalty": 0.1,
                     "num_ctx": 8192, "num_gpu": 99, "mirostat": 0}) == {
        "temperature": 0.2, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "seed": 7,
        "max_tokens": 12, "stop": ["END"], "repetition_penalty": 1.1,
        "repetition_context_size": 64, "presence_penalty": 0.5, "frequency_penalty": 0.1}
    # -1 (no limit) and -2 (fill the context) leave the limit to the profile.
    assert sampling({"num_predict": -1, "stop": ["a", "b"]}) == {"stop": ["a", "b"]}


def test_a_chat_with_images_tools_and_a_tool_result_becomes_openai() -> None:
    image = png_base64()
    tool = {"type": "function", "function": {"name": "get_weather", "description": "w",
                                             "parameters": {"type": "object"}}}
    body = {"model": "tiny", "tools": [tool], "options": {"temperature": 0},
            "think": "high", "messages": [
                {"role": "system", "content": "Short answers."},
                {"role": "user", "content": "Weather here?", "images": [image]},
                {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]}
    call = check_chat(body)
    assert (call.model, call.stream, call.keep_alive_s, call.load_only) == \
        ("tiny", True, None, False)
    request = chat_request(body, VISION)
    assert request == {
        "model": "eyes", "temperature": 0, "stream": True,
        "tools": [tool],
        "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"},
        "messages": [
            {"role": "system", "content": "Short answers."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"},
                 "mm_client_field": "messages[1].images[0]"},
                {"type": "text", "text": "Weather here?"}]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_2_0", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_2_0", "content": "sunny"}]}


def test_format_constrains_where_the_server_can_and_is_asked_for_elsewhere() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    ask = {"model": "m", "messages": [{"role": "user", "content": "n?"}]}
    assert constrains_json(VISION, metal=True)
    assert not constrains_json(VISION, metal=False) and not constrains_json(TEXT, metal=True)
    assert chat_request({**ask, "format": "json"}, VISION, constrain=True)[
        "response_format"] == {"type": "json_object"}
    assert chat_request({**ask, "format": schema}, VISION, constrain=True)[
        "response_format"] == {"type": "json_schema",
                               "json_schema": {"name": "format", "schema": schema}}
    on_lm = chat_request({**ask, "format": schema}, TEXT)
    assert "response_format" not in on_lm
    # The instruction keeps the profile's system prompt (a system message would replace it).
    assert on_lm["messages"][0] == {"role": "system", "content": (
        f"Be kind.\n\n{JSON_ONLY} It must match this JSON schema: {json.dumps(schema)}")}
    with_system = chat_request({**ask, "format": "json", "messages": [
        {"role": "system", "content": "S"}, *ask["messages"]]}, TEXT)
    assert with_system["messages"][0] == {"role": "system", "content": f"S\n\n{JSON_ONLY}"}


def test_generate_is_a_user_turn_or_a_raw_completion() -> None:
    body = {"model": "tiny", "prompt": "Why?", "system": "Be brief.", "stream": False,
            "keep_alive": "10m", "think": False, "options": {"num_predict": 5}}
    call = check_generate(body)
    assert (call.stream, call.keep_alive_s, call.load_only) == (False, 600.0, False)
    assert generate_request(body, TEXT) == ({
        "model": "tiny", "max_tokens": 5, "stream": True,
        "chat_template_kwargs": {"enable_thinking": False},
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Why?"}]}, False)
    assert generate_request({"model": "tiny", "prompt": "a b", "raw": True}, TEXT) == \
        ({"model": "tiny", "prompt": "a b", "stream": True}, True)
    with pytest.raises(GatewayError, match="mlx_vlm"):
        generate_request({"model": "eyes", "prompt": "x", "raw": True}, VISION)
    assert check_generate({"model": "tiny"}).load_only
    assert check_chat({"model": "tiny", "messages": [], "keep_alive": 0}).load_only


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "model"),
        ({"model": ""}, "model"),
        ({"model": 3}, "model"),
        ({"model": "m", "stream": "yes"}, "stream"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "images": "abc"}]},
         "messages[0].images"),
        ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"x": 1}]}]},
         "messages[0].tool_calls[0].function.name"),
        ({"model": "m", "options": []}, "options"),
        ({"model": "m", "options": {"temperature": "hot"}}, "options.temperature"),
        ({"model": "m", "options": {"top_p": 2}}, "options.top_p"),
        ({"model": "m", "options": {"num_predict": 1.5}}, "options.num_predict"),
        ({"model": "m", "options": {"stop": [1]}}, "options.stop"),
        ({"model": "m", "format": "xml"}, "format"),
        ({"model": "m", "think": "very"}, "think"),
        ({"model": "m", "tools": [{"type": "function"}]}, "tools[0].function.name"),
        ({"model": "m", "keep_alive": "forever"}, "keep_alive"),
    ],
)
def test_bad_chat_bodies_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        check_chat(body)
    assert caught.value.failure.status == 400
    assert caught.value.failure.message.startswith(field)


@pytest.mark.parametrize(
    ("body", "field"),
    [({"model": "m", "prompt": ["a"]}, "prompt"), ({"model": "m", "system": 1}, "system"),
     ({"model": "m", "prompt": "x", "suffix": "y"}, "suffix"),
     ({"model": "m", "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
     ({"model": "m", "prompt": "x", "raw": True, "images": ["aaaa"]}, "images"),
     ({"model": "m", "raw": "no"}, "raw")],
)
def test_bad_generate_bodies_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(GatewayError) as caught:
        check_generate(body)
    assert caught.value.failure.message.startswith(field)


def test_an_image_that_is_not_one_is_refused() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x",
                                        "images": [base64.b64encode(b"hello").decode()]}]}
    with pytest.raises(GatewayError, match="not an image"):
        chat_request(body, VISION)


class Ticks:
    """A nanosecond clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _stream(kind: str, stream: bool) -> tuple[list[dict[str, Any]], OllamaReply, Ticks]:
    ticks = Ticks()
    reply = OllamaReply(kind, "tiny", clock=ticks)
    ticks.now += 500  # loading
    reply.ready()
    lines: list[dict[str, Any]] = []
    ticks.now += 200  # prompt processing
    for chunk in (_delta({"role": "assistant", "reasoning": "Need "}),
                  _delta({"reasoning_content": "weather."}), _delta({"content": "Calling"}),
                  _delta({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                          "function": {"name": "get_weather",
                                                       "arguments": '{"city": '}}]}),
                  _delta({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                         "tool_calls"),
                  {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}):
        lines += reply.feed(chunk, stream=stream)
        ticks.now += 100
    return lines, reply, ticks


def test_a_streamed_chat_reads_back_through_the_official_client() -> None:
    lines, reply, _ = _stream(CHAT, True)
    lines += reply.finish()
    parsed = [ChatResponse(**json.loads(json.dumps(line))) for line in lines]
    assert "".join(p.message.thinking or "" for p in parsed) == "Need weather."
    assert "".join(p.message.content or "" for p in parsed) == "Calling"
    calls = [c for p in parsed for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == \
        [("get_weather", {"city": "Paris"})]
    last = parsed[-1]
    assert [p.done for p in parsed].count(True) == 1 and last.done
    assert last.done_reason == "stop"
    assert (last.prompt_eval_count, last.eval_count) == (12, 7)
    # ns: 500 loading, 200 to the first token, then 6 chunks 100 apart.
    assert (last.load_duration, last.prompt_eval_duration) == (500, 200)
    assert last.eval_duration == 600 and last.total_duration == 1300


def test_a_whole_generate_answer_reads_back_through_the_official_client() -> None:
    lines, reply, _ = _stream(GENERATE, False)
    assert lines == []
    answer = GenerateResponse(**json.loads(json.dumps(reply.whole())))
    assert (answer.response, answer.thinking, answer.done) == ("Calling", "Need weather.", True)
    assert answer.eval_count == 7 and answer.total_duration == 1300
    loaded = OllamaReply(CHAT, "tiny").loaded("unload")
    assert ChatResponse(**loaded).done_reason == "unload"


def test_model_entries_read_back_through_the_official_client() -> None:
    listed = ListResponse(models=[tags_entry(TEXT, CAPS), tags_entry(VISION, None)])
    first = listed.models[0]
    assert first.model == "tiny" and first.size == 900_000_000 and len(first.digest) == 64
    assert first.modified_at is not None and first.modified_at.year == 2026
    assert (first.details.family, first.details.parameter_size,
            first.details.quantization_level, first.details.format) == \
        ("qwen3", "1.5B", "Q4", "mlx")
    running = ProcessResponse(models=[ps_entry(TEXT, CAPS, 1_000, "2026-12-01T12:00:00Z",
                                               4096, unified_memory=True)])
    assert running.models[0].size_vram == 1_000 and running.models[0].context_length == 4096
    shown = ShowResponse(**show_payload(TEXT, CAPS, 4096))
    assert shown.capabilities == ["completion", "tools", "thinking"]
    assert shown.modelinfo["qwen3.context_length"] == 4096
    assert "temperature" in shown.parameters and "num_predict" in shown.parameters


def test_a_whole_openai_answer_becomes_one_ollama_answer() -> None:
    ticks = Ticks()
    reply = OllamaReply(CHAT, "tiny", clock=ticks)
    ticks.now += 100
    reply.ready()
    ticks.now += 1_000
    answer = ChatResponse(**reply.answered({
        "choices": [{"finish_reason": "length", "message": {
            "role": "assistant", "content": "It is", "reasoning": "Hmm."}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2}}, ttft_ns=400))
    assert (answer.message.content, answer.message.thinking) == ("It is", "Hmm.")
    assert answer.done_reason == "length" and answer.prompt_eval_count == 5
    assert (answer.load_duration, answer.prompt_eval_duration, answer.eval_duration) == \
        (100, 400, 600)


def test_a_streams_timestamps_read_as_timestamp_writes_them() -> None:
    import random

    from manager.api.ollama_wire import Timestamps, timestamp

    stamps = Timestamps()
    rng = random.Random(7)
    moments = [1764705600.0, 1764705600.9999996, 1764705600.9999994, 1764705601.0000005,
               1764705599.5, 0.25, *(rng.uniform(1.7e9, 1.8e9) for _ in range(2000))]
    for when in sorted(moments) + moments:  # in order (one prefix per second) and not
        assert stamps(when) == timestamp(when)

"""The gateway's wire formats, table by table: paths, keys, errors, names, streams, metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from manager.api.anthropic import StreamTranslator, sse
from manager.api.prometheus import escape_label, render
from manager.api.stream_formats import AnthropicFormat, OpenAIPassthrough
from manager.api.wire import (
    SYSTEM_FINGERPRINT,
    ApiFormat,
    Failure,
    GatewayError,
    ModelRenamer,
    api_format,
    api_key_from,
    error_body,
    failure_for,
    fingerprint_swap,
    is_gateway_path,
    model_list,
    parse_body,
    resolve_profile,
    stream_error,
    with_thinking_switch,
)
from manager.errors import ManagerError, NotFound, ValidationError
from manager.json_text import encode, loads
from manager.servers.inference import (
    InferenceError,
    MetricsStore,
    RequestStats,
)
from manager.servers.placement import InsufficientMemory, PlacementStats, StartFailed
from manager.servers.profiles import Backend, Profile
from manager.servers.server_stream import Batch, split_events
from manager.servers.supervisor import ServerLoading, ServerNotReady, ServerSnapshot, ServerState

MODEL_PATH = "/models/tiny qwen"


def profile(pid: int, name: str, model: str = "mlx-community/tiny") -> Profile:
    return Profile(id=pid, name=name, model=model, backend=Backend.MLX_LM, host="127.0.0.1",
                   port=8080 + pid, created_at="2025-01-02T03:04:05+00:00")


@pytest.mark.parametrize(("path", "gateway", "fmt"), [
    ("/v1/models", True, ApiFormat.OPENAI),
    ("/v1/chat/completions", True, ApiFormat.OPENAI),
    ("/v1/messages", True, ApiFormat.ANTHROPIC),
    ("/v1/messages/count_tokens", True, ApiFormat.ANTHROPIC),
    ("/v1/messagesx", True, ApiFormat.OPENAI),
    ("/v1", True, ApiFormat.OPENAI),
    ("/metrics", True, ApiFormat.OPENAI),
    ("/v10/models", False, ApiFormat.OPENAI),
    ("/metrics/x", False, ApiFormat.OPENAI),
    ("/", False, ApiFormat.OPENAI),
    ("/gradio_api/info", False, ApiFormat.OPENAI),
    ("/api/chat", True, ApiFormat.OLLAMA),
    ("/api", True, ApiFormat.OLLAMA),
    ("/api/blobs/sha256:00", True, ApiFormat.OLLAMA),
    ("/apis", False, ApiFormat.OPENAI),
])
def test_gateway_paths_and_their_format(path: str, gateway: bool, fmt: ApiFormat) -> None:
    assert is_gateway_path(path) is gateway
    assert api_format(path) is fmt


@pytest.mark.parametrize(("headers", "key"), [
    ({"authorization": "Bearer mlxm-abc"}, "mlxm-abc"),
    ({"authorization": "bearer   mlxm-abc  "}, "mlxm-abc"),
    ({"x-api-key": "mlxm-xyz"}, "mlxm-xyz"),
    ({"authorization": "Bearer mlxm-a", "x-api-key": "mlxm-b"}, "mlxm-a"),
    ({"authorization": "Basic dTpw"}, None),
    ({"authorization": "Bearer "}, None),
    ({}, None),
])
def test_api_key_from_headers(headers: dict[str, str], key: str | None) -> None:
    assert api_key_from(headers) == key


@pytest.mark.parametrize(("exc", "status", "code", "retry"), [
    (GatewayError(400, "bad", "invalid_json"), 400, "invalid_json", False),
    (NotFound("no such"), 404, "model_not_found", False),
    (ValidationError("messages: required"), 400, "invalid_request", False),
    (InsufficientMemory("too big"), 503, "insufficient_memory", False),
    (StartFailed("port busy"), 503, "server_start_failed", False),
    (ServerLoading("still loading"), 503, "model_loading", True),
    (ServerNotReady("failed: boom"), 503, "model_not_ready", False),
    (InferenceError("context too long", 400), 400, "invalid_request", False),
    (InferenceError("stopped answering"), 502, "backend_error", True),
    (InferenceError("server error", 500), 502, "backend_error", True),
    (ManagerError("shutting down"), 503, "unavailable", False),
    (RuntimeError("bug"), 500, "internal_error", False),
])
def test_failures_map_to_statuses(exc: Exception, status: int, code: str, retry: bool) -> None:
    failure = failure_for(exc)
    assert (failure.status, failure.code) == (status, code)
    assert failure.headers()["x-should-retry"] == ("true" if retry else "false")
    if isinstance(exc, ManagerError):
        assert failure.message == exc.message
    else:
        assert "bug" not in failure.message  # internals stay in the log


def test_loading_says_when_to_retry() -> None:
    headers = failure_for(ServerLoading("x")).headers()
    assert headers == {"x-should-retry": "true", "retry-after": "5"}


def test_error_bodies_in_each_format() -> None:
    failure = Failure(404, "No profile named 'x'.", "model_not_found")
    assert error_body(ApiFormat.OPENAI, failure) == {"error": {
        "message": "No profile named 'x'.", "type": "invalid_request_error", "param": None,
        "code": "model_not_found"}}
    assert error_body(ApiFormat.ANTHROPIC, failure) == {"type": "error", "error": {
        "type": "not_found_error", "message": "No profile named 'x'."}}
    busy = Failure(503, "loading", "model_loading")
    assert error_body(ApiFormat.OPENAI, busy)["error"]["type"] == "server_error"
    assert error_body(ApiFormat.ANTHROPIC, busy)["error"]["type"] == "overloaded_error"
    assert stream_error(ApiFormat.OPENAI, busy).startswith(b'data: {"error":')
    assert stream_error(ApiFormat.ANTHROPIC, busy).startswith(b"event: error\ndata: ")
    assert error_body(ApiFormat.OLLAMA, failure) == {"error": "No profile named 'x'."}
    assert stream_error(ApiFormat.OLLAMA, busy) == b'{"error":"loading"}\n'


@pytest.mark.parametrize(("raw", "message"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_parse_body_refuses_what_is_not_a_json_object(raw: bytes, message: str) -> None:
    with pytest.raises(GatewayError, match=message) as caught:
        parse_body(raw)
    assert caught.value.failure.status == 400


def test_resolve_by_name_or_by_the_model_one_profile_serves() -> None:
    profiles = [profile(1, "Fast", "mlx-community/a"), profile(2, "Slow", "mlx-community/b"),
                profile(3, "Slow copy", "mlx-community/b"), profile(4, "Local", "/m/c")]
    assert resolve_profile(profiles, "fast").id == 1
    assert resolve_profile(profiles, " slow  copy ").id == 3
    assert resolve_profile(profiles, "mlx-community/a").id == 1
    assert resolve_profile(profiles, "/m/c").id == 4
    with pytest.raises(NotFound, match="2 profiles serve 'mlx-community/b'.*'Slow', 'Slow copy'"):
        resolve_profile(profiles, "mlx-community/b")
    with pytest.raises(NotFound, match="GET /v1/models lists them"):
        resolve_profile(profiles, "gpt-4o")


def test_model_list_in_both_formats() -> None:
    profiles = [profile(1, "a"), profile(2, "b")]
    snap = ServerSnapshot(profile=profiles[0], state=ServerState.READY, state_since=0.0,
                          model_path=MODEL_PATH)
    openai = model_list(ApiFormat.OPENAI, profiles, {1: snap})
    assert openai["object"] == "list"
    assert [(m["id"], m["state"]) for m in openai["data"]] == [("a", "ready"), ("b", "stopped")]
    assert openai["data"][0]["created"] == 1735787045
    anthropic = model_list(ApiFormat.ANTHROPIC, profiles, {})
    assert anthropic["first_id"] == "a" and anthropic["last_id"] == "b"
    assert anthropic["data"][1] == {"type": "model", "id": "b", "display_name": "b",
                                    "created_at": "2025-01-02T03:04:05+00:00"}


def test_thinking_switch() -> None:
    assert with_thinking_switch({}, {"thinking": {"type": "enabled", "budget_tokens": 9}}) == {
        "chat_template_kwargs": {"enable_thinking": True}}
    assert with_thinking_switch({"chat_template_kwargs": {"x": 1}},
                                {"thinking": {"type": "disabled"}}) == {
        "chat_template_kwargs": {"x": 1, "enable_thinking": False}}
    assert with_thinking_switch({}, {}) == {}


def mlx_event(delta: dict, finish: str | None = None, usage: dict | None = None, *,
              compact: bool = False) -> bytes:
    """A chunk as mlx_lm writes it (json.dumps with its default separators), or as
    mlx_vlm does (pydantic: compact, "usage": null in every chunk)."""
    payload: dict = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL_PATH,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                     if usage is None else []}
    if usage is not None or compact:
        payload["usage"] = usage
    text = json.dumps(payload, separators=(",", ":") if compact else None,
                      ensure_ascii=not compact)
    return b"data: " + text.encode() + b"\n\n"


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def server_bytes(compact: bool = False) -> bytes:
    return (b": keepalive 1/2\n\n"
            + mlx_event({"role": "assistant", "reasoning": "hmm"}, compact=compact)
            + mlx_event({"content": "Hi"}, compact=compact)
            + mlx_event({}, finish="stop", compact=compact)
            + mlx_event({}, usage=USAGE, compact=compact) + b"data: [DONE]\n\n")


def batches(raw: bytes, cut: int) -> Iterator[Batch]:
    """The server's bytes as `ServerStream.batches` cuts them: whole events per read."""
    pending = b""
    for start in range(0, len(raw), cut):
        pending += raw[start:start + cut]
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        events, usage_event, done = split_events(pending[:end + 2])
        pending = pending[end + 2:]
        if events or usage_event:
            yield Batch(events, json.loads(usage_event) if usage_event else None, usage_event)
        if done:
            return


def relayed(fmt: OpenAIPassthrough | AnthropicFormat, raw: bytes, cut: int) -> bytes:
    return fmt.start() + b"".join(fmt.batch(b) for b in batches(raw, cut)) + fmt.finish()


def decoded(stream: bytes) -> list[dict]:
    assert stream.endswith(b"data: [DONE]\n\n")
    events = stream.split(b"\n\n")[:-2]
    assert all(e.startswith(b"data: {") for e in events)
    return [json.loads(e[6:]) for e in events]


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("cut", [1, 7, 4096])
def test_openai_stream_passes_chunks_through_and_hides_usage_unless_asked(
        compact: bool, cut: int) -> None:
    raw = server_bytes(compact)
    hidden = decoded(relayed(OpenAIPassthrough("tïny", include_usage=False,
                                               served=MODEL_PATH), raw, cut))
    assert len(hidden) == 3 and all(not c.get("usage") for c in hidden)
    assert {c["model"] for c in hidden} == {"tïny"}
    assert hidden[0]["choices"][0]["delta"]["reasoning"] == "hmm"
    shown = decoded(relayed(OpenAIPassthrough("tïny", include_usage=True, served=MODEL_PATH),
                            raw, cut))
    assert shown[-1]["usage"] == USAGE and shown[-1]["model"] == "tïny"
    assert shown[:-1] == hidden


def test_passthrough_renames_a_model_field_written_another_way() -> None:
    fmt = OpenAIPassthrough('say "hi"', include_usage=False, served=MODEL_PATH)
    odd = b'data: {"model" : "' + MODEL_PATH.encode() + b'", "x": 1}\n\n'
    assert decoded(fmt.batch(Batch(odd)) + fmt.finish()) == [{"model": 'say "hi"', "x": 1}]
    # Text that only looks like the field inside a string is left as it is.
    inner = mlx_event({"content": '"model": "' + MODEL_PATH + '"'})
    assert json.loads(fmt.batch(Batch(inner))[6:])["choices"][0]["delta"]["content"] == \
        '"model": "' + MODEL_PATH + '"'


def test_fingerprints_written_alike_or_not_all_become_ours_in_every_batch() -> None:
    swap = fingerprint_swap()
    ours = json.dumps(SYSTEM_FINGERPRINT)

    def fingerprints(data: bytes) -> list[str]:
        return [json.loads(e[6:])["system_fingerprint"] for e in data.split(b"\n\n") if e]

    def event(fingerprint: str, compact: bool = False) -> bytes:
        text = json.dumps({"system_fingerprint": fingerprint, "x": '"system_fingerprint": "'},
                          separators=(",", ":") if compact else None)
        return b"data: " + text.encode() + b"\n\n"

    same = event("0.29-linux") * 3
    for _ in range(2):  # the first batch teaches the server's text, the second uses it
        swapped, left = swap.swap(same)
        assert left == 0 and fingerprints(swapped) == [SYSTEM_FINGERPRINT] * 3
        assert swapped.count(ours.encode()) == 3
    mixed = event("0.29-linux") + event("other", compact=True) + event('a "quoted" one')
    swapped, left = swap.swap(mixed)
    assert left == 0 and fingerprints(swapped) == [SYSTEM_FINGERPRINT] * 3
    assert swap.swap(b'data: {"x": 1}\n\n') == (b'data: {"x": 1}\n\n', 0)


def test_passthrough_renames_every_batch_after_one_written_another_way() -> None:
    fmt = OpenAIPassthrough("tiny", include_usage=False, served=MODEL_PATH)
    plain, compact = mlx_event({"content": "a"}), mlx_event({"content": "b"}, compact=True)
    for raw in (plain * 2, compact + plain, plain, compact):
        assert {c["model"] for c in decoded(fmt.batch(Batch(raw)) + fmt.finish())} == {"tiny"}


def test_split_events_keeps_data_and_sets_aside_usage_comments_and_done() -> None:
    data = mlx_event({"content": "[DONE] \"usage\": {"})
    assert split_events(data) == (data, b"", False)
    usage = mlx_event({}, usage=USAGE)
    assert split_events(b": ping\r\n\r\n" + data + usage + b"data: [DONE]\n\n") == (
        data, usage[6:-2], True)


def test_renamer_handles_compact_json_and_unknown_text() -> None:
    renamer = ModelRenamer(MODEL_PATH, 'say "hi"')
    assert json.loads(renamer.text(json.dumps({"model": MODEL_PATH}, separators=(",", ":"))))[
        "model"] == 'say "hi"'
    assert json.loads(renamer.text('{"model": "something else", "x": 1}')) == {
        "model": 'say "hi"', "x": 1}
    assert renamer.text('{"x": 1}') == '{"x": 1}'


@pytest.mark.parametrize("cut", [5, 4096])
def test_anthropic_stream_is_the_documented_event_sequence(cut: int) -> None:
    # Imported here: collecting this module in every pytest-xdist worker need not load it.
    from anthropic.lib.streaming._messages import accumulate_event

    pieces = relayed(AnthropicFormat("tiny"), server_bytes(), cut).decode()
    events = []
    message, buffers = None, {}
    for block in pieces.strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {data['type']}"
        events.append(data["type"])
        message = accumulate_event(event=data, current_snapshot=message, json_bufs=buffers)
    assert events == ["message_start", "content_block_start", "content_block_delta",
                      "content_block_delta", "content_block_stop", "content_block_start",
                      "content_block_delta", "content_block_stop", "message_delta",
                      "message_stop"]
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "Hi" and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 3)


def test_prometheus_text() -> None:
    profiles = [profile(1, 'odd "name"\\x'), profile(2, "idle")]
    metrics = MetricsStore()
    metrics.record(RequestStats(profile_id=1, finished_at=1.0, duration_s=1.0, ttft_s=0.2,
                                tokens_per_s=50.0, prompt_tokens=10, completion_tokens=11))
    metrics.record(RequestStats(profile_id=1, finished_at=2.0, duration_s=1.0, ttft_s=None,
                                tokens_per_s=None, prompt_tokens=None, completion_tokens=None,
                                ok=False))
    snap = ServerSnapshot(profile=profiles[0], state=ServerState.READY, state_since=0.0,
                          model_path=MODEL_PATH)
    text = render(profiles, {1: snap}, metrics.all(), {2: PlacementStats(starts=3, evictions=1)})
    label = 'profile="odd \\"name\\"\\\\x"'
    assert escape_label('odd "name"\\x') == 'odd \\"name\\"\\\\x'
    lines = set(text.splitlines())
    for expected in (
        f"mlx_manager_server_up{{{label}}} 1", 'mlx_manager_server_up{profile="idle"} 0',
        f"mlx_manager_requests_total{{{label}}} 2",
        f"mlx_manager_failed_requests_total{{{label}}} 1",
        f"mlx_manager_prompt_tokens_total{{{label}}} 10",
        f"mlx_manager_completion_tokens_total{{{label}}} 11",
        f"mlx_manager_decode_tokens_total{{{label}}} 10",
        f"mlx_manager_decode_seconds_total{{{label}}} 0.2",
        f"mlx_manager_last_tokens_per_second{{{label}}} 50.0",
        f'mlx_manager_time_to_first_token_seconds_bucket{{{label},le="0.1"}} 0',
        f'mlx_manager_time_to_first_token_seconds_bucket{{{label},le="0.25"}} 1',
        f'mlx_manager_time_to_first_token_seconds_bucket{{{label},le="+Inf"}} 1',
        f"mlx_manager_time_to_first_token_seconds_count{{{label}}} 1",
        'mlx_manager_gateway_starts_total{profile="idle"} 3',
        'mlx_manager_gateway_evictions_total{profile="idle"} 1',
        "# TYPE mlx_manager_time_to_first_token_seconds histogram",
    ):
        assert expected in lines, expected
    # No request yet: no "last" figures at all (unknown is not 0).
    assert not any(line.startswith("mlx_manager_last_tokens_per_second{profile=\"idle\"")
                   for line in lines)
    assert 'mlx_manager_requests_total{profile="idle"} 0' in lines


class _Blocks:
    """What sse_data reads from: httpx.Response.iter_bytes()."""

    def __init__(self, *blocks: bytes) -> None:
        self.blocks = blocks

    def iter_bytes(self) -> Iterator[bytes]:
        yield from self.blocks


def test_sse_data_reassembles_lines_across_reads_and_skips_comments() -> None:
    from manager.servers.inference import sse_data

    stream = _Blocks(b": keepalive 1/9\n\n", b'data: {"a":', b' 1}\r\n\r\ndata: {"b": 2}\n',
                     b"\ndata: [DONE]")
    assert list(sse_data(stream, min_interval_s=0)) == ['{"a": 1}', '{"b": 2}', "[DONE]"]
    # Paced reading hands on everything that was read, in order.
    assert list(sse_data(stream, min_interval_s=0.001)) == ['{"a": 1}', '{"b": 2}', "[DONE]"]


def test_anthropic_text_and_thinking_deltas_written_from_templates_are_the_same_bytes() -> None:
    """AnthropicFormat writes most deltas from byte templates (StreamTranslator.next_delta):
    the bytes must be those the event builder writes, for every kind of chunk."""
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning": "hm"}}]},
              {"choices": [{"index": 0, "delta": {"reasoning": "m \"q\" é\n"}}]},
              {"choices": [{"index": 0, "delta": {"content": "Hi", "tool_calls": []}}]},
              {"choices": [{"index": 0, "delta": {"content": " there ✓", "reasoning": None}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1",
               "function": {"name": "f", "arguments": "{}"}}]}}]},
              {"choices": [{"index": 0, "delta": {"content": "after"}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
              {"choices": [], "usage": USAGE}]
    fast = AnthropicFormat("tiny")
    slow = StreamTranslator("tiny", message_id=fast.translator.message_id)
    templated = 0
    for chunk in chunks:
        templated += fast.translator._started and fast.translator.next_delta(chunk) is not None
        expected = b"".join(sse(name, data) for name, data in slow.feed(chunk))
        assert fast.feed(chunk) == expected
    assert templated == 2  # the second thinking chunk and the second text chunk
    assert fast.finish() == b"".join(sse(name, data) for name, data in slow.finish())


@pytest.mark.parametrize("raw", [
    b'{"model": "tiny", "max_tokens": 200, "temperature": 0.5, "stream": true}',
    b'{"seed": 123456789012345678901234567890}',  # exact, not a float
    b'{"a": NaN, "b": -Infinity}',  # json reads them (check_values refuses them after)
    b'\xef\xbb\xbf{"a": 1}',  # a BOM
    b'{"a": "\\ud800"}',  # a lone surrogate (check_values refuses it after)
    b'{"a": 1, "a": 2}',
    '{"text": "caf\u00e9 \u2603"}'.encode(),
])
def test_bodies_are_read_as_json_reads_them(raw: bytes) -> None:
    read = loads(raw)
    expected = json.loads(raw)
    assert json.dumps(read) == json.dumps(expected)  # NaN == NaN here, types compared too
    assert [type(v) for v in read.values()] == [type(v) for v in expected.values()]


@pytest.mark.parametrize("payload", [
    {"model": "/m/tiny", "messages": [{"role": "user", "content": "caf\u00e9"}],
     "max_tokens": 3, "stream": True, "top_p": 0.25},
    {"seed": 2 ** 70},  # past orjson's 64 bits
    {"logit_bias": {1: 2.0}},  # a key that is not a string
])
def test_requests_to_servers_are_the_json_of_their_payload(payload: dict) -> None:
    assert json.loads(encode(payload)) == json.loads(json.dumps(payload))

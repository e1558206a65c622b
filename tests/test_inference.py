"""The inference client against a real mlx_lm server on the scripted thinking model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.servers.inference import (
    ChatChunk,
    InferenceClient,
    MetricsStore,
    decode_rate,
    parse_chunk,
    prepare_body,
    with_system_prompt,
)
from manager.servers.metering import RateBasis, RequestStats, StreamMeter, Usage
from manager.servers.profiles import Backend, Profile
from manager.servers.supervisor import ServerLoading, ServerNotReady, ServerSnapshot, ServerState
from tests.server_helpers import ServerEnv, hf_home_env, server_env

PIRATE = "You are a pirate. Answer every question like a pirate would, with many arrs."


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    root = tmp_path_factory.mktemp("inference")
    with hf_home_env(root / "hf_home"):
        created = server_env(root / "data")
        yield created
        created.close()


@pytest.fixture(scope="module")
def thinking(env: ServerEnv, tiny_models: dict[str, Path]) -> Profile:
    profile = env.profile("thinker", tiny_models["thinking"], system_prompt=PIRATE,
                          max_tokens=64)
    env.supervisor.start(profile.id)
    env.supervisor.wait_ready(profile.id, 90)
    return profile


@pytest.fixture
def client(env: ServerEnv) -> Iterator[InferenceClient]:
    created = InferenceClient(env.supervisor, MetricsStore(), wait_ready_s=60)
    yield created
    created.close()


def ask(text: str, system: str | None = None) -> dict:
    messages = [{"role": "user", "content": text}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}


@pytest.mark.slow
def test_streaming_parses_reasoning_content_and_usage(client: InferenceClient,
                                                      thinking: Profile) -> None:
    chunks = list(client.stream_chat(thinking.id, ask("What is 2+2?")))
    reasoning = "".join(c.reasoning for c in chunks)
    content = "".join(c.content for c in chunks)
    assert reasoning.strip() == "Let me think."
    assert content.strip() == "The answer is 4."
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert usage.completion_tokens >= 4 and usage.prompt_tokens > 0
    metrics = client.metrics.get(thinking.id)
    assert metrics.requests == 1 and metrics.failed_requests == 0
    assert metrics.completion_tokens == usage.completion_tokens
    assert metrics.prompt_tokens == usage.prompt_tokens
    assert metrics.last_ttft_s is not None and metrics.last_ttft_s > 0
    assert metrics.last_tokens_per_s is not None and metrics.last_tokens_per_s > 0


@pytest.mark.slow
def test_the_profile_system_prompt_applies_only_without_one(client: InferenceClient,
                                                            thinking: Profile) -> None:
    def prompt_tokens(body: dict) -> int:
        return client.chat(thinking.id, body).usage.prompt_tokens

    defaulted = prompt_tokens(ask("Hi"))
    explicit_same = prompt_tokens(ask("Hi", system=PIRATE))
    own_short = prompt_tokens(ask("Hi", system="Be brief."))
    assert defaulted == explicit_same
    assert own_short < defaulted


@pytest.mark.slow
def test_non_streaming_chat_measures_tokens(client: InferenceClient, thinking: Profile) -> None:
    result = client.chat(thinking.id, ask("What is 2+2?"))
    assert result.content.strip() == "The answer is 4."
    assert result.reasoning.strip() == "Let me think."
    assert result.stats.ttft_s is None and result.stats.tokens_per_s > 0
    assert client.metrics.get(thinking.id).completion_tokens == result.usage.completion_tokens


@pytest.mark.slow
def test_requests_wait_for_a_loading_server_or_say_so(env: ServerEnv, client: InferenceClient,
                                                      tiny_models: dict[str, Path]) -> None:
    profile = env.profile("late", tiny_models["text"])
    with pytest.raises(ServerNotReady, match="not running"):
        client.chat(profile.id, ask("Hi"))
    env.supervisor.start(profile.id)
    with pytest.raises(ServerLoading, match="still loading"):
        client.chat(profile.id, ask("Hi"), wait_s=0)
    # A bounded wait: the request goes through once the model answered its probe.
    chunks = list(client.stream_chat(profile.id, ask("Hi", system="x") | {"max_tokens": 3}))
    assert any(c.usage for c in chunks)
    assert env.supervisor.snapshot(profile.id).state is ServerState.READY
    env.supervisor.stop(profile.id)


def _snap(**profile_fields: object) -> ServerSnapshot:
    profile = Profile(id=1, name="p", model="m", backend=Backend.MLX_LM, host="127.0.0.1",
                      port=8080, **profile_fields)  # type: ignore[arg-type]
    return ServerSnapshot(profile=profile, state=ServerState.READY, state_since=0.0,
                          model_path="/models/m")


def test_with_system_prompt() -> None:
    user = [{"role": "user", "content": "hi"}]
    assert with_system_prompt(user, "Be kind")[0] == {"role": "system", "content": "Be kind"}
    assert with_system_prompt(user, "  ") == user
    own = [{"role": "developer", "content": "mine"}, *user]
    assert with_system_prompt(own, "Be kind") == own


def test_prepare_body_fills_defaults_but_keeps_what_the_request_says() -> None:
    snap = _snap(max_tokens=100, temperature=0.3, top_p=0.8, system_prompt="Sys")
    body = prepare_body(snap, {"messages": [{"role": "user", "content": "x"}],
                               "temperature": 1.0, "model": "other"}, stream=True)
    assert body["model"] == "/models/m" and body["max_tokens"] == 100
    assert body["temperature"] == 1.0 and body["top_p"] == 0.8
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "Sys"}
    plain = prepare_body(_snap(), {"messages": [], "max_completion_tokens": 5}, stream=False)
    assert "max_tokens" not in plain and "stream_options" not in plain


def test_parse_chunk_reads_both_reasoning_fields_and_usage() -> None:
    vlm = parse_chunk({"choices": [{"delta": {"content": None, "reasoning_content": "hmm"}}]})
    assert vlm == ChatChunk(reasoning="hmm", raw=vlm.raw)
    last = parse_chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7}})
    assert last.usage.completion_tokens == 7 and not last.has_output
    call = parse_chunk({"choices": [{"delta": {"tool_calls": [{"id": "1"}]},
                                     "finish_reason": "tool_calls"}]})
    assert call.tool_calls == ({"id": "1"},) and call.finish_reason == "tool_calls"


def test_decode_rate_is_none_when_it_cannot_be_measured() -> None:
    assert decode_rate(11, 1.0, 2.0) == 10.0
    assert decode_rate(1, 1.0, 2.0) is None
    assert decode_rate(None, 1.0, 2.0) is None
    assert decode_rate(5, 2.0, 2.0) is None


def _metered(chunks: list[tuple[bool, Usage | None, dict]]) -> RequestStats:
    meter = StreamMeter(1)
    for has_output, usage, payload in chunks:
        meter.saw(has_output, usage, payload)
    return meter.stats(True)


def test_a_rate_is_measured_else_the_servers_else_counted_chunks_saying_which() -> None:
    """Issue 15: a vision answer read "n/a tokens/s" when no chunk carried text."""
    done = Usage(prompt_tokens=30, completion_tokens=4)
    measured = _metered([(True, None, {}), (True, None, {}), (False, done, {})])
    assert measured.rate_basis is RateBasis.MEASURED and measured.tokens_per_s > 0
    assert measured.ttft_s is not None
    # mlx_vlm sends no chunk for tokens that decode to nothing, but reports its own rate.
    vlm = _metered([(False, done, {"timings": {"predicted_per_second": 31.5}})])
    assert (vlm.tokens_per_s, vlm.rate_basis) == (31.5, RateBasis.SERVER)
    assert vlm.completion_tokens == 4 and vlm.ttft_s is None
    # No token count from the server: text chunks are counted, and said to be chunks.
    counted = _metered([(True, None, {}), (True, None, {}), (True, None, {})])
    assert counted.rate_basis is RateBasis.CHUNKS and counted.tokens_per_s > 0
    assert counted.completion_tokens is None
    assert _metered([(False, done, {"timings": {"predicted_per_second": 0}})]
                    ).tokens_per_s is None

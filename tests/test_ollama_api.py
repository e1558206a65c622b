"""The official ollama client, unchanged, against a live dashboard and real mlx_lm /
mlx_vlm servers on the tiny scripted models: chat (streamed and not), generate, a tool
call round trip, an image to the vision profile, ps, keep_alive; bad input on
/api/chat and /api/generate in Ollama's error shape.

One dashboard for the module; every profile starts stopped and is started on demand by
the first request that names it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import ollama
import pytest

from manager.net import free_port
from manager.servers.profiles import Profile, ProfileSpec
from manager.servers.supervisor import ServerState
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, run_uvicorn
from tests.server_helpers import OffsetClock, hf_home_env
from tests.waits import wait_for

pytestmark = pytest.mark.slow

HI = [{"role": "user", "content": "Hi"}]


def get_weather(city: str) -> str:
    """The weather in a city.

    Args:
      city: The city's name

    Returns:
      str: The weather there
    """
    return f"sunny in {city}"


@dataclass
class Live:
    url: str
    services: Services
    clock: OffsetClock
    key: str
    profiles: dict[str, Profile]

    def client(self, key: str | None = None) -> ollama.Client:
        return ollama.Client(host=self.url, timeout=120,
                             headers={"Authorization": f"Bearer {key or self.key}"})

    def state(self, name: str) -> ServerState:
        snap = self.services.supervisor.snapshot(self.profiles[name].id)
        return snap.state if snap is not None else ServerState.STOPPED


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
         ) -> Iterator[Live]:
    from app import create_app

    root = tmp_path_factory.mktemp("ollama_api")
    with hf_home_env(root / "hf_home"):
        services = Services.create(Settings(data_dir=root / "data", port=free_port(),
                                                    warm_spare=False))
        clock = OffsetClock()
        services.supervisor.clock = clock  # keep_alive durations: time moves by hand
        admin = services.auth.register("alice@example.com", PASSWORD)
        specs = {"thinker": ("thinking", {"max_tokens": 64}), "tools": ("tools", {}),
                 "eyes": ("vision", {"max_tokens": 8}), "text": ("text", {"max_tokens": 16}),
                 "long": ("text", {})}
        profiles = {name: services.profiles.create(admin, ProfileSpec(
            name=name, model=str(tiny_models[model]), port=free_port(), **extra))
            for name, (model, extra) in specs.items()}
        server, thread = run_uvicorn(create_app(services), services.settings.port)
        try:
            yield Live(f"http://127.0.0.1:{services.settings.port}", services, clock,
                       services.api_keys.create(admin, "tests").secret, profiles)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            services.close()


def test_chat_streamed_and_not_with_thinking_and_durations(live: Live) -> None:
    client = live.client()
    answer = client.chat("thinker", messages=HI)
    assert answer.model == "thinker" and answer.done and answer.done_reason == "stop"
    assert answer.message.role == "assistant"
    assert answer.message.content.strip() == "The answer is 4."
    assert answer.message.thinking.strip() == "Let me think."
    assert answer.prompt_eval_count > 0 and answer.eval_count >= 4
    assert answer.total_duration >= answer.load_duration > 0  # the server started for it
    assert answer.eval_duration >= 0 and answer.prompt_eval_duration >= 0
    parts = list(client.chat("thinker", messages=HI, stream=True,
                             options={"temperature": 0, "seed": 1}))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert "".join(p.message.content or "" for p in parts).strip() == "The answer is 4."
    assert "".join(p.message.thinking or "" for p in parts).strip() == "Let me think."
    last = parts[-1]
    assert (last.prompt_eval_count, last.eval_count) == \
        (answer.prompt_eval_count, answer.eval_count)
    assert last.total_duration >= last.prompt_eval_duration + last.eval_duration
    # think=False reaches the template (its empty thinking block changes the prompt).
    plain = client.chat("thinker", messages=HI, think=False)
    assert plain.prompt_eval_count != answer.prompt_eval_count


def test_generate_streamed_and_not_and_options(live: Live) -> None:
    client = live.client()
    answer = client.generate("text", "The quick brown", options={"num_predict": 3})
    assert answer.done and answer.eval_count <= 3 and isinstance(answer.response, str)
    assert answer.done_reason in ("length", "stop")
    parts = list(client.generate("text", "Hello", stream=True, system="Be brief.",
                                 options={"num_predict": 4, "temperature": 0.2}))
    assert parts[-1].done and parts[-1].eval_count <= 4
    raw = client.generate("text", "Hello", raw=True, options={"num_predict": 2})
    assert raw.done and raw.eval_count <= 2


def test_a_tool_call_round_trip(live: Live) -> None:
    client = live.client()
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    answer = client.chat("tools", messages=ask, tools=[get_weather])
    calls = answer.message.tool_calls
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == \
        [("get_weather", {"city": "Paris"})]
    streamed = [c for p in client.chat("tools", messages=ask, tools=[get_weather],
                                       stream=True) for c in p.message.tool_calls or []]
    assert [c.function.name for c in streamed] == ["get_weather"]
    result = get_weather(**calls[0].function.arguments)
    final = client.chat("tools", tools=[get_weather], messages=[
        *ask, answer.message, {"role": "tool", "content": result, "tool_name": "get_weather"}])
    assert final.message.content.strip() == "It is sunny in Paris."


def test_an_image_reaches_the_vision_profile(live: Live) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    client = live.client()
    with_image = client.chat("eyes", messages=[
        {"role": "user", "content": "What colour is this?", "images": [buffer.getvalue()]}])
    without = client.chat("eyes", messages=[{"role": "user", "content": "What colour is this?"}])
    # The image's patches are part of the prompt the model saw.
    assert with_image.prompt_eval_count > without.prompt_eval_count
    generated = client.generate("eyes", "What colour?", images=[buffer.getvalue()])
    assert generated.done and generated.prompt_eval_count > 0


def test_ps_and_keep_alive_durations(live: Live) -> None:
    client = live.client()
    client.chat("text", messages=HI, keep_alive="2m", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert "text" in running and running["text"].size > 0
    assert running["text"].details.family == "qwen3"
    left = running["text"].expires_at - datetime.now(timezone.utc)
    assert 0 < left.total_seconds() <= 120 + 5
    assert live.services.supervisor.idle_limit(live.profiles["text"].id) == 120.0
    live.clock.advance(121)
    live.services.supervisor.reconcile()
    assert wait_for(lambda: live.state("text") is ServerState.STOPPED, 30)
    snap = live.services.supervisor.snapshot(live.profiles["text"].id)
    assert "idle for 2 min" in snap.reason


def test_a_keep_alive_past_a_century_keeps_the_model_loaded_and_ps_answers(live: Live
                                                                         ) -> None:
    """A keep_alive of 1e12 s (any key may send one) made /api/ps a 500 for everyone
    until the server stopped: its expiry was a year past 9999."""
    client = live.client()
    client.chat("text", messages=HI, keep_alive=1e12, options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert running["text"].expires_at.year >= 2100
    client.chat("text", messages=HI, keep_alive=0, options={"num_predict": 1})
    assert wait_for(lambda: live.state("text") is ServerState.STOPPED, 30)


def test_keep_alive_zero_unloads_after_the_answer_and_an_empty_request_loads(live: Live
                                                                           ) -> None:
    client = live.client()
    loaded = client.generate("text", keep_alive="5m")  # nothing to generate: just load
    assert loaded.done_reason == "load" and live.state("text") is ServerState.READY
    assert "text" in [m.model for m in client.ps().models]
    answer = client.chat("text", messages=HI, keep_alive=0, options={"num_predict": 1})
    assert answer.done
    assert wait_for(lambda: live.state("text") is ServerState.STOPPED, 30)
    assert "keep_alive 0" in live.services.supervisor.snapshot(live.profiles["text"].id).reason
    assert "text" not in [m.model for m in client.ps().models]
    # Unloading what is not loaded is fine; a stream with keep_alive 0 unloads too.
    assert client.chat("text", keep_alive=0).done_reason == "unload"
    parts = list(client.generate("text", "Hi", stream=True, keep_alive=0,
                                 options={"num_predict": 1}))
    assert parts[-1].done
    assert wait_for(lambda: live.state("text") is ServerState.STOPPED, 30)


def test_a_client_that_leaves_mid_stream_ends_the_server_request(live: Live) -> None:
    profile_id = live.profiles["long"].id
    live.client().generate("long", "warm up", options={"num_predict": 1})
    before = live.services.metrics.get(profile_id)
    with httpx.stream("POST", live.url + "/api/chat", timeout=60,
                      headers={"Authorization": f"Bearer {live.key}"},
                      json={"model": "long", "messages": HI,
                            "options": {"num_predict": 3000}}) as answer:
        for line in answer.iter_lines():
            if line:
                break  # the first token came: leave
    assert wait_for(lambda: live.services.supervisor.activity(profile_id).leases == 0, 30)
    after = live.services.metrics.get(profile_id)
    # Cut short, not a whole 3000-token answer: metered as a request that did not finish.
    assert after.requests == before.requests + 1
    assert after.failed_requests == before.failed_requests + 1


def test_bad_input_is_ollama_shaped_with_the_right_status(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="manager.api.key_auth")
    client = live.client()
    with pytest.raises(ollama.ResponseError, match="model 'nope' not found") as caught:
        client.chat("nope", messages=HI)
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError, match="model 'nope' not found"):
        list(client.generate("nope", "x", stream=True))
    headers = {"Authorization": f"Bearer {live.key}"}
    bad = [
        ("/api/chat", {"messages": HI}, 400, "model is required"),
        ("/api/chat", {"model": "thinker", "messages": "Hi"}, 400, "messages: must be a list"),
        ("/api/chat", {"model": "thinker", "messages": [{"role": "user", "content": 1}]},
         400, "messages[0].content"),
        ("/api/chat", {"model": "thinker", "messages": HI, "options": {"top_p": 5}}, 400,
         "options.top_p"),
        ("/api/chat", {"model": "thinker", "messages": HI, "keep_alive": "soon"}, 400,
         "keep_alive"),
        ("/api/chat", {"model": "thinker", "messages": HI, "stream": "no"}, 400, "stream"),
        ("/api/generate", {"model": "thinker", "prompt": 5}, 400, "prompt"),
        ("/api/generate", {"model": "thinker", "prompt": "x", "suffix": "y"}, 400, "suffix"),
        ("/api/generate", {"model": "eyes", "prompt": "x", "raw": True}, 400, "mlx_vlm"),
        ("/api/chat", {"model": "eyes", "messages": [
            {"role": "user", "content": "x", "images": ["aGVsbG8="]}]}, 400, "not an image"),
    ]
    with httpx.Client(base_url=live.url, headers=headers, timeout=60) as http:
        for path, body, status, words in bad:
            answer = http.post(path, json=body)
            assert answer.status_code == status, (body, answer.text)
            assert set(answer.json()) == {"error"} and words in answer.json()["error"], body
        answer = http.post("/api/chat", content=b"{oops")
        assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
        huge = b'{"model": "thinker", "prompt": "' + b"x" * (
            live.services.settings.gateway_max_body_bytes) + b'"}'
        answer = http.post("/api/generate", content=huge)
        assert answer.status_code == 413 and set(answer.json()) == {"error"}
    with httpx.Client(base_url=live.url, timeout=60) as anonymous:
        answer = anonymous.post("/api/chat", json={"model": "thinker", "messages": HI})
        assert answer.status_code == 401 and "API key" in answer.json()["error"]
    # Each refusal was logged once, with the key's name (never the key).
    lines = [r.getMessage() for r in caplog.records if r.name == "manager.api.key_auth"]
    assert len(lines) == 2 + len(bad) + 3
    assert lines[0] == (
        "gateway POST /api/chat refused with 404 (key 'tests' of alice@example.com, model "
        "'nope'): model 'nope' not found: GET /api/tags lists the models (profiles) this "
        "gateway serves")
    assert lines[-1].startswith("gateway POST /api/chat refused with 401 (no key, model not "
                                "named): Send an API key")
    assert not any(live.key in line for line in lines)


def test_format_reaches_the_model(live: Live) -> None:
    client = live.client()

    def prompt_tokens(fmt: object) -> int:
        answer = client.chat("text", messages=HI, format=fmt, options={"num_predict": 1})
        return answer.prompt_eval_count

    # mlx_lm cannot constrain its output: the model is asked for JSON in the prompt.
    plain, as_json = prompt_tokens(None), prompt_tokens("json")
    assert as_json > plain
    assert prompt_tokens({"type": "object", "properties": {"n": {"type": "integer"}}}) \
        > as_json

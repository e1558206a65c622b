"""The gateway with the official openai and anthropic SDKs against a live dashboard and
real mlx_lm / mlx_vlm servers on the tiny models.

One dashboard for the module; every profile starts stopped and is started on demand by
the first request that names it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import platform
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from manager.api.login import SESSION_COOKIE
from manager.api.wire import SYSTEM_FINGERPRINT
from manager.net import free_port
from manager.servers.placement import InsufficientMemory
from manager.servers.profiles import Profile, ProfileSpec
from manager.servers.supervisor import ACTIVE_STATES, ServerState
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, run_uvicorn
from tests.server_helpers import OffsetClock, all_gone, hf_home_env, make_broken_model
from tests.waits import wait_for

pytestmark = pytest.mark.slow

PIRATE = "You are a pirate. Answer every question like a pirate would, with many arrs."
WEATHER_TOOL_OPENAI = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
WEATHER_TOOL_ANTHROPIC = {"name": "get_weather", "description": "Weather in a city",
                          "input_schema": {"type": "object",
                                           "properties": {"city": {"type": "string"}}}}
HI = [{"role": "user", "content": "Hi"}]


@dataclass
class Gateway:
    url: str
    services: Services
    clock: OffsetClock
    admin_key: str
    bob_key: str
    profiles: dict[str, Profile]

    def openai(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.admin_key,
                             max_retries=0, timeout=120)

    def anthropic(self, key: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=key or self.admin_key,
                                   max_retries=0, timeout=120)

    def state(self, name: str) -> ServerState:
        snap = self.services.supervisor.snapshot(self.profiles[name].id)
        return snap.state if snap is not None else ServerState.STOPPED


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
       ) -> Iterator[Gateway]:
    from app import create_app

    root = tmp_path_factory.mktemp("gateway")
    with hf_home_env(root / "hf_home"):
        services = Services.create(Settings(data_dir=root / "data", port=free_port(),
                                                    warm_spare=False))
        clock = OffsetClock()
        services.supervisor.clock = clock  # the idle-timeout test moves time forward
        auth = services.auth
        admin = auth.register("alice@example.com", PASSWORD)
        bob = auth.approve(admin, auth.register("bob@example.com", PASSWORD).id)
        specs = {
            "thinker": ("thinking", {"system_prompt": PIRATE, "max_tokens": 64}),
            "tools": ("tools", {}),
            "text": ("text", {"max_tokens": 16}),
            "vision": ("vision", {"max_tokens": 8}),
            "jit": ("text_4bit", {"max_tokens": 8}),
            "napper": ("text", {"max_tokens": 8, "idle_timeout_minutes": 1}),
            "evict-a": ("text_4bit", {"max_tokens": 8}),
            "evict-b": ("text_4bit", {"max_tokens": 8}),
            "by-hand": ("text", {"max_tokens": 8}),
            "twin-1": ("tool_loop", {}),
            "twin-2": ("tool_loop", {}),
            "broken": ("broken", {}),
            "crasher": ("text", {}),
            "slowpoke": ("text_4bit", {}),
            "long": ("text", {}),
            "short-context": ("text", {"context_length": 8}),
            "never": ("text", {}),
            "deadend": ("text", {"max_tokens": 8}),
        }
        models = {**tiny_models,
                  "broken": make_broken_model(root / "broken", tiny_models["text"])}
        profiles = {
            name: services.profiles.create(admin, ProfileSpec(
                name=name, model=str(models[model]), port=free_port(), **extra))
            for name, (model, extra) in specs.items()
        }
        server, thread = run_uvicorn(create_app(services), services.settings.port)
        try:
            yield Gateway(f"http://127.0.0.1:{services.settings.port}", services, clock,
                          services.api_keys.create(admin, "tests").secret,
                          services.api_keys.create(bob, "bob").secret, profiles)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            services.close()


def png_data_url() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- listing, auth, errors ------------------------------------------------------------


def test_models_are_listed_by_profile_name_in_both_formats(gw: Gateway) -> None:
    names = sorted(gw.profiles, key=str.casefold)
    assert [m.id for m in gw.openai().models.list()] == names
    assert [m.id for m in gw.anthropic().models.list()] == names
    assert gw.openai().models.retrieve("thinker").id == "thinker"
    # The model a profile serves is an alias when exactly one profile serves it ...
    vision_path = gw.profiles["vision"].model
    assert gw.openai().models.retrieve(vision_path).id == "vision"
    # ... and refused, naming the candidates, when several do.
    with pytest.raises(openai.NotFoundError, match="twin-1"):
        gw.openai().models.retrieve(gw.profiles["twin-1"].model)


def test_no_key_bad_key_and_revoked_key_are_refused_in_each_format(gw: Gateway) -> None:
    body = {"model": "thinker", "max_tokens": 5, "messages": HI}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        for path, method in (("/v1/models", "GET"), ("/v1/chat/completions", "POST"),
                             ("/v1/completions", "POST"), ("/metrics", "GET")):
            answer = client.request(method, path, json=body)
            assert answer.status_code == 401, path
            assert answer.json()["error"]["code"] == "missing_api_key"
            assert "API keys tab" in answer.json()["error"]["message"]
        answer = client.post("/v1/messages", json=body)
        assert answer.status_code == 401
        assert answer.json()["type"] == "error"
        assert answer.json()["error"]["type"] == "authentication_error"
        # A session cookie does not open the API: only a key does.
        cookie = httpx.post(gw.url + "/login", data={"email": "alice@example.com",
                                                     "password": PASSWORD}).cookies
        assert SESSION_COOKIE in cookie
        answer = client.get("/v1/models", cookies=cookie, headers={"Accept": "text/html"})
        assert answer.status_code == 401
    with pytest.raises(openai.AuthenticationError, match="not valid"):
        gw.openai("mlxm-not-a-real-key").models.list()
    with pytest.raises(anthropic.AuthenticationError, match="not valid"):
        gw.anthropic("mlxm-not-a-real-key").messages.create(model="thinker", max_tokens=5,
                                                            messages=HI)
    # Revocation works from the very next request.
    bob = gw.services.auth.get_by_email("bob@example.com")
    new = gw.services.api_keys.create(bob, "short-lived")
    assert gw.openai(new.secret).models.list().data
    gw.services.api_keys.revoke(bob, new.key.id)
    with pytest.raises(openai.AuthenticationError):
        gw.openai(new.secret).models.list()


def test_unknown_model_bad_json_and_unknown_endpoint(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError, match="No profile or model named 'gpt-4o'") as e:
        gw.openai().chat.completions.create(model="gpt-4o", messages=HI)
    assert e.value.code == "model_not_found"
    with pytest.raises(anthropic.NotFoundError, match="claude-x"):
        gw.anthropic().messages.create(model="claude-x", max_tokens=5, messages=HI)
    headers = {"Authorization": f"Bearer {gw.admin_key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=gw.url, timeout=30, headers=headers) as client:
        answer = client.post("/v1/chat/completions", content=b"{oops")
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"
        answer = client.post("/v1/messages", content=b"[1]")
        assert answer.status_code == 400
        assert answer.json()["error"]["type"] == "invalid_request_error"
        answer = client.post("/v1/messages", json={"model": "vision", "messages": HI})
        assert answer.status_code == 400 and "max_tokens" in answer.json()["error"]["message"]
        answer = client.post("/v1/chat/completions", json={"model": "vision", "stream": True})
        assert answer.status_code == 400 and "messages" in answer.json()["error"]["message"]
        answer = client.post("/v1/embeddings", json={"model": "thinker", "input": "x"})
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "unknown_endpoint"
        # A newline in the path (%0a): no route's pattern took it, and the answer was
        # Starlette's plain-text "Not Found" instead of the API's own error.
        answer = client.get("/v1/models%0aextra")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "unknown_endpoint"
        answer = client.get("/api/tags%0aextra")
        assert answer.status_code == 404 and "/api/chat" in answer.json()["error"]
        answer = client.post("/v1/completions", json={"model": "vision", "prompt": "x"})
        assert answer.status_code == 400 and "/v1/chat/completions" in answer.text
    # Requests refused before they reach a model do not start its server.
    assert gw.state("vision") is ServerState.STOPPED


# --- OpenAI ----------------------------------------------------------------------------


def test_openai_chat_streaming_and_not_with_usage_only_when_asked(gw: Gateway) -> None:
    client = gw.openai()
    reply = client.chat.completions.create(model="thinker", messages=HI)
    assert reply.model == "thinker"
    assert reply.choices[0].message.content.strip() == "The answer is 4."
    assert reply.choices[0].message.reasoning.strip() == "Let me think."
    assert reply.usage.completion_tokens >= 4 and reply.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="thinker", messages=HI, stream=True))
    assert {c.model for c in chunks} == {"thinker"}
    assert all(c.usage is None for c in chunks), "usage only for clients that ask"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    thought = "".join(getattr(c.choices[0].delta, "reasoning", None) or ""
                      for c in chunks if c.choices)
    assert (text.strip(), thought.strip()) == ("The answer is 4.", "Let me think.")
    asked = list(client.chat.completions.create(
        model="thinker", messages=HI, stream=True, stream_options={"include_usage": True}))
    assert asked[-1].choices == [] and asked[-1].usage.total_tokens > 0
    assert asked[-1].usage.prompt_tokens == reply.usage.prompt_tokens
    # The profile's system prompt applies only when the request has none.
    own = client.chat.completions.create(
        model="thinker", messages=[{"role": "system", "content": "Be brief."}, *HI])
    assert own.usage.prompt_tokens < reply.usage.prompt_tokens


def test_answers_say_nothing_about_the_machine_in_system_fingerprint(gw: Gateway) -> None:
    """Issue 15 item 10: mlx_lm writes platform.platform() (kernel, glibc) there."""
    machine = [platform.platform(), platform.release(), *platform.libc_ver()[1:]]
    client = gw.openai()
    whole = client.chat.completions.with_raw_response.create(model="thinker", messages=HI)
    chunks = list(client.chat.completions.create(
        model="thinker", messages=HI, stream=True, stream_options={"include_usage": True}))
    assert whole.parse().system_fingerprint == SYSTEM_FINGERPRINT
    assert {c.system_fingerprint for c in chunks} == {SYSTEM_FINGERPRINT}
    said = whole.text + "".join(c.model_dump_json() for c in chunks)
    assert not [part for part in machine if part and part in said]


def test_openai_legacy_completions(gw: Gateway) -> None:
    client = gw.openai()
    done = client.completions.create(model="text", prompt="The quick brown", max_tokens=5)
    assert done.model == "text" and done.usage.completion_tokens >= 1
    assert isinstance(done.choices[0].text, str)
    chunks = list(client.completions.create(model="text", prompt="Hello", max_tokens=5,
                                            stream=True))
    assert chunks and {c.model for c in chunks} == {"text"}
    assert all(c.usage is None for c in chunks)
    # What clients that always send a list send (a list of one prompt).
    listed = client.completions.create(model="text", prompt=["The quick brown"],
                                       max_tokens=5)
    assert listed.choices[0].text == done.choices[0].text


def test_a_request_the_model_server_refuses_is_a_400_not_retried(gw: Gateway) -> None:
    """mlx_lm answers 404 for whatever its handling of a request raised (here a tool
    call's arguments that are not JSON): the gateway called it its own failure, a 502
    with x-should-retry that the SDKs sent three times."""
    body = {"model": "text", "max_tokens": 4, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}
    with httpx.Client(base_url=gw.url, timeout=120,
                      headers={"Authorization": f"Bearer {gw.admin_key}"}) as client:
        answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"].startswith("text refused the request: ")
    assert answer.headers["x-should-retry"] == "false"
    assert gw.state("text") is ServerState.READY  # the server is fine


def test_a_negative_seed_is_a_random_one(gw: Gateway) -> None:
    """MLX takes an unsigned seed: -1 (what clients send for "random") was a 502 whole,
    and a stream that said the server had crashed."""
    client = gw.openai()
    assert client.chat.completions.create(model="text", messages=HI, seed=-1).choices
    assert list(client.chat.completions.create(model="text", messages=HI, seed=-1,
                                               stream=True))
    assert gw.state("text") is ServerState.READY


def test_a_server_that_will_never_answer_again_is_ended_and_started_anew(gw: Gateway
                                                                          ) -> None:
    """mlx_lm's generation thread dies on an empty prompt (the gateway now refuses one;
    sent here straight to the server): its process lives on, READY, and refused every
    request with "generation thread died" until someone stopped it by hand."""
    profile_id = gw.profiles["deadend"].id
    supervisor = gw.services.supervisor
    client = gw.openai()
    for streamed in (True, False):  # the relay's way to the server, then the whole answer's
        assert client.chat.completions.create(model="deadend", messages=HI).choices
        snap = supervisor.snapshot(profile_id)
        with httpx.Client(base_url=snap.base_url, timeout=60) as direct:
            try:
                said = direct.post("/v1/completions", json={"prompt": "", "max_tokens": 2})
                assert said.status_code >= 400, said.text
            except httpx.RemoteProtocolError as exc:  # or it hangs up
                logging.info("the server hung up: %s", exc)
            # mlx_lm's own health check says so too.
            assert wait_for(lambda: direct.get("/health").status_code == 503, 30)
        with pytest.raises(openai.APIError, match="generation thread died"):
            answer = client.chat.completions.create(model="deadend", messages=HI,
                                                    stream=streamed)
            list(answer) if streamed else None
        failed = supervisor.wait_for(profile_id, lambda s: s is not None
                                     and s.state is ServerState.FAILED, 60)
        assert failed is not None and failed.state is ServerState.FAILED
        assert "stopped generating" in failed.reason
        assert all_gone([snap.pid])
        # The next request starts it again, as it would after a crash.
        assert client.chat.completions.create(model="deadend", messages=HI).choices
        assert supervisor.snapshot(profile_id).pid != snap.pid


def test_openai_tool_call_and_its_answer(gw: Gateway) -> None:
    client = gw.openai()
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client.chat.completions.create(model="tools", messages=ask,
                                           tools=[WEATHER_TOOL_OPENAI])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    follow = [*ask, choice.message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
    final = client.chat.completions.create(model="tools", messages=follow,
                                           tools=[WEATHER_TOOL_OPENAI])
    assert final.choices[0].message.content.strip() == "It is sunny in Paris."
    streamed = list(client.chat.completions.create(model="tools", messages=ask,
                                                   tools=[WEATHER_TOOL_OPENAI], stream=True))
    calls = [t for c in streamed if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [t.function.name for t in calls] == ["get_weather"]


def test_an_image_reaches_the_vision_model(gw: Gateway) -> None:
    image = png_data_url()
    reply = gw.openai().chat.completions.create(model="vision", max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                     {"type": "text", "text": "What colour is this?"}]}])
    plain = gw.openai().chat.completions.create(model="vision", max_tokens=4, messages=[
        {"role": "user", "content": "What colour is this?"}])
    # The image's patches are part of the prompt the model saw.
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens
    message = gw.anthropic().messages.create(model="vision", max_tokens=4, messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": image.split(",", 1)[1]}},
            {"type": "text", "text": "What colour is this?"}]}])
    assert message.usage.input_tokens == reply.usage.prompt_tokens
    assert message.stop_reason in ("end_turn", "max_tokens")



def test_a_vision_stream_is_relayed_from_mlx_vlm(gw: Gateway) -> None:
    """mlx_vlm streams chunked (uvicorn) with compact JSON and `"usage":null` in every
    chunk: relayed with the profile's name, the usage chunk only when asked."""
    ask = [{"role": "user", "content": "What colour is red?"}]
    client = gw.openai()
    plain = list(client.chat.completions.create(model="vision", max_tokens=4, messages=ask,
                                                stream=True))
    assert plain and {c.model for c in plain} == {"vision"}
    assert all(c.usage is None for c in plain)
    assert any(c.choices and c.choices[0].finish_reason for c in plain)
    asked = list(client.chat.completions.create(
        model="vision", max_tokens=4, messages=ask, stream=True,
        stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens >= 1
    with gw.anthropic().messages.stream(model="vision", max_tokens=4,
                                        messages=ask) as stream:
        final = stream.get_final_message()
    assert final.model == "vision" and final.usage.output_tokens >= 1


# --- Anthropic -------------------------------------------------------------------------


def test_anthropic_thinking_blocks_streaming_and_not_and_token_count(gw: Gateway) -> None:
    client = gw.anthropic()
    message = client.messages.create(model="thinker", max_tokens=64, messages=HI)
    assert message.model == "thinker" and message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking.strip() == "Let me think."
    assert message.content[1].text.strip() == "The answer is 4."
    events = []
    with client.messages.stream(model="thinker", max_tokens=64, messages=HI) as stream:
        for event in stream:
            if event.type in ("message_start", "content_block_start", "content_block_delta",
                              "content_block_stop", "message_delta", "message_stop"):
                events.append(event.type)
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-2:] == ["message_delta", "message_stop"]
    assert events.count("content_block_start") == events.count("content_block_stop") == 2
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.usage.output_tokens == message.usage.output_tokens
    counted = client.messages.count_tokens(model="thinker", messages=HI)
    assert counted.input_tokens == message.usage.input_tokens


def test_anthropic_tool_use_round_trip(gw: Gateway) -> None:
    client = gw.anthropic()
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    message = client.messages.create(model="tools", max_tokens=64, messages=ask,
                                     tools=[WEATHER_TOOL_ANTHROPIC])
    assert message.stop_reason == "tool_use"
    use = next(b for b in message.content if b.type == "tool_use")
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})
    follow = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                      for b in message.content]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                            "content": "sunny, 24 C"}]}]
    with client.messages.stream(model="tools", max_tokens=64, messages=follow,
                                tools=[WEATHER_TOOL_ANTHROPIC]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert final.content[-1].text.strip() == "It is sunny in Paris."


# --- on demand -------------------------------------------------------------------------


def test_two_requests_for_a_stopped_profile_share_one_start_with_keepalives(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="manager.servers.supervisor")
    assert gw.state("jit") is ServerState.STOPPED
    barrier = threading.Barrier(2)

    def streamed() -> list[str]:
        barrier.wait()
        lines = []
        with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {gw.bob_key}"},
                          json={"model": "jit", "messages": HI, "stream": True}) as answer:
            assert answer.status_code == 200
            lines = [line for line in answer.iter_lines() if line]
        return lines

    def plain() -> int:
        barrier.wait()
        return gw.openai(gw.bob_key).chat.completions.create(
            model="jit", messages=HI).usage.completion_tokens

    with ThreadPoolExecutor(2) as pool:
        lines_job, plain_job = pool.submit(streamed), pool.submit(plain)
        lines, tokens = lines_job.result(), plain_job.result()
    assert tokens >= 1
    # While the model loaded, the stream carried SSE comments; then data and [DONE].
    assert lines[0].startswith(": jit is "), lines[0]
    assert lines[-1] == "data: [DONE]"
    assert any(line.startswith("data: {") for line in lines)
    starts = [r for r in caplog.records if "server jit: stopped -> starting" in r.getMessage()]
    assert len(starts) == 1
    assert gw.services.placement.stats()[gw.profiles["jit"].id].starts == 1
    assert "gateway (bob@example.com)" in starts[0].getMessage()


def test_idle_servers_stop_after_the_profile_timeout_and_start_again(gw: Gateway) -> None:
    client = gw.openai()
    client.chat.completions.create(model="napper", messages=HI)
    assert gw.state("napper") is ServerState.READY
    gw.services.supervisor.reconcile()
    assert gw.state("napper") is ServerState.READY  # not idle yet
    gw.clock.advance(61)
    gw.services.supervisor.reconcile()
    assert wait_for(lambda: gw.state("napper") is ServerState.STOPPED, 30)
    snap = gw.services.supervisor.snapshot(gw.profiles["napper"].id)
    assert "idle for 1 min" in snap.reason
    assert client.chat.completions.create(model="napper", messages=HI).usage.completion_tokens
    assert gw.services.placement.stats()[gw.profiles["napper"].id].starts == 2


def test_eviction_of_the_least_recently_used_idle_server_and_503_when_it_cannot_fit(
        gw: Gateway) -> None:
    supervisor, placement = gw.services.supervisor, gw.services.placement
    for snap in supervisor.snapshots():  # only this test's servers from here on
        if snap.state in ACTIVE_STATES:
            supervisor.stop(snap.profile_id)
    names = ("evict-a", "evict-b", "jit", "by-hand")
    need = {name: placement.need_bytes(gw.profiles[name]) for name in names}
    assert all(n and n > 0 for n in need.values()), need
    client = gw.openai()

    def ask(name: str) -> object:
        return client.chat.completions.create(model=name, messages=HI)

    try:
        ask("evict-a")
        ask("evict-b")
        ask("evict-a")  # evict-b is now the least recently used
        placement.set_budget(need["evict-a"] + need["evict-b"] + need["jit"] - 1)
        # Asked before a start (the Chat tab's quick step): it would fit once evict-b
        # stops, so nothing is refused, and nothing is stopped by the asking.
        placement.check_startable(gw.profiles["jit"])
        assert gw.state("evict-b") is ServerState.READY
        ask("jit")
        assert gw.state("evict-b") is ServerState.STOPPED
        assert gw.state("evict-a") is ServerState.READY
        snap = supervisor.snapshot(gw.profiles["evict-b"].id)
        assert "to make room for jit" in snap.reason
        assert placement.stats()[gw.profiles["evict-b"].id].evictions == 1
        # A server someone started by hand is never stopped by the gateway. With it
        # running, evict-b fits only if by-hand stops: so nothing is stopped at all.
        supervisor.start(gw.profiles["by-hand"].id, by="alice@example.com")
        supervisor.wait_ready(gw.profiles["by-hand"].id, 90)
        placement.set_budget(need["by-hand"] + need["evict-b"] - 1)
        with pytest.raises(InsufficientMemory, match="by-hand .*started by hand"):
            placement.check_startable(gw.profiles["evict-b"])
        assert gw.state("evict-a") is ServerState.READY  # the asking stopped nothing
        with pytest.raises(openai.InternalServerError) as caught:
            ask("evict-b")
        assert caught.value.status_code == 503
        assert caught.value.response.headers["x-should-retry"] == "false"
        assert "by-hand" in caught.value.message and "started by hand" in caught.value.message
        assert gw.state("evict-a") is ServerState.READY
        assert gw.state("jit") is ServerState.READY
        assert gw.state("evict-b") is ServerState.STOPPED
        placement.set_budget(need["evict-b"] - 1)
        with pytest.raises(anthropic.InternalServerError, match="more than the whole budget"):
            gw.anthropic().messages.create(model="evict-b", max_tokens=5, messages=HI)
    finally:
        placement.set_budget(None)
        supervisor.stop(gw.profiles["by-hand"].id)


# --- failures -------------------------------------------------------------------------


def test_a_model_that_cannot_load_is_a_503_with_the_reason(gw: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gw.openai().chat.completions.create(model="broken", messages=HI)
    assert caught.value.status_code == 503
    assert caught.value.code == "model_not_ready"
    assert "broken failed" in caught.value.message and "did not load" in caught.value.message
    assert gw.state("broken") is ServerState.FAILED
    # Streaming: the next request starts it again; the status line went out with the first
    # keepalive while it loaded, so the failure arrives as the stream's error event.
    with pytest.raises(anthropic.APIStatusError, match="did not load"):
        with gw.anthropic().messages.stream(model="broken", max_tokens=5,
                                            messages=HI) as stream:
            stream.get_final_message()


def test_a_start_that_cannot_happen_is_a_503_saying_why(gw: Gateway) -> None:
    port = gw.profiles["twin-2"].port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(anthropic.InternalServerError) as caught:
            gw.anthropic().messages.create(model="twin-2", max_tokens=5, messages=HI)
    assert caught.value.status_code == 503
    assert f"Port {port} on 127.0.0.1 is already in use" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert gw.state("twin-2") is not ServerState.READY


def test_a_loading_model_is_waited_for_but_only_so_long(gw: Gateway) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from manager.api.gateway_routes import build_gateway_router
    from manager.api.key_auth import gateway_auth
    from manager.api.session_gate import SessionGate

    impatient = FastAPI()
    impatient.include_router(build_gateway_router(gw.services, wait_ready_s=0.2))
    impatient.add_middleware(SessionGate, auth=gw.services.auth,
                             extra_auth=gateway_auth(gw.services))
    with TestClient(impatient) as client:
        answer = client.post("/v1/chat/completions", json={"model": "slowpoke", "messages": HI},
                             headers={"Authorization": f"Bearer {gw.admin_key}"})
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "model_loading"
    assert "still loading" in answer.json()["error"]["message"]
    assert answer.headers["retry-after"] == "5" and answer.headers["x-should-retry"] == "true"
    # The start goes on; with the normal bound the same request waits and is answered.
    assert gw.openai().chat.completions.create(model="slowpoke", messages=HI).choices
    assert gw.services.placement.stats()[gw.profiles["slowpoke"].id].starts == 1


def test_a_server_that_dies_mid_answer_ends_the_stream_with_an_error(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="manager.api.key_auth")
    stream = iter(gw.openai().chat.completions.create(
        model="crasher", messages=HI, stream=True, max_tokens=3000))
    next(stream)  # the server is generating
    pid = gw.services.supervisor.snapshot(gw.profiles["crasher"].id).pid
    os.killpg(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError, match="crasher stopped answering"):
        for _ in stream:
            pass
    # The failure after the status line is logged once, like a refusal before it.
    lines = [r.getMessage() for r in caplog.records if r.name == "manager.api.key_auth"]
    assert len(lines) == 1 and lines[0].startswith(
        "gateway POST /v1/chat/completions refused with 502 (key 'tests' of "
        "alice@example.com, model 'crasher'): crasher stopped answering")
    # The crash is known as it happens (the server's exit wakes the supervisor), and the
    # next request starts the model again, as it would a stopped one.
    profile_id = gw.profiles["crasher"].id
    assert wait_for(lambda: gw.services.supervisor.snapshot(profile_id).state
                    is ServerState.FAILED, 30)
    answer = gw.anthropic().messages.create(model="crasher", max_tokens=5, messages=HI)
    assert answer.content and answer.usage.output_tokens > 0
    assert gw.services.supervisor.snapshot(profile_id).pid not in (None, pid)


def _server_log(gw: Gateway, name: str) -> str:
    snap = gw.services.supervisor.snapshot(gw.profiles[name].id)
    return Path(snap.log_path).read_text(errors="replace") if snap and snap.log_path else ""


def test_a_client_that_leaves_mid_stream_stops_the_generation(gw: Gateway) -> None:
    pid = gw.profiles["long"].id
    gw.openai().completions.create(model="long", prompt="warm up", max_tokens=2)
    before = gw.services.metrics.get(pid)
    assert "BrokenPipeError" not in _server_log(gw, "long")
    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {gw.admin_key}"},
                      json={"model": "long", "messages": HI, "stream": True,
                            "max_tokens": 3000}) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                break
    assert wait_for(lambda: gw.services.supervisor.activity(pid).leases == 0, 30)
    after = gw.services.metrics.get(pid)
    # Cut short (not a whole 3000-token answer): recorded as a request that did not finish.
    assert after.requests == before.requests + 1
    assert after.failed_requests == before.failed_requests + 1
    # The server itself stopped generating: its next write found the connection closed.
    assert wait_for(lambda: "BrokenPipeError" in _server_log(gw, "long")
                    or "ConnectionResetError" in _server_log(gw, "long"), 60)
    assert gw.openai().completions.create(model="long", prompt="still there?",
                                          max_tokens=2).usage.completion_tokens >= 1


def test_a_client_that_leaves_before_a_whole_answer_aborts_the_model_request(gw: Gateway
                                                                           ) -> None:
    pid = gw.profiles["long"].id
    gw.openai().completions.create(model="long", prompt="warm up", max_tokens=2)
    before = gw.services.metrics.get(pid)
    broken = _server_log(gw, "long").count("BrokenPipeError") \
        + _server_log(gw, "long").count("ConnectionResetError")
    working = _server_log(gw, "long").count("Prompt processing progress")
    body = json.dumps({"model": "long", "messages": HI, "max_tokens": 3000}).encode()
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                       b"Authorization: Bearer " + gw.admin_key.encode() + b"\r\n"
                       b"Content-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # Two leases: the gateway's for the request, the inference client's for the
        # request to the model server (taken before it looks for the server); then the
        # server works on it.
        assert wait_for(lambda: gw.services.supervisor.activity(pid).leases == 2, 60)
        assert wait_for(lambda: _server_log(gw, "long").count("Prompt processing progress")
                        > working, 60)
    # The gateway noticed the closed connection and ended its request to the server,
    # which stopped generating (it was asked for a stream: mlx_lm notices a closed
    # connection only when it writes, and a whole answer is written at the end).
    assert wait_for(lambda: gw.services.supervisor.activity(pid).leases == 0, 60)
    after = gw.services.metrics.get(pid)
    assert after.failed_requests == before.failed_requests + 1
    assert wait_for(lambda: _server_log(gw, "long").count("BrokenPipeError")
                    + _server_log(gw, "long").count("ConnectionResetError") > broken, 60)


def test_a_whole_answer_read_as_a_stream_is_the_answer_the_server_sends_whole(gw: Gateway
                                                                             ) -> None:
    from manager.servers.abort import Abort

    ask = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": "Weather in Paris?"}]
    for name, extra in (("thinker", {}), ("tools", {"tools": [WEATHER_TOOL_OPENAI]})):
        gw.openai().chat.completions.create(model=name, messages=HI, max_tokens=2)  # started
        pid = gw.profiles[name].id
        snap = gw.services.supervisor.snapshot(pid)
        whole = httpx.post(snap.base_url + "/v1/chat/completions", timeout=60, json={
            "model": snap.model_path, "messages": ask, "max_tokens": 64, **extra}).json()
        read = gw.services.inference.chat(pid, {"messages": ask, "max_tokens": 64, **extra},
                                          abort=Abort()).raw

        def same(answer: dict) -> tuple:
            message = dict(answer["choices"][0]["message"])
            calls = [{k: v for k, v in c.items() if k != "id"}
                     for c in message.pop("tool_calls", [])]
            usage = {k: answer["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
            return (message, calls, answer["choices"][0]["finish_reason"], usage,
                    answer["object"])

        assert same(read) == same(whole), name


# --- limits ----------------------------------------------------------------------------


def test_a_huge_max_tokens_is_capped_by_the_profile_and_the_context(gw: Gateway) -> None:
    headers = {"Authorization": f"Bearer {gw.admin_key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=gw.url, timeout=120, headers=headers) as client:
        # JSON's 1e12 (a float): before, it reached the server as asked.
        raw = b'{"model": "text", "messages": [{"role": "user", "content": "Hi"}], ' \
              b'"max_tokens": 1e12}'
        answer = client.post("/v1/chat/completions", content=raw)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] <= 16  # the profile's max_tokens
        newer = client.post("/v1/chat/completions", json={
            "model": "short-context", "messages": HI, "max_completion_tokens": 10 ** 12})
        assert newer.status_code == 200, newer.text
        assert newer.json()["usage"]["completion_tokens"] <= 8  # the profile's context
        assert newer.json()["choices"][0]["finish_reason"] == "length"
    message = gw.anthropic().messages.create(model="short-context", max_tokens=10 ** 12,
                                             messages=HI)
    assert message.usage.output_tokens <= 8 and message.stop_reason == "max_tokens"


def test_a_key_over_its_concurrency_limit_gets_429_with_retry_after(gw: Gateway) -> None:
    from dataclasses import replace

    from fastapi import FastAPI

    from manager.api.gateway_routes import build_gateway_router
    from manager.api.key_auth import gateway_auth
    from manager.api.session_gate import SessionGate

    services = replace(gw.services, settings=replace(gw.services.settings,
                                                     gateway_concurrent_per_key=1))
    app = FastAPI()
    app.include_router(build_gateway_router(services))
    app.add_middleware(SessionGate, auth=services.auth, extra_auth=gateway_auth(services))
    port = free_port()
    server, thread = run_uvicorn(app, port)
    url = f"http://127.0.0.1:{port}"
    short = {"model": "long", "messages": HI, "max_tokens": 2}

    def ask(key: str) -> httpx.Response:
        return httpx.post(url + "/v1/chat/completions", json=short, timeout=120,
                          headers={"Authorization": f"Bearer {key}"})

    try:
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {gw.admin_key}"},
                          json={**short, "stream": True, "max_tokens": 3000}) as first:
            lines = first.iter_lines()  # kept: a closed iterator would close the stream
            for line in lines:
                if line.startswith("data: {"):
                    break
            refused = ask(gw.admin_key)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
            assert refused.headers["retry-after"] == "1"
            assert ask(gw.bob_key).status_code == 200  # another key is not held up
        # The slot frees once the first request's model request has ended.
        assert wait_for(lambda: ask(gw.admin_key).status_code == 200, 60)
        # A stream frees it before its last piece: the next request right after is in.
        for _ in range(3):
            with httpx.stream("POST", url + "/v1/chat/completions", timeout=120,
                              headers={"Authorization": f"Bearer {gw.admin_key}"},
                              json={**short, "stream": True}) as done:
                assert done.read().endswith(b"data: [DONE]\n\n")
            assert ask(gw.admin_key).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_malformed_bodies_for_a_real_profile_are_400_not_500(gw: Gateway) -> None:
    headers = {"Authorization": f"Bearer {gw.admin_key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=gw.url, timeout=60, headers=headers) as client:
        for raw, field in (
                (b'{"model": "never", "messages": [1]}', "messages[0]"),
                (b'{"model": "never", "messages": [{"role": "user", "content": "Hi"}], '
                 b'"temperature": NaN}', "temperature"),
                (b'{"model": "never", "messages": [{"role": "user", "content": "\\ud800"}]}',
                 "messages[0].content")):
            answer = client.post("/v1/chat/completions", content=raw)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["param"] == field
    assert gw.state("never") is ServerState.STOPPED


def test_an_image_url_to_a_loopback_listener_is_refused_unfetched(gw: Gateway) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/cat.png"
        with pytest.raises(openai.BadRequestError, match="not fetched") as caught:
            gw.openai().chat.completions.create(model="vision", max_tokens=4, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is this?"}]}])
        assert caught.value.param == "messages[0].content[0].image_url"
        with pytest.raises(anthropic.BadRequestError, match="not fetched"):
            gw.anthropic().messages.create(model="vision", max_tokens=4, messages=[
                {"role": "user", "content": [{"type": "image",
                                              "source": {"type": "url", "url": url}}]}])
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected


# --- metering --------------------------------------------------------------------------


def test_metrics_for_admin_keys_and_the_server_tiles_show_gateway_traffic(gw: Gateway
                                                                          ) -> None:
    from components.views import server_tile_html

    list(gw.openai().chat.completions.create(model="thinker", messages=HI, stream=True))
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        refused = client.get("/metrics", headers={"Authorization": f"Bearer {gw.bob_key}"})
        assert refused.status_code == 403 and "administrator" in refused.text
        page = client.get("/metrics", headers={"x-api-key": gw.admin_key})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in page.text.splitlines() if line and not line.startswith("#")}
    pid = gw.profiles["thinker"].id
    metrics = gw.services.metrics.get(pid)
    label = '{profile="thinker"}'
    assert values[f"mlx_manager_requests_total{label}"] == metrics.requests >= 2
    assert values[f"mlx_manager_completion_tokens_total{label}"] == metrics.completion_tokens
    assert values[f"mlx_manager_time_to_first_token_seconds_count{label}"] >= 1
    assert values[f"mlx_manager_last_tokens_per_second{label}"] > 0
    assert values['mlx_manager_gateway_starts_total{profile="thinker"}'] >= 1
    snap = gw.services.supervisor.snapshot(pid)
    tile = server_tile_html(snap, None, metrics, "", time.time())
    assert f"<dd data-stat='Requests'>{metrics.requests:,}</dd>" in tile
    assert f"<dd data-stat='Tokens served'>{metrics.completion_tokens:,}</dd>" in tile


# --- what agent clients send (issue 13) ------------------------------------------------


def test_openai_developer_role_counts_as_a_system_message(gw: Gateway) -> None:
    client = gw.openai()

    def prompt_tokens(*first: dict[str, str]) -> int:
        reply = client.chat.completions.create(model="text", max_tokens=1,
                                               messages=[*first, *HI])
        return reply.usage.prompt_tokens

    developer = prompt_tokens({"role": "developer", "content": "Be brief."})
    assert developer > prompt_tokens()  # it reached the template, not dropped
    assert developer == prompt_tokens({"role": "system", "content": "Be brief."})


def test_anthropic_system_entries_documents_and_unknown_beta_flags(gw: Gateway) -> None:
    client = gw.anthropic()

    def input_tokens(messages: list[dict[str, object]], **extra: object) -> int:
        return client.messages.create(model="text", max_tokens=1, messages=messages,
                                      **extra).usage.input_tokens  # type: ignore[arg-type]

    # Agent clients put system entries inside messages: they join the system prompt.
    top = input_tokens(HI, system="Be brief.")
    assert input_tokens([{"role": "system", "content": "Be brief."}, *HI]) == top
    later = [*HI, {"role": "assistant", "content": "Hello"},
             {"role": "system", "content": "Now be kind."}, {"role": "user", "content": "Again"}]
    assert input_tokens(later, system="Be brief.") > input_tokens(later[:2] + later[3:],
                                                                  system="Be brief.")
    # A text document is read; a PDF is refused, saying what to send instead.
    ask = {"type": "text", "text": "Summarise."}
    document = {"type": "document", "title": "Notes", "source": {
        "type": "text", "media_type": "text/plain", "data": "Cats sleep a lot."}}
    assert input_tokens([{"role": "user", "content": [document, ask]}]) > \
        input_tokens([{"role": "user", "content": [ask]}])
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                          "data": "JVBERi0xLjQK"}}
    with pytest.raises(anthropic.BadRequestError, match="application/pdf documents are not "
                       "supported.*text source"):
        input_tokens([{"role": "user", "content": [pdf, ask]}])
    # Beta flags the gateway does not know are ignored (header, and ?beta=true).
    assert input_tokens(HI, extra_headers={"anthropic-beta": "made-up-2099-01-01,other"}) \
        == input_tokens(HI)
    beta = client.beta.messages.create(model="text", max_tokens=1, messages=HI,
                                       betas=["made-up-2099-01-01"])
    assert beta.usage.input_tokens == input_tokens(HI)


def test_streamed_message_start_carries_the_real_prompt_count(gw: Gateway) -> None:
    client = gw.anthropic()
    whole = client.messages.create(model="thinker", max_tokens=64, messages=HI)
    with client.messages.stream(model="thinker", max_tokens=64, messages=HI) as stream:
        first = next(iter(stream))
        assert first.type == "message_start"
        assert first.message.usage.input_tokens == whole.usage.input_tokens > 0
        final = stream.get_final_message()
    assert final.usage.input_tokens == whole.usage.input_tokens

"""Gateway limits without a model server: body cap, key rate and concurrency, request
shapes (400 naming the field, never 500, with a Hypothesis fuzz), max_tokens caps and
image rules. Requests go through the real app: FastAPI + the session gate + the gateway
routes, in process over httpx.ASGITransport or on a live uvicorn for the body cap.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from manager.api.images import MediaGate, address_refusal, image_type
from manager.api.limits import KeyLimiter, cap_max_tokens, check_token_ids, token_limit
from manager.api.wire import GatewayError
from manager.errors import ValidationError
from manager.models.capabilities import detect
from manager.net import free_port
from manager.servers.profiles import Backend, ProfileSpec
from manager.servers.supervisor import ServerState
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, TEST_HASHER, run_uvicorn

HI = [{"role": "user", "content": "Hi"}]


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


def tiny_config_dir(root: Path) -> Path:
    """A model folder with only a config.json: enough for a profile (never started)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 400,
        "max_position_embeddings": 4096}))
    return root


@dataclass
class Api:
    services: Services
    app: Any
    key: str
    other_key: str
    loop: asyncio.AbstractEventLoop

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                 base_url="http://gateway", timeout=30,
                                 headers={"Authorization": f"Bearer {key or self.key}"})

    def call(self, method: str, path: str) -> httpx.Response:
        async def go() -> httpx.Response:
            async with self.client() as client:
                return await client.request(method, path)

        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout=120)

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None,
             key: str | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            async with self.client(key) as client:
                if raw is not None:
                    return await client.post(path, content=raw,
                                             headers={"Content-Type": "application/json"})
                return await client.post(path, json=body)

        # On the loop's own thread: a Playwright session elsewhere in the run may hold a
        # running loop on this one, and a second loop cannot run here then.
        return asyncio.run_coroutine_threadsafe(go(), self.loop).result(timeout=120)


def build_app(services: Services) -> Any:
    from fastapi import FastAPI

    from manager.api.gateway_routes import build_gateway_router
    from manager.api.key_auth import gateway_auth
    from manager.api.session_gate import SessionGate

    app = FastAPI()
    app.include_router(build_gateway_router(services))
    app.add_middleware(SessionGate, auth=services.auth, extra_auth=gateway_auth(services))
    return app


def _loop_in_a_thread() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="gateway-limits-loop", daemon=True).start()
    return loop


@pytest.fixture(scope="module")
def make_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Api]]:
    """An app per distinct settings, made once for the module (registering a user costs
    a password hash). No servers run: every profile stays stopped."""
    made: dict[tuple[tuple[str, Any], ...], Api] = {}

    def make(**settings: Any) -> Api:
        wanted = tuple(sorted(settings.items()))
        if wanted in made:
            return made[wanted]
        root = tmp_path_factory.mktemp("gateway_limits")
        services = Services.create(Settings(data_dir=root / "data", port=free_port(), warm_spare=False,
                                            **settings), run_servers=False,
                                   hasher=TEST_HASHER)
        admin = services.auth.register("alice@example.com", PASSWORD)
        model = tiny_config_dir(root / "model")
        services.profiles.create(admin, ProfileSpec(
            name="parked", model=str(model), port=free_port(), max_tokens=64))
        services.profiles.create(admin, ProfileSpec(  # a vision server's profile
            name="eyes", model=str(model), port=free_port(), backend=Backend.MLX_VLM))
        made[wanted] = Api(services, build_app(services),
                           services.api_keys.create(admin, "t").secret,
                           services.api_keys.create(admin, "other").secret,
                           _loop_in_a_thread())
        return made[wanted]

    yield make
    for api in made.values():
        api.loop.call_soon_threadsafe(api.loop.stop)
        api.services.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    """The shared app: default limits, except no rate limit (tests share its key)."""
    return make_api(gateway_requests_per_minute=0)


@contextmanager
def traced() -> Iterator[list[int]]:
    """The peak of Python's traced allocations inside the block, in bytes."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
        peak.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def parked_state(api: Api) -> ServerState:
    profile = api.services.profiles.list()[0]
    snap = api.services.supervisor.snapshot(profile.id)
    return snap.state if snap is not None else ServerState.STOPPED


# --- body cap ----------------------------------------------------------------------------


def test_a_40_mb_body_gets_413_in_each_format_without_being_held(api: Api) -> None:
    port = free_port()
    server, thread = run_uvicorn(api.app, port)
    block = b" " * 65536
    size = 40 * 1024 * 1024

    head, tail = b'{"model": "parked", "messages": [], "pad": "', b'"}'

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(size // len(block)):
            yield block
        yield tail

    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            length = str(len(head) + size + len(tail))
            with traced() as declared_peak:
                declared = client.post("/v1/chat/completions", content=body(),
                                       headers={**headers, "Content-Length": length})
            with traced() as chunked_peak:
                chunked = client.post("/v1/messages", content=body(), headers=headers)
            small = client.post("/v1/chat/completions", headers=headers,
                                json={"model": "nope", "messages": HI})
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"
    assert "32 MB" in declared.json()["error"]["message"]
    assert chunked.status_code == 413
    assert chunked.json()["type"] == "error"
    assert chunked.json()["error"]["type"] == "request_too_large"
    # Python allocations in this process (the dashboard's included) while each body was
    # sent: a body too big by its Content-Length is never held at all, a chunked one at
    # most up to the cap (32 MB), never whole (reading it whole took twice its size).
    assert declared_peak[0] < 4 * 1024 * 1024, f"peak {declared_peak[0]:,} bytes"
    assert chunked_peak[0] < size, f"peak {chunked_peak[0]:,} bytes"
    assert small.status_code == 404  # bodies under the cap are read as before


def test_the_body_cap_is_a_setting(make_api: Callable[..., Api]) -> None:
    api = make_api(gateway_max_body_bytes=1000)
    answer = api.post("/v1/chat/completions", {"model": "parked", "messages": HI,
                                               "pad": "x" * 2000})
    assert answer.status_code == 413 and "1,000 bytes" in answer.json()["error"]["message"]
    assert api.post("/v1/chat/completions", {"model": "nope", "messages": HI}
                    ).status_code == 404


# --- per-key rate and concurrency ----------------------------------------------------


def test_the_rate_limit_answers_429_with_retry_after_per_key(make_api: Callable[..., Api]
                                                             ) -> None:
    api = make_api(gateway_requests_per_minute=3)
    body = {"model": "nope", "messages": HI, "max_tokens": 5}
    assert [api.post("/v1/chat/completions", body).status_code for _ in range(3)] == [404] * 3
    refused = api.post("/v1/chat/completions", body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    anthropic = api.post("/v1/messages", body)
    assert anthropic.status_code == 429
    assert anthropic.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in anthropic.headers
    # Another key has its own budget.
    assert api.post("/v1/chat/completions", body, key=api.other_key).status_code == 404


def test_key_limiter_counts_in_flight_requests_and_a_sliding_minute() -> None:
    now = [1000.0]
    limiter = KeyLimiter(2, 3, clock=lambda: now[0])
    assert limiter.admit(1) is None and limiter.admit(1) is None
    busy = limiter.admit(1)
    assert busy is not None and busy.status == 429 and busy.retry_after_s == 1
    assert busy.code == "too_many_concurrent_requests"
    assert limiter.admit(2) is None  # other keys are not affected
    limiter.release(1)
    assert limiter.in_flight(1) == 1
    assert limiter.admit(1) is None  # the third request this minute
    limiter.release(1)
    limiter.release(1)
    now[0] += 20
    rated = limiter.admit(1)
    assert rated is not None and rated.code == "rate_limited" and rated.retry_after_s == 40
    now[0] += 40
    assert limiter.admit(1) is None
    assert KeyLimiter(0, 0).admit(1) is None  # 0 turns a limit off


# --- malformed bodies ----------------------------------------------------------------


@pytest.mark.parametrize(("path", "raw", "field"), [
    ("/v1/chat/completions", b'{"model": "parked", "messages": [1]}', "messages[0]"),
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], '
     b'"temperature": NaN}', "temperature"),
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi \\ud800"}]}',
     "messages[0].content"),
    ("/v1/messages", b'{"model": "parked", "max_tokens": 5, "messages": [1]}', "messages[0]"),
    ("/v1/messages",
     b'{"model": "parked", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],'
     b' "top_p": Infinity}', "top_p"),
    ("/v1/messages",
     b'{"model": "parked", "max_tokens": 5, "messages": [{"role": "user", "content": '
     b'[{"type": "image", "source": "/etc/passwd"}]}]}', "messages[0].content[0].source"),
    ("/v1/messages",
     b'{"model": "parked", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],'
     b' "tools": 5}', "tools"),
    ("/v1/messages",
     b'{"model": "parked", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],'
     b' "stop_sequences": 5}', "stop_sequences"),
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], '
     b'"max_tokens": "lots"}', "max_tokens"),
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], '
     b'"adapter_path": "/home"}', "adapter_path"),
    ("/v1/completions", b'{"model": "parked", "prompt": 5}', "prompt"),
    # Choices the servers cannot honour were dropped without a word.
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], '
     b'"tool_choice": "bogus"}', "tool_choice"),
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], "tools": '
     b'[{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": '
     b'"function", "function": {"name": "missing"}}}', "tool_choice.function.name"),
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], "n": 2}', "n"),
    ("/v1/messages",
     b'{"model": "parked", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],'
     b' "tools": [{"name": "f"}], "tool_choice": {"type": "tool", "name": "missing"}}',
     "tool_choice.name"),
    ("/v1/messages",
     b'{"model": "parked", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],'
     b' "tool_choice": {"type": "bogus"}}', "tool_choice.type"),
    ("/v1/messages",
     b'{"model": "parked", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],'
     b' "thinking": {"type": "enabled", "budget_tokens": "x"}}', "thinking.budget_tokens"),
    # MLX takes an unsigned 64-bit seed: a larger one was a 502 from the server.
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], '
     b'"seed": 18446744073709551616}', "seed"),
    ("/v1/completions", b'{"model": "parked", "prompt": "Hi", "seed": 18446744073709551616}',
     "seed"),
    # An empty prompt, or a list, killed mlx_lm's generation thread: its server then
    # refused every request until stopped by hand.
    ("/v1/completions", b'{"model": "parked", "prompt": ""}', "prompt"),
    ("/v1/completions", b'{"model": "parked", "prompt": [""]}', "prompt"),
    ("/v1/completions", b'{"model": "parked", "prompt": ["a", "b"]}', "prompt"),
    # A token id past the vocabulary (400 here) kills mlx_lm's server process.
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], '
     b'"logit_bias": {"400": 5}}', "logit_bias"),
    ("/v1/completions", b'{"model": "parked", "prompt": "Hi", "logit_bias": {"-1": 5}}',
     "logit_bias"),
    ("/v1/chat/completions",
     b'{"model": "parked", "messages": [{"role": "user", "content": "Hi"}], '
     b'"logit_bias": {"5": 101}}', "logit_bias.5"),
    ("/v1/chat/completions", b'{"model": "parked", "messages": ' + b"[" * 5000
     + b"]" * 5000 + b"}", None),
])
def test_malformed_bodies_are_400_naming_the_field_and_start_nothing(
        api: Api, path: str, raw: bytes, field: str | None) -> None:
    answer = api.post(path, raw=raw)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    if path.startswith("/v1/messages"):
        assert answer.json()["type"] == "error"
        assert error["type"] == "invalid_request_error"
    elif field is not None:
        assert error["param"] == field
    if field is not None:
        assert error["message"].startswith(f"{field}: "), error["message"]
    assert parked_state(api) is ServerState.STOPPED


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(st.characters(codec=None), max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["type", "role", "content", "text", "url", "image_url",
                                       "source", "name", "function", "arguments",
                                       "input_audio", "data", "video_url", "x"]),
                      inner, max_size=4),
    max_leaves=12)
_ROLES = st.sampled_from(["user", "assistant", "system", "tool", "developer"]) | _JSON
_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_image", "input_audio",
                              "video_url", "image", "tool_use", "tool_result"]) | _JSON},
    optional={"text": _JSON, "image_url": _JSON, "source": _JSON, "input_audio": _JSON,
              "video_url": _JSON, "input": _JSON, "content": _JSON, "id": _JSON,
              "name": _JSON})
_MESSAGE = st.fixed_dictionaries(
    {"role": _ROLES}, optional={"content": st.text(max_size=5) | st.lists(_PART, max_size=3)
                                | _JSON, "tool_calls": _JSON, "name": _JSON,
                                "tool_call_id": _JSON})
_FIELDS = ["temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "stream",
           "stream_options", "stop", "stop_sequences", "tools", "tool_choice", "system",
           "thinking", "n", "seed", "logit_bias", "prompt", "response_format", "min_p"]
_BODY = st.fixed_dictionaries(
    {"model": st.just("nope") | _JSON,
     "messages": st.lists(_MESSAGE | _JSON, max_size=3) | _JSON},
    optional={name: _JSON for name in _FIELDS})


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_BODY, path=st.sampled_from(["/v1/chat/completions", "/v1/messages",
                                         "/v1/messages/count_tokens", "/v1/completions"]))
@example(body={"model": "nope", "messages": [1]}, path="/v1/chat/completions")
@example(body={"model": "nope", "messages": HI, "temperature": float("nan")},
         path="/v1/chat/completions")
@example(body={"model": "nope", "messages": [{"role": "user", "content": "\ud800"}]},
         path="/v1/messages")
def test_fuzzed_bodies_never_get_a_5xx(api: Api, body: dict[str, Any], path: str) -> None:
    # ensure_ascii writes lone surrogates as \\ud800 escapes, as a client could.
    raw = json.dumps(body, allow_nan=True).encode()
    answer = api.post(path, raw=raw)
    assert answer.status_code < 500, (answer.status_code, answer.text)
    assert answer.status_code in (400, 404), answer.text
    if answer.status_code == 400:
        assert answer.json()["error"]["message"]


@settings(max_examples=60, deadline=None)
@given(body=_BODY)
def test_fuzzed_bodies_that_pass_the_checks_convert_or_get_400(body: dict[str, Any]) -> None:
    """What runs after the profile lookup (which the request fuzz stops at: no profile
    'nope'): Anthropic conversion, the max_tokens cap and the media checks."""
    from manager.api.anthropic import to_openai_request
    from manager.api.schema import check_chat, check_messages, check_values
    from manager.errors import ValidationError

    gate = MediaGate(max_bytes=1024, allow_remote=False)
    for check in (check_chat, check_messages):
        try:
            check_values(body)
            check(body)
            request = to_openai_request(body, "m") if check is check_messages else body
            gate.messages(cap_max_tokens(request, 64)["messages"])
            json.dumps(request, allow_nan=False).encode()  # what is sent upstream
        except GatewayError as exc:
            assert exc.failure.status == 400
        except ValidationError as exc:
            assert exc.message


# --- max_tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "limit", "expected"), [
    ({"max_tokens": 1e12}, 4096, {"max_tokens": 4096}),
    ({"max_tokens": 10}, 4096, {"max_tokens": 10}),
    ({"max_completion_tokens": 10 ** 12}, 64, {"max_tokens": 64}),
    ({"max_completion_tokens": 8, "max_tokens": 99}, 64, {"max_tokens": 8}),
    ({}, 64, {}),
    ({"max_tokens": None}, 64, {}),
])
def test_cap_max_tokens(body: dict[str, Any], limit: int, expected: dict[str, Any]) -> None:
    out = cap_max_tokens(body, limit)
    assert out == expected
    assert all(type(v) is int for v in out.values())


def test_token_limit_takes_the_smallest_known_limit() -> None:
    assert token_limit(64, 4096, fallback=10 ** 6) == 64
    assert token_limit(None, 4096, fallback=10 ** 6) == 4096
    assert token_limit(None, None, fallback=10 ** 6) == 10 ** 6


# --- images ------------------------------------------------------------------------------


class _Listener:
    """A TCP port that records whether anybody connected (it never accepts)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def was_contacted(self) -> bool:
        self.sock.setblocking(False)
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[_Listener]:
    made = _Listener()
    yield made
    made.close()


def _image_body(url: str, model: str = "eyes") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]}]}


def test_an_image_or_audio_part_to_a_text_only_server_is_a_400_that_names_it(api: Api
                                                                            ) -> None:
    """mlx_lm refused them with a 404 the gateway passed on as its own failure: a 502
    the SDKs retried three times."""
    for part in ({"type": "image_url", "image_url": {"url": png_data_url()}},
                 {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}):
        answer = api.post("/v1/chat/completions", {"model": "parked", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What?"}, part]}]})
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "messages[0].content[1]"
        assert "parked runs a text-only model" in error["message"]
        assert part["type"] in error["message"]
        assert answer.headers["x-should-retry"] == "false"
    assert parked_state(api) is ServerState.STOPPED


def test_an_image_the_gateway_refuses_is_named_by_the_clients_own_field(api: Api) -> None:
    """The Anthropic, Ollama and Responses routes' images are checked once translated, and
    the refusal named the OpenAI part's field (`messages[0].content[1].image_url`), which the
    client never sent."""
    png = base64.b64encode(png_bytes()).decode()
    answer = api.post("/v1/messages", {"model": "eyes", "max_tokens": 5, "messages": [
        {"role": "user", "content": "Look."}, {"role": "assistant", "content": "Yes?"},
        {"role": "user", "content": [{"type": "text", "text": "This one:"}, {
            "type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": png + "!!"}}]}]})
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert message.startswith("messages[2].content[1].source.data: is not valid base64")
    answer = api.post("/v1/messages", {"model": "eyes", "max_tokens": 5, "messages": [
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "file:///etc/hosts"}}]}]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"].startswith("messages[0].content[0].source.url: ")
    answer = api.post("/api/chat", {"model": "eyes", "messages": [
        {"role": "user", "content": "And these?", "images": [png, png + "!!"]}]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("messages[0].images[1]: is not valid base64")
    answer = api.post("/v1/responses", {"model": "eyes", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "This?"}, {
            "type": "input_image", "image_url": "data:image/png;base64," + png + "!!"}]}]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "input[0].content[1].image_url"
    # An OpenAI client's own part is named as it sent it.
    answer = api.post("/v1/chat/completions", _image_body("data:image/png;base64," + png + "!!"))
    assert answer.json()["error"]["param"] == "messages[0].content[0].image_url"
    assert parked_state(api) is ServerState.STOPPED
    # The name goes no further than the gate: a checked image is a part of its own.
    checked = MediaGate(max_bytes=1 << 20, allow_remote=False).messages([{
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_url()},
                                     "mm_client_field": "images[0]"}]}])
    assert checked[0]["content"] == [{"type": "image_url", "image_url": {"url": png_data_url()}}]


def test_image_urls_are_not_fetched_unless_an_admin_allows_them(
        api: Api, listener: _Listener) -> None:
    url = f"http://127.0.0.1:{listener.port}/cat.png"
    answer = api.post("/v1/chat/completions", _image_body(url))
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "messages[0].content[0].image_url"
    assert "not fetched on this dashboard" in answer.json()["error"]["message"]
    anthropic = api.post("/v1/messages", {"model": "eyes", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": url}}]}]})
    assert anthropic.status_code == 400
    assert "not fetched on this dashboard" in anthropic.json()["error"]["message"]
    for local in ("file:///etc/hosts", "/etc/hosts", "../data/manager.db"):
        refused = api.post("/v1/chat/completions", _image_body(local))
        assert refused.status_code == 400
        assert "never read" in refused.json()["error"]["message"]
    assert not listener.was_contacted()
    assert parked_state(api) is ServerState.STOPPED


def test_remote_images_on_still_never_reach_loopback(make_api: Callable[..., Api],
                                                     listener: _Listener) -> None:
    api = make_api(gateway_remote_images=True)
    for host in ("127.0.0.1", "localhost"):
        answer = api.post("/v1/chat/completions",
                          _image_body(f"http://{host}:{listener.port}/cat.png"))
        assert answer.status_code == 400
        message = answer.json()["error"]["message"]
        assert "a loopback address" in message and "public addresses" in message
    assert not listener.was_contacted()


@pytest.mark.parametrize(("url", "problem"), [
    ("data:image/png;base64,%%%%", "is not valid base64"),
    ("data:image/png," + "x" * 10, "must be a base64 data: URL"),
    ("data:image/png;base64," + base64.b64encode(b"just text").decode(),
     "not an image in a known format"),
    ("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 3000).decode(),
     "larger than"),
    ("ftp://example.com/x.png", "never read"),
])
def test_data_urls_are_decoded_and_checked(url: str, problem: str) -> None:
    gate = MediaGate(max_bytes=2048, allow_remote=False)
    with pytest.raises(GatewayError, match=problem):
        gate.image(url, "image_url")


def test_a_valid_data_url_passes_with_its_real_type() -> None:
    gate = MediaGate(max_bytes=1 << 20, allow_remote=False)
    png = png_bytes()
    assert gate.image("data:image/jpeg;base64," + base64.b64encode(png).decode(), "f") \
        == "data:image/png;base64," + base64.b64encode(png).decode()
    assert image_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    out = gate.messages([{"role": "user", "content": [
        {"type": "input_image", "image_url": png_data_url()}]}])
    assert out[0]["content"][0] == {"type": "image_url", "image_url": {"url": png_data_url()}}
    for part in ({"type": "video_url", "video_url": {"url": "/etc/hosts"}},
                 {"type": "input_audio", "input_audio": {"data": "/etc/hosts.wav"}}):
        with pytest.raises(GatewayError):
            gate.messages([{"role": "user", "content": [part]}])
    # "/tmp/abcdefg" is valid base64, and a path to mlx_vlm: audio goes on as a data: URL.
    audio = gate.messages([{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "/tmp/abcdefg", "format": "wav"}}]}])
    assert audio[0]["content"][0]["input_audio"] == {
        "data": "data:audio/wav;base64,/tmp/abcdefg", "format": "wav"}


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", "a loopback address"), ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"), ("10.1.2.3", "a private address"),
    ("192.168.1.1", "a private address"), ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"), ("0.0.0.0", "not a public address"),
    ("100.64.0.1", "not a public address"), ("224.0.0.1", "not a public address"),
    ("8.8.8.8", None), ("2001:4860:4860::8888", None),
])
def test_address_refusal(address: str, reason: str | None) -> None:
    import ipaddress

    assert address_refusal(ipaddress.ip_address(address)) == reason


class _ImageServer:
    """An HTTP server on 127.0.0.2 that serves a PNG at /cat.png and redirects
    /away to `redirect_to`."""

    def __init__(self, redirect_to: str) -> None:
        image = png_bytes()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path == "/cat.png":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    self.wfile.write(image)
                else:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_fetched_images_become_data_and_redirects_are_checked(listener: _Listener) -> None:
    import ipaddress

    served = _ImageServer(f"http://127.0.0.1:{listener.port}/secret")
    # The test's stand-in for "a public host": only 127.0.0.2 is allowed.
    allow = ipaddress.ip_address("127.0.0.2")
    gate = MediaGate(max_bytes=1 << 20, allow_remote=True,
                     refusal=lambda ip: None if ip == allow else address_refusal(ip))
    try:
        assert gate.image(served.url + "/cat.png", "f") == png_data_url()
        with pytest.raises(GatewayError, match="resolves to 127.0.0.1, a loopback address"):
            gate.image(served.url + "/away", "f")
        small = MediaGate(max_bytes=10, allow_remote=True,
                          refusal=lambda ip: None if ip == allow else address_refusal(ip))
        with pytest.raises(GatewayError, match="larger than"):
            small.image(served.url + "/cat.png", "f")
    finally:
        served.close()
    assert not listener.was_contacted()


def test_gateway_limits_from_the_environment() -> None:
    from manager.errors import ValidationError

    settings = Settings.from_env({"MLX_MANAGER_GATEWAY_REMOTE_IMAGES": "1",
                                  "MLX_MANAGER_GATEWAY_REQUESTS_PER_MINUTE": "0",
                                  "MLX_MANAGER_GATEWAY_MAX_BODY_BYTES": "1000"})
    assert settings.gateway_remote_images is True
    assert settings.gateway_requests_per_minute == 0
    assert settings.gateway_max_body_bytes == 1000
    defaults = Settings.from_env({})
    assert defaults.gateway_remote_images is False
    assert defaults.gateway_max_body_bytes == 32 * 1024 * 1024
    assert (defaults.gateway_concurrent_per_key, defaults.gateway_requests_per_minute) \
        == (8, 120)
    with pytest.raises(ValidationError, match="whole number"):
        Settings.from_env({"MLX_MANAGER_GATEWAY_CONCURRENT_PER_KEY": "many"})


def test_logit_bias_ids_are_bounded_by_the_models_vocabulary(tmp_path: Path) -> None:
    vocab = detect(tiny_config_dir(tmp_path / "model")).vocab_size
    assert vocab == 400
    check_token_ids({"logit_bias": {"0": -100, "399": 100}}, vocab, "parked")
    check_token_ids({}, None, "parked")
    with pytest.raises(ValidationError, match="token id 400 is outside 'parked'"):
        check_token_ids({"logit_bias": {"400": 1}}, vocab, "parked")
    with pytest.raises(ValidationError, match="vocabulary size of 'parked' is unknown"):
        check_token_ids({"logit_bias": {"1": 1}}, None, "parked")


@pytest.mark.parametrize(("method", "path", "allow", "shape"), [
    ("GET", "/v1/chat/completions", "POST", "openai"),
    ("PUT", "/v1/models", "GET, HEAD", "openai"),
    ("GET", "/v1/messages", "POST", "anthropic"),
    ("DELETE", "/v1/responses", "POST", "openai"),
    ("GET", "/api/chat", "POST", "ollama"),
    ("POST", "/api/tags", "GET, HEAD", "ollama"),
])
def test_a_known_path_with_another_method_is_a_405_naming_the_methods(
        api: Api, method: str, path: str, allow: str, shape: str) -> None:
    """It was a 404 "No such endpoint ... This gateway serves /v1/chat/completions"."""
    answer = api.call(method, path)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allow
    said = answer.json()["error"]
    message = said if shape == "ollama" else said["message"]
    assert message == f"{method} is not served at {path}: use {allow.replace(', ', ' or ')}."
    if shape == "anthropic":
        assert answer.json()["type"] == "error"


def test_an_unknown_path_is_still_a_404(api: Api) -> None:
    for path in ("/v1/nothing", "/api/nothing"):
        assert api.call("GET", path).status_code == 404


def test_a_large_body_is_parsed_and_checked_off_the_event_loop(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Megabytes of JSON were parsed and checked on the event loop: every other request
    and stream of the dashboard waited seconds for them (a 31 MB body: 5 s). Where each
    body was parsed is recorded by a wrapper that calls the real parser."""
    from manager.api import gateway

    where: list[str] = []
    real_parse = gateway.parse_body_strict

    def recorded(raw: bytes | bytearray) -> tuple[dict[str, Any], bool]:
        try:
            asyncio.get_running_loop()
            where.append("loop")
        except RuntimeError:  # no loop runs in this thread: a worker thread
            where.append("worker")
        return real_parse(raw)

    monkeypatch.setattr(gateway, "parse_body_strict", recorded)
    part = {"role": "user", "content": [{"type": "text", "text": "x"}]}
    for parts in (1, 20_000):  # a few hundred bytes, then ~1 MB
        answer = api.post("/v1/chat/completions", {"model": "nope", "messages": [part] * parts})
        assert answer.status_code == 404 and "nope" in answer.json()["error"]["message"]
    assert where == ["loop", "worker"]


def test_a_refusal_is_logged_on_one_line_whatever_its_path_holds(
        caplog: pytest.LogCaptureFixture) -> None:
    """A path with %0a in it was logged as it came: the client's text after the newline
    stood as a log line of its own ("INFO ... admin signed in", say)."""
    from starlette.requests import HTTPConnection

    from manager.api.key_auth import log_refusal
    from manager.api.wire import Failure

    path = "/v1/models\n2026-12-04 22:00:00,000 INFO    manager: forged"
    with caplog.at_level("WARNING", logger="manager.api.key_auth"):
        log_refusal(HTTPConnection({"type": "http", "method": "GET", "path": path,
                                    "headers": []}),
                    Failure(404, f"No such endpoint: GET {path}.", "unknown_endpoint"))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "manager.api.key_auth"]
    assert "\n" not in line
    assert line.startswith("gateway GET /v1/models\\n2026-12-04 22:00:00,000 INFO")
    assert line.endswith("No such endpoint: GET /v1/models\\n2026-12-04 22:00:00,000 INFO    "
                         "manager: forged.")

"""Ollama's model routes (/api/version, tags, ps, show) and its refusals, with the
official ollama client over the real app in-process (no model server needed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import httpx
import ollama
import pytest
from anyio.from_thread import BlockingPortal

from manager.servers.profiles import ProfileSpec
from manager.services import Services
from tests.conftest import PASSWORD, InProcessTransport, SharedApp


@dataclass
class Api:
    services: Services
    transport: InProcessTransport
    key: str

    def client(self, key: str | None = None) -> ollama.Client:
        # The official client, unchanged: the key travels as a header (headers=...).
        return ollama.Client(host="http://testserver", transport=self.transport,
                             headers={"Authorization": f"Bearer {key or self.key}"})

    def http(self) -> httpx.Client:
        return httpx.Client(base_url="http://testserver", transport=self.transport,
                            headers={"Authorization": f"Bearer {self.key}"})


@pytest.fixture
def api(shared_app: SharedApp, asgi_portal: BlockingPortal,
        tiny_models: dict[str, Path]) -> Api:
    """The session's shared app (in-process), handed over as new, with three profiles."""
    services = shared_app.fresh()
    admin = services.auth.register("alice@example.com", PASSWORD)
    for name, model, extra in (("thinker", "thinking", {"temperature": 0.5, "max_tokens": 64}),
                               ("tools", "tools", {}), ("eyes", "vision", {})):
        services.profiles.create(admin, ProfileSpec(name=name, model=str(tiny_models[model]),
                                                    **extra))
    return Api(services, InProcessTransport(shared_app.app, asgi_portal),
               services.api_keys.create(admin, "tests").secret)


def test_version_list_and_show_describe_the_profiles(api: Api) -> None:
    client = api.client()
    assert client._request_raw("GET", "/api/version").json()["version"]
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"thinker", "tools", "eyes"}
    thinker = models["thinker"]
    assert thinker.size > 0 and len(thinker.digest) == 64 and thinker.modified_at is not None
    assert thinker.details.family == "qwen3" and thinker.details.format == "mlx"
    assert models["eyes"].details.family == "qwen2_vl"
    shown = client.show("thinker")
    assert "thinking" in shown.capabilities and "vision" not in shown.capabilities
    assert shown.modelinfo["qwen3.context_length"] == 4096
    assert "temperature" in shown.parameters and "num_predict" in shown.parameters
    assert "tools" in client.show("tools").capabilities
    assert "vision" in client.show("eyes").capabilities
    assert client.show("THINKER").details.family == "qwen3"  # names are case-insensitive
    # Ollama's default tag: clients that add it name the same model (it was a 404).
    assert client.show("thinker:latest").details.family == "qwen3"
    assert client.ps().models == []  # nothing is running


def test_errors_are_ollama_shaped_with_the_right_status(api: Api) -> None:
    client = api.client()
    with pytest.raises(ollama.ResponseError, match="model 'nope' not found") as caught:
        client.show("nope")
    assert caught.value.status_code == 404
    for call in (lambda: client.pull("thinker"), lambda: client.delete("thinker"),
                 lambda: client.copy("thinker", "thinker-2"),
                 lambda: client.create("mine", from_="thinker"),
                 lambda: client.push("thinker")):
        with pytest.raises(ollama.ResponseError, match="managed on the MLX Model Manager "
                           "dashboard") as caught:
            call()
        assert caught.value.status_code == 403
    with pytest.raises(ollama.ResponseError, match="no embeddings") as caught:
        client.embed("thinker", "hello")
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError, match="not valid") as caught:
        api.client("mlxm-not-a-real-key").list()
    assert caught.value.status_code == 401
    with api.http() as http:
        for body, problem in (({}, "model is required"), ({"model": 3}, "model is required"),
                              ({"name": ""}, "model is required")):
            answer = http.post("/api/show", json=body)
            assert answer.status_code == 400 and set(answer.json()) == {"error"}
            assert problem in answer.json()["error"]
        answer = http.post("/api/show", content=b"{oops")
        assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]
        answer = http.post("/api/show", content=b"x" * (api.services.settings
                                                         .gateway_max_body_bytes + 1))
        assert answer.status_code == 413 and set(answer.json()) == {"error"}
        answer = http.post("/api/tags")  # the wrong method
        assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD"
        assert answer.json() == {"error": "POST is not served at /api/tags: use GET or HEAD."}
        # Older clients name the model `name`.
        assert http.post("/api/show", json={"name": "tools"}).status_code == 200
    with httpx.Client(base_url="http://testserver", transport=api.transport) as anonymous:
        answer = anonymous.get("/api/tags")
        assert answer.status_code == 401 and "API key" in answer.json()["error"]


def test_every_refusal_is_logged_once_with_the_key_name_never_the_key(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    client = api.client()
    with caplog.at_level(logging.WARNING, logger="manager.api.key_auth"):
        with pytest.raises(ollama.ResponseError):
            client.show("nope")
        with pytest.raises(ollama.ResponseError):
            client.pull("thinker")
        with pytest.raises(ollama.ResponseError):
            api.client("mlxm-not-a-real-key").list()
    lines = [r.getMessage() for r in caplog.records if r.name == "manager.api.key_auth"]
    assert len(lines) == 3
    assert lines[0].startswith("gateway POST /api/show refused with 404 (key 'tests' of "
                               "alice@example.com, model 'nope'): model 'nope' not found")
    assert lines[1].startswith("gateway POST /api/pull refused with 403 (key 'tests'")
    assert "(an invalid key, model not named): This API key is not valid" in lines[2]
    assert not any(api.key in line or "mlxm-not-a-real-key" in line for line in lines)

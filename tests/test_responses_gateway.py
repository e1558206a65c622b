"""The Responses API with the official clients, unchanged, against a live dashboard and
real mlx_lm / mlx_vlm servers on the scripted tiny models: the openai SDK's
`responses.create`, `responses.stream`, stored responses, and the openai-agents SDK's
default Agent running a function tool.

One dashboard for the module; each profile is started on demand by its first request.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, TEST_HASHER, run_uvicorn
from tests.fixtures.tiny_models import TOOL_FINAL_SCRIPT
from tests.server_helpers import hf_home_env

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
ANSWER = "The answer is 4."  # THINKING_SCRIPT's answer, after "Let me think."
SUNNY = TOOL_FINAL_SCRIPT[0]
MAX_BODY = 200_000


@dataclass
class Live:
    url: str
    services: Services
    alice_key: str
    bob_key: str

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.alice_key,
                             max_retries=0, timeout=120)

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.alice_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
         ) -> Iterator[Live]:
    from app import create_app

    root = tmp_path_factory.mktemp("responses")
    with hf_home_env(root / "hf_home"):
        services = Services.create(Settings(data_dir=root / "data", port=free_port(), warm_spare=False,
                                            gateway_max_body_bytes=MAX_BODY),
                                   hasher=TEST_HASHER)
        auth = services.auth
        alice = auth.register("alice@example.com", PASSWORD)
        bob = auth.approve(alice, auth.register("bob@example.com", PASSWORD).id)
        for name, model, extra in (("thinker", "thinking", {"max_tokens": 64}),
                                   ("tools", "tools", {}),
                                   ("vision", "vision", {"max_tokens": 4})):
            services.profiles.create(alice, ProfileSpec(
                name=name, model=str(tiny_models[model]), port=free_port(), **extra))
        server, thread = run_uvicorn(create_app(services), services.settings.port)
        try:
            yield Live(f"http://127.0.0.1:{services.settings.port}", services,
                       services.api_keys.create(alice, "tests").secret,
                       services.api_keys.create(bob, "bob").secret)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            services.close()


# --- responses.create and responses.stream -------------------------------------------------


def test_create_with_a_string_or_items_and_instructions(live: Live) -> None:
    client = live.client()
    plain = client.responses.create(model="thinker", input="What is 2 + 2?")
    assert plain.object == "response" and plain.status == "completed"
    assert plain.model == "thinker" and plain.id.startswith("resp_")
    assert plain.output_text == ANSWER
    assert [item.type for item in plain.output] == ["reasoning", "message"]
    assert plain.output[0].summary[0].text == "Let me think."  # type: ignore[union-attr]
    assert plain.usage is not None and plain.usage.output_tokens > 0
    # Instructions and a developer message reach the prompt (as system text).
    told = client.responses.create(model="thinker", input="What is 2 + 2?",
                                   instructions="Answer in one short sentence.")
    assert told.instructions == "Answer in one short sentence."
    assert told.usage is not None and told.usage.input_tokens > plain.usage.input_tokens
    items = client.responses.create(model="thinker", input=[
        {"role": "developer", "content": "Answer in one short sentence."},
        {"role": "user", "content": [{"type": "input_text", "text": "What is 2 + 2?"}]}])
    assert items.output_text == ANSWER
    assert items.usage is not None and items.usage.input_tokens > plain.usage.input_tokens
    # Thinking switched off through `reasoning`: the template's empty think block.
    quiet = client.responses.create(model="thinker", input="What is 2 + 2?",
                                    reasoning={"effort": "none"})
    assert quiet.usage is not None and quiet.usage.input_tokens > plain.usage.input_tokens


def test_the_stream_helper_accumulates_what_was_streamed(live: Live) -> None:
    client = live.client()
    kinds: list[str] = []
    numbers: list[int] = []
    text: list[str] = []
    thinking: list[str] = []
    with client.responses.stream(model="thinker", input="What is 2 + 2?",
                                 max_output_tokens=64, temperature=0.7, top_p=0.9,
                                 include=["reasoning.encrypted_content"]) as stream:
        for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            elif event.type == "response.reasoning_summary_text.delta":
                thinking.append(event.delta)
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert numbers == list(range(len(numbers)))
    assert final.output_text == "".join(text) == ANSWER
    assert "".join(thinking) == "Let me think."
    assert final.max_output_tokens == 64 and final.temperature == 0.7 and final.top_p == 0.9
    # A streamed response is stored like a whole one.
    assert client.responses.retrieve(final.id).output_text == ANSWER


def test_a_function_call_round_trip_streamed_and_not(live: Live) -> None:
    client = live.client()
    raw = client.responses.with_raw_response.create(
        model="tools", input="What is the weather in Paris?",
        tools=[WEATHER, {"type": "web_search"}])  # type: ignore[list-item]
    # A hosted tool is left out of the prompt, and the answer says so.
    assert "web_search" in raw.headers["warning"]
    first = raw.parse()
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert calls[0].arguments == '{"city": "Paris"}'
    assert [t.type for t in first.tools] == ["function"]
    # The client runs the tool and sends everything back (no stored state needed).
    items: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"},
                        *[item.model_dump(exclude_none=True) for item in first.output],
                        {"type": "function_call_output", "call_id": calls[0].call_id,
                         "output": "sunny, 24 C"}]
    second = client.responses.create(model="tools", input=items, tools=[WEATHER],
                                     store=False)  # type: ignore[list-item]
    assert second.output_text == SUNNY
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)  # store: false
    with client.responses.stream(model="tools", input="Weather in Paris?",
                                 tools=[WEATHER]) as stream:  # type: ignore[list-item]
        args = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        streamed = stream.get_final_response()
    call = [item for item in streamed.output if item.type == "function_call"][0]
    assert "".join(args) == call.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]


def test_previous_response_id_continues_the_conversation(live: Live) -> None:
    client = live.client()
    first = client.responses.create(model="tools", input="What is the weather in Paris?",
                                    tools=[WEATHER])  # type: ignore[list-item]
    call = [item for item in first.output if item.type == "function_call"][0]
    # Only the tool's output is sent: the call and the question come from the stored one.
    second = client.responses.create(
        model="tools", previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id,  # type: ignore[union-attr]
                "output": "sunny"}])
    assert second.output_text == SUNNY and second.previous_response_id == first.id
    # A third turn builds on both (streamed this time).
    with client.responses.stream(model="thinker", previous_response_id=second.id,
                                 input="Thanks! And 2 + 2?") as stream:
        third = stream.get_final_response()
    alone = client.responses.create(model="thinker", input="Thanks! And 2 + 2?", store=False)
    assert third.output_text == ANSWER
    assert third.usage is not None and alone.usage is not None
    # The question, the call, its output and the answer came along.
    assert third.usage.input_tokens > alone.usage.input_tokens + 40
    # input_items lists a response's own input, newest first by default.
    listed = client.responses.input_items.list(second.id)
    assert [item.type for item in listed.data] == ["function_call_output"]
    listed = client.responses.input_items.list(first.id, order="asc")
    assert [item.type for item in listed.data] == ["message"]


def test_another_account_cannot_read_or_continue_a_stored_response(live: Live) -> None:
    mine = live.client().responses.create(model="thinker", input="A secret.")
    theirs = live.client(live.bob_key)
    with pytest.raises(openai.NotFoundError) as caught:
        theirs.responses.retrieve(mine.id)
    assert caught.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        theirs.responses.create(model="thinker", input="Go on.", previous_response_id=mine.id)
    assert caught.value.code == "response_not_found"
    assert caught.value.param == "previous_response_id"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        theirs.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(mine.id)
    assert live.client().responses.retrieve(mine.id).output_text == ANSWER


def test_delete_then_get_is_404(live: Live) -> None:
    client = live.client()
    response = client.responses.create(model="thinker", input="Forget this.")
    with live.http() as http:
        answer = http.delete(f"/v1/responses/{response.id}")
        assert answer.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError, match="previous_response_id|No stored response"):
        client.responses.create(model="thinker", input="x", previous_response_id=response.id)


def test_an_image_reaches_the_vision_profile(live: Live) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    client = live.client()
    text_only = client.responses.create(model="vision", input="Describe this image.")
    seen = client.responses.create(model="vision", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Describe this image."},
        {"type": "input_image", "image_url": url}]}])
    assert seen.status in ("completed", "incomplete")  # random weights: any text
    assert seen.usage is not None and text_only.usage is not None
    assert seen.usage.input_tokens > text_only.usage.input_tokens  # the image's tokens
    with pytest.raises(openai.BadRequestError, match="not a known image|image"):
        client.responses.create(model="vision", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,bm90IGFuIGltYWdl"}]}])


# --- openai-agents -------------------------------------------------------------------------


def test_the_agents_sdk_default_agent_runs_a_function_tool(live: Live) -> None:
    from agents import Agent, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider
    from agents.models.openai_responses import OpenAIResponsesModel

    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    result: dict[str, Any] = {}

    def run() -> None:  # its own loop: a browser test may hold one on this thread
        async def go() -> None:
            client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=live.alice_key,
                                        max_retries=0, timeout=120)
            provider = OpenAIProvider(openai_client=client)
            result["model"] = provider.get_model("tools")
            agent = Agent(name="Weather", instructions="Use the tool.", model="tools",
                          tools=[get_weather])
            config = RunConfig(model_provider=provider, tracing_disabled=True)
            done = await Runner.run(agent, "What is the weather in Paris?", run_config=config)
            result["output"] = done.final_output
            streamed = Runner.run_streamed(agent, "Weather in Paris?", run_config=config)
            result["events"] = [event.type async for event in streamed.stream_events()]
            result["streamed"] = streamed.final_output
            await client.close()

        asyncio.run(go())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=300)
    assert isinstance(result["model"], OpenAIResponsesModel)  # the default: Responses
    assert asked == ["Paris", "Paris"]
    assert result["output"] == result["streamed"] == SUNNY
    assert "raw_response_event" in result["events"]


# --- bad input -----------------------------------------------------------------------------


BAD_REQUESTS: list[tuple[dict[str, Any], int, str, str | None]] = [
    ({"model": "thinker"}, 400, "invalid_request", "input"),
    ({"input": "hi"}, 400, "model_required", None),
    ({"model": "thinker", "input": 5}, 400, "invalid_request", "input"),
    ({"model": "thinker", "input": [{"role": "robot", "content": "x"}]}, 400,
     "invalid_request", "input[0].role"),
    ({"model": "thinker", "input": "x", "max_output_tokens": "many"}, 400,
     "invalid_request", "max_output_tokens"),
    ({"model": "thinker", "input": "x", "tools": [{"type": "function"}]}, 400,
     "invalid_request", "tools[0].name"),
    ({"model": "thinker", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file_1"}]}]}, 400, "invalid_request",
     "input[0].content[0]"),
    ({"model": "gpt-5", "input": "x"}, 404, "model_not_found", None),
    ({"model": "thinker", "input": "x", "previous_response_id": "resp_nope"}, 404,
     "response_not_found", "previous_response_id"),
    ({"model": "thinker", "input": "x", "background": True}, 400, "invalid_request",
     "background"),
]


def test_bad_requests_get_openai_errors(live: Live) -> None:
    with live.http() as http:
        for body, status, code, param in BAD_REQUESTS:
            for stream in (False, True):
                answer = http.post("/v1/responses", json={**body, "stream": stream})
                assert answer.status_code == status, answer.text
                error = answer.json()["error"]
                assert (error["code"], error["param"]) == (code, param), body
                assert error["type"] == "invalid_request_error"


def test_bad_bodies_keys_and_ids_on_every_route(live: Live) -> None:
    with live.http() as http:
        answer = http.post("/v1/responses", content=b"{not json",
                           headers={"Content-Type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"
        huge = http.post("/v1/responses", json={"model": "thinker", "input": "x" * MAX_BODY})
        assert huge.status_code == 413
        assert huge.json()["error"]["code"] == "request_too_large"
        for method, path in (("GET", "/v1/responses/resp_nope"),
                             ("DELETE", "/v1/responses/resp_nope"),
                             ("GET", "/v1/responses/resp_nope/input_items")):
            answer = http.request(method, path)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "response_not_found"
        mine = http.post("/v1/responses", json={"model": "thinker", "input": "x"}).json()
        for query, param in (("limit=0", "limit"), ("limit=lots", "limit"),
                             ("order=sideways", "order"), ("after=msg_nope", "after")):
            answer = http.get(f"/v1/responses/{mine['id']}/input_items?{query}")
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param
    with httpx.Client(base_url=live.url, timeout=30) as anonymous:
        for method, path in (("POST", "/v1/responses"), ("GET", f"/v1/responses/{mine['id']}"),
                             ("DELETE", f"/v1/responses/{mine['id']}"),
                             ("GET", f"/v1/responses/{mine['id']}/input_items")):
            answer = anonymous.request(method, path, json={"model": "thinker", "input": "x"})
            assert answer.status_code == 401
            assert answer.json()["error"]["code"] == "missing_api_key"

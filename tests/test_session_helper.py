"""components.session.handler through a real mounted Gradio app and gradio_client: the
user comes from the request, a ManagerError (also mid-stream) reaches the client as the
domain's message, and a request without an active user is refused before fn runs."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import pytest
from fastapi import FastAPI, Request

from components.session import handler, refusals
from manager.accounts.auth import User
from manager.errors import NotFound, ValidationError
from manager.net import free_port
from manager.services import Services
from tests.conftest import run_uvicorn
from tests.gradio_clients import gradio_client

PW = "correct horse battery"


def _app(services: Services, ran: list[str]) -> FastAPI:
    with gr.Blocks() as demo:
        text = gr.Textbox()
        out = gr.Textbox()
        go = gr.Button()

        @handler(services)
        def greet(user: User, name: str) -> str:
            ran.append(name)
            if name == "nobody":
                raise NotFound("No such person.")
            return f"{user.email} greets {name}"

        @handler(services)
        def count(user: User, upto: str) -> Iterator[str]:
            for number in range(int(upto)):
                yield f"{user.email}:{number}"
            raise ValidationError("Counted too far.")

        def in_block(name: str) -> str:
            with refusals("a block"):
                raise NotFound(f"{name} is not here.")

        go.click(greet, text, out, api_name="greet")
        go.click(count, text, out, api_name="count")
        go.click(in_block, text, out, api_name="block")

    app = FastAPI()
    return gr.mount_gradio_app(app, demo, path="/",
                               auth_dependency=_who)


def _who(request: Request) -> str | None:
    return request.headers.get("x-who")


@pytest.fixture
def live(services: Services) -> Iterator[tuple[str, list[str]]]:
    services.auth.register("alice@example.com", PW)  # the first account: active admin
    ran: list[str] = []
    port = free_port()
    server, thread = run_uvicorn(_app(services, ran), port)
    yield f"http://127.0.0.1:{port}", ran
    server.should_exit = True
    thread.join(timeout=15)


def test_the_user_comes_from_the_request_and_refusals_keep_their_message(
        live: tuple[str, list[str]]) -> None:
    url, ran = live
    alice = gradio_client(url, headers={"x-who": "alice@example.com"})
    assert alice.predict("Bob", api_name="/greet") == "alice@example.com greets Bob"
    with pytest.raises(Exception, match="No such person"):
        alice.predict("nobody", api_name="/greet")
    with pytest.raises(Exception, match="nobody is not here"):
        alice.predict("nobody", api_name="/block")
    job = alice.submit("2", api_name="/count")
    with pytest.raises(Exception, match="Counted too far"):
        job.result()
    assert job.outputs() == ["alice@example.com:0", "alice@example.com:1"]
    # An account that does not exist is refused before the handler runs.
    stranger = gradio_client(url, headers={"x-who": "mallory@example.com"})
    with pytest.raises(Exception, match="Your session has ended"):
        stranger.predict("Carol", api_name="/greet")
    assert ran == ["Bob", "nobody"]

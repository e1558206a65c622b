"""`mlx-manager run PROFILE` in the terminal, and the dashboard's local control API that
`start|stop|run|pull|rm|ps` use while a dashboard runs (issue 15: the terminal habits of
Ollama and LM Studio users). Fast: the renderer, the prompt loop, the event wire, the
control credential and the API's door. Real servers and a real dashboard process:
tests/test_cli_through_dashboard.py."""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Generator
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest
from anyio.from_thread import BlockingPortal
from fastapi import FastAPI

from manager.api.control import build_control_router, control_auth, first_claim
from manager.api.key_auth import gateway_auth
from manager.api.session_gate import SessionGate
from manager.chat.events import AnswerStats, ChatEvent, ChatEventKind, ToolCall, ToolOutcome
from manager.cli.chat_session import event_from_json, event_json
from manager.cli.instance import (
    ControlCredential,
    control_path,
    hold_data_dir,
    read_control,
    remove_control,
    write_control,
)
from manager.cli.remote import find_dashboard
from manager.cli.terminal_chat import DIM, RESET, Renderer, Repl
from manager.errors import Conflict
from manager.services import Services
from tests.test_cli import run_cli

CALL = ToolCall("c1", "get_weather", '{"city": "Paris"}')
TURN = [
    ChatEvent(ChatEventKind.ROUND, round=1),
    ChatEvent(ChatEventKind.THINKING_STARTED),
    ChatEvent(ChatEventKind.THINKING, text="Need weather."),
    ChatEvent(ChatEventKind.THINKING_ENDED, seconds=0.4),
    ChatEvent(ChatEventKind.TOOL_STARTED, call=CALL),
    ChatEvent(ChatEventKind.TOOL_FINISHED, call=CALL,
              outcome=ToolOutcome("ok", "Weather in Paris: 12 °C")),
    ChatEvent(ChatEventKind.ANSWER, text="It is sunny"),
    ChatEvent(ChatEventKind.ANSWER, text=" in Paris."),
    ChatEvent(ChatEventKind.STATS, stats=AnswerStats(5, 7, 300.0, 0.01, 0.1)),
    ChatEvent(ChatEventKind.DONE),
]


def rendered(events: list[ChatEvent], *, tty: bool, verbose: bool = False) -> str:
    out = io.StringIO()
    renderer = Renderer(out, tty=tty, verbose=verbose)
    for event in events:
        renderer.show(event)
    return out.getvalue()


def test_thinking_is_dimmed_on_a_terminal_and_labelled_in_plain_output() -> None:
    plain = rendered(TURN, tty=False)
    assert plain == ("Thinking...\nNeed weather.\n...done thinking (0.4 s).\n\n"
                     "[tool] get_weather({\"city\": \"Paris\"})\n"
                     "[tool] get_weather -> Weather in Paris: 12 °C\n"
                     "It is sunny in Paris.\n")
    shown = rendered(TURN, tty=True)
    assert shown.startswith(f"{DIM}Thinking...\nNeed weather.\n...done thinking (0.4 s)."
                            f"\n{RESET}\n")
    # Only thinking and tool lines are dim; the answer is not, and nothing stays dim.
    answer_at = shown.index("It is sunny")
    assert shown.rfind(DIM, 0, answer_at) < shown.rfind(RESET, 0, answer_at)
    assert shown.endswith("in Paris.\n") and shown.count(DIM) == shown.count(RESET)
    assert "tokens/s" not in plain
    assert "7 answer tokens · 300.0 tokens/s" in rendered(TURN, tty=False, verbose=True)


def test_errors_and_notes_get_their_own_lines() -> None:
    said = rendered([ChatEvent(ChatEventKind.NOTE, text="Tools of 'x' are not available"),
                     ChatEvent(ChatEventKind.ANSWER, text="Half"),
                     ChatEvent(ChatEventKind.ERROR, text="tools crashed: exit code 1"),
                     ChatEvent(ChatEventKind.DONE)], tty=False)
    assert said == ("note: Tools of 'x' are not available\nHalf\n"
                    "error: tools crashed: exit code 1\n")


def test_the_prompt_loop_answers_each_line_until_bye_and_ctrl_c_stops_only_the_answer(
        ) -> None:
    asked: list[str] = []
    closed: list[str] = []

    def turns(text: str) -> Generator[ChatEvent, None, None]:
        asked.append(text)
        try:
            yield ChatEvent(ChatEventKind.ANSWER, text=f"You said {text}.")
            if text == "long":
                raise KeyboardInterrupt  # Ctrl-C while the answer streams
            yield ChatEvent(ChatEventKind.DONE)
        finally:
            closed.append(text)

    out = io.StringIO()
    Repl(turns, stdin=io.StringIO("hello\n\n/?\nlong\nagain\n/bye\nnever\n"), out=out,
         tty=False).run()
    assert asked == ["hello", "long", "again"]
    assert closed == asked  # each answer's stream ended, the stopped one too
    text = out.getvalue()
    assert "You said hello.\n" in text and "/bye" in text  # the help
    assert "You said long.\n(stopped)\nYou said again.\n" in text
    # The end of input (Ctrl-D) leaves as well.
    out = io.StringIO()
    Repl(turns, stdin=io.StringIO("last"), out=out, tty=False).run()
    assert out.getvalue() == "You said last.\n"


def test_events_cross_the_wire_unchanged_for_the_terminal() -> None:
    for event in TURN:
        assert event_from_json(event_json(event)) == event
    cut = ChatEvent(ChatEventKind.THINKING_ENDED, seconds=1.5, finished=False)
    assert event_from_json(event_json(cut)) == cut


def test_the_control_file_is_private_and_trusted_only_while_its_writer_holds_the_data_dir(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    assert find_dashboard(data_dir) is None  # nobody holds it: the CLI acts directly
    credential = write_control(data_dir, "http://127.0.0.1:7860")
    assert stat.S_IMODE(control_path(data_dir).stat().st_mode) == 0o600
    assert read_control(data_dir) == credential and len(credential.token) >= 40
    assert find_dashboard(data_dir) is None  # a stale file of a dashboard that is gone
    with hold_data_dir(data_dir, "a dashboard on port 7860"):
        found = find_dashboard(data_dir)
        assert found is not None and found.credential == credential
        found.close()
    # Something else holds it (a restore): it takes no commands, and the CLI says so.
    credential = write_control(data_dir, "http://127.0.0.1:7860")
    other = ControlCredential(credential.url, credential.token, os.getpid() + 1)
    control_path(data_dir).write_text(json.dumps(asdict(other)))
    with hold_data_dir(data_dir, "mlx-manager restore"):
        with pytest.raises(Conflict, match="in use by mlx-manager restore .*takes no "
                                           "commands"):
            find_dashboard(data_dir)
        assert run_cli("ps", data_dir=data_dir).stdout == "No servers running.\n"
    remove_control(data_dir, credential)  # not its own any more: left in place
    assert control_path(data_dir).exists()
    remove_control(data_dir, other)
    assert not control_path(data_dir).exists()


def control_app(services: Services, token: str) -> FastAPI:
    """The dashboard's door as app.create_app sets it up, without Gradio."""
    app = FastAPI()
    app.include_router(build_control_router(services))
    app.add_middleware(SessionGate, auth=services.auth,
                       extra_auth=first_claim(control_auth(token), gateway_auth(services)))
    return app


def test_the_control_api_opens_only_to_the_token_from_this_machine_without_an_origin(
        services: Services, asgi_portal: BlockingPortal) -> None:
    token = "t" * 43
    app = control_app(services, token)

    def get(path: str, *, client: str = "127.0.0.1", host: str = "127.0.0.1",
            headers: dict[str, str] | None = None) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(client, 50000))
            async with httpx.AsyncClient(transport=transport,
                                         base_url=f"http://{host}") as http:
                response = await http.get(path, headers=headers)
                await response.aread()
                return response
        return asgi_portal.call(send)

    good = {"Authorization": f"Bearer {token}"}
    assert get("/control/servers", headers=good).json() == {"servers": []}
    # The dashboard reached by its own LAN address from the same machine.
    assert get("/control/servers", client="10.1.2.3", host="10.1.2.3",
               headers=good).status_code == 200
    for refused in (get("/control/servers"),
                    get("/control/servers", headers={"Authorization": f"Bearer {token}x"}),
                    get("/control/servers", headers={**good, "Origin": "http://evil.test"}),
                    get("/control/servers", client="10.1.2.9", host="10.1.2.3",
                        headers=good),
                    get("/control/anything", headers={"Cookie": "mlxm_session=x"})):
        assert refused.status_code == 401
        assert "only `mlx-manager` commands" in refused.text or "Not allowed" in refused.text
    unknown = get("/control/nothing", headers=good)
    assert unknown.status_code == 404


def test_start_stop_and_run_name_an_unknown_profile(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    for command in ("start", "run"):
        result = run_cli(command, "nope", data_dir=data_dir)
        assert result.returncode == 1
        assert result.stderr == "error: No profile named 'nope'.\n"

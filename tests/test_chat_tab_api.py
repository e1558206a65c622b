"""The Chat tab's endpoints through gradio_client with real sessions and a real model server:
a chat streams and is saved; owners are checked on every endpoint; a dashboard restart
brings the chat back and it goes on. (MCP settings live in the Admin tab: test_gradio_admin.)"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from manager.chat.history import NewMessage
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.servers.supervisor import ServerState
from tests.chat_helpers import ChatDashboard, chat_dashboard

pytestmark = pytest.mark.slow

ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
         ) -> Iterator[ChatDashboard]:
    with chat_dashboard(tmp_path_factory.mktemp("chat_api"), {
        "weather": ProfileSpec(name="", model=str(tiny_models["tools"])),
    }) as created:
        created.user(ALICE)  # the first account: an admin
        created.user(BOB)
        yield created


def send(client: Client, server: int, text: str, *, tools: bool = True,
         rounds: int = 5) -> tuple:
    box = {"text": text, "files": []}
    return client.predict(box, server, tools, rounds, 8, "auto", "", api_name="/chat_send")


def titles(messages: list[dict[str, Any]]) -> list[str]:
    return [(m.get("metadata") or {}).get("title", "") for m in messages]


def texts(messages: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in messages:
        content = m["content"]
        parts = content if isinstance(content, list) else [content]
        out += [p.get("text", "") if isinstance(p, dict) else str(p) for p in parts]
    return out


def test_a_chat_streams_thinking_tools_and_answer_and_is_saved(dash: ChatDashboard) -> None:
    client = dash.client(ALICE)
    weather = dash.profiles["weather"]
    status = client.predict(weather.id, "", api_name="/chat_pick_server")[1]
    assert "**weather** is ready" in status
    chatbot, box, title, sidebar, status = send(client, weather.id, "Weather in Paris?")
    assert title == "Weather in Paris?" and "Weather in Paris?" in sidebar
    shown = titles(chatbot)
    assert any(t.startswith("Thought for ") for t in shown)
    assert "🛠️ Used get_weather" in shown
    answer = next(m for m in chatbot if "It is sunny in Paris." in str(m["content"]))
    assert "tokens/s" in str(answer["content"])
    tool_panel = next(m for m in chatbot if (m.get("metadata") or {}).get("title", "")
                      .startswith("🛠️"))
    assert tool_panel["metadata"]["status"] == "done"
    assert "Sample data" in str(tool_panel["content"]) and "Paris" in str(tool_panel["content"])
    alice = dash.user(ALICE)
    (chat,) = dash.services.chats.list(alice, dash.profiles["weather"].id)
    saved = dash.services.chats.get(alice, chat.id)
    assert [m.role for m in saved.messages] == ["user", "assistant", "tool", "assistant"]
    # Retry answers the last message again, in place of the old answer.
    chatbot, _title, _sidebar, _status = client.predict(weather.id, True, 5, 8, "auto", "",
                                                       api_name="/chat_retry")
    assert "It is sunny in Paris." in str(chatbot[-1]["content"])
    assert dash.services.chats.get(alice, chat.id).summary.message_count == 2
    # The same session goes on with the same chat (its id is kept on the server).
    send(client, weather.id, "And tomorrow?")
    assert dash.services.chats.get(alice, chat.id).summary.message_count == 4


def test_another_user_cannot_read_rename_continue_export_or_delete_a_chat(
        dash: ChatDashboard) -> None:
    alice = dash.user(ALICE)
    weather = dash.profiles["weather"]
    secret = dash.services.chats.create(alice, "weather", title="Alice's secret plans")
    dash.services.chats.add_message(alice, secret.id, NewMessage("user", "top secret"))
    bob = dash.client(BOB)
    with pytest.raises(Exception, match="That chat does not exist."):
        bob.predict(str(secret.id), "", api_name="/chat_open")
    # The failed open left Bob's session without a chat: nothing to act on.
    for endpoint, args in (("/chat_rename", ("Mine now", weather.id, "")),
                           ("/chat_export_markdown", ()), ("/chat_export_json", ()),
                           ("/chat_delete", (weather.id, "")),
                           ("/chat_retry", (weather.id, True, 5, 8, "auto", ""))):
        with pytest.raises(Exception, match="Open a chat first|Nothing to retry"):
            bob.predict(*args, api_name=endpoint)
    # Bob's message starts a chat of his own; Alice's is untouched.
    send(bob, weather.id, "Hello from Bob", tools=False)
    after = dash.services.chats.get(alice, secret.id)
    assert after.summary.title == "Alice's secret plans"
    assert [m.content for m in after.messages] == ["top secret"]
    bob_user = dash.user(BOB)
    assert [c.title for c in dash.services.chats.list(bob_user)] == ["Hello from Bob"]
    sidebar = bob.predict(weather.id, "", api_name="/chat_list")
    assert "Alice" not in sidebar and "Hello from Bob" in sidebar
    found = bob.predict(weather.id, "secret", api_name="/chat_list")
    assert "data-chat" not in found and "No chats match “secret”" in found
    # Alice herself can open it.
    alice_client = dash.client(ALICE)
    chatbot, title, _sidebar, _server, _status = alice_client.predict(
        str(secret.id), "", api_name="/chat_open")
    assert title == "Alice's secret plans" and texts(chatbot) == ["top secret"]


def test_one_list_of_a_users_chats_with_a_server_filter(
        dash: ChatDashboard, tiny_models: dict[str, Path]) -> None:
    """Issue 15: history was reachable only by picking the right server first."""
    services = dash.services
    eyes = services.profiles.create(None, ProfileSpec(
        name="eyes", model=str(tiny_models["vision"]), port=free_port()))
    weather = dash.profiles["weather"]
    carol = dash.user("carol@example.com")
    services.chats.create(carol, "weather", title="Rain in Oslo?", profile_id=weather.id)
    services.chats.create(carol, "eyes", title="What colour is this?", profile_id=eyes.id)
    client = dash.client("carol@example.com")
    try:
        everything = client.predict("all", "", api_name="/chat_list")
        assert "Rain in Oslo?" in everything and "What colour is this?" in everything
        assert '<span class="mm-chat-server">eyes</span>' in everything
        only_eyes = client.predict(eyes.id, "", api_name="/chat_list")
        assert "What colour is this?" in only_eyes and "Rain in Oslo?" not in only_eyes
        # Picking a server to talk to keeps the whole list in view.
        sidebar = client.predict(weather.id, "", api_name="/chat_pick_server")[2]
        assert "Rain in Oslo?" in sidebar and "What colour is this?" in sidebar
        # Another user's chats are in neither.
        assert "Rain in Oslo?" not in dash.client(BOB).predict("all", "",
                                                              api_name="/chat_list")
    finally:
        services.profiles.delete(None, eyes.id)


def test_rename_export_and_delete_a_chat(dash: ChatDashboard, tmp_path: Path) -> None:
    alice = dash.user(ALICE)
    weather = dash.profiles["weather"]
    client = dash.client(ALICE)
    client.predict(weather.id, "", api_name="/chat_new")
    send(client, weather.id, "Plan a picnic")
    (chat,) = [c for c in dash.services.chats.list(alice) if c.title == "Plan a picnic"]
    title, sidebar = client.predict("Picnic plans", weather.id, "", api_name="/chat_rename")
    assert title == "Picnic plans" and "Picnic plans" in sidebar
    markdown = client.predict(api_name="/chat_export_markdown")
    assert markdown.startswith("# Picnic plans") and "It is sunny in Paris." in markdown
    exported = client.predict(api_name="/chat_export_json")
    data = json.loads(Path(exported).read_text())
    assert data["chat"]["title"] == "Picnic plans"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert data["messages"][1]["thinking"] == "Need weather."
    found = client.predict(weather.id, "picnic", api_name="/chat_list")
    assert "Picnic plans" in found and "Weather in Paris" not in found
    client.predict(weather.id, "", api_name="/chat_delete")
    assert chat.id not in [c.id for c in dash.services.chats.list(alice)]
    assert not (dash.services.settings.uploads_dir / "chats" / str(chat.id)).exists()


def test_a_dashboard_restart_brings_the_chat_back_and_it_goes_on(dash: ChatDashboard) -> None:
    weather = dash.profiles["weather"]
    client = dash.client(ALICE)
    client.predict(weather.id, "", api_name="/chat_new")
    before, *_ = send(client, weather.id, "Before the restart")
    alice = dash.user(ALICE)
    chat = next(c for c in dash.services.chats.list(alice) if c.title == "Before the restart")
    dash.restart()
    client = dash.client(ALICE)
    chatbot, title, _sidebar, server, status = client.predict(str(chat.id), "",
                                                              api_name="/chat_open")
    assert chatbot == before and title == "Before the restart"
    assert server["value"] == weather.id and "**weather** is ready" in status  # adopted
    after, *_ = send(client, weather.id, "After the restart")
    assert after[:len(before)] == before
    assert "It is sunny in Paris." in str(after[-1]["content"])
    assert dash.services.chats.get(dash.user(ALICE), chat.id).summary.message_count == 4


def test_picking_a_stopped_profile_starts_it_and_the_message_waits_for_it(
        dash: ChatDashboard, tiny_models: dict[str, Path]) -> None:
    services = dash.services
    profile = services.profiles.create(None, ProfileSpec(
        name="sleeper", model=str(tiny_models["thinking"]), port=free_port()))
    client = dash.client(BOB)
    try:
        _server, status, sidebar, chatbot, _title, _timer = client.predict(
            profile.id, "", api_name="/chat_pick_server")
        assert "Started **sleeper** for you: it is loading its model" in status
        # The one list of Bob's chats stays (it is not narrowed to the picked server).
        assert "No chats with sleeper" not in sidebar and chatbot == []
        assert services.supervisor.snapshot(profile.id).state in (ServerState.STARTING,
                                                                  ServerState.READY)
        # Sent while it loads: the message goes out once the server is ready.
        chatbot, *_rest, status = send(client, profile.id, "2+2?")
        assert "The answer is 4." in str(chatbot[-1]["content"])
        assert "**sleeper** is ready" in status
    finally:
        services.supervisor.stop(profile.id)


def test_a_message_to_a_server_that_cannot_start_makes_no_chat(
        dash: ChatDashboard, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """A message to a stopped server whose model was moved away, or whose port another
    program holds: the start refused it, after an empty "New chat" was made for it (one
    more with every try)."""
    services = dash.services
    model = tmp_path / "moving-model"
    model.mkdir()
    for part in tiny_models["text"].iterdir():
        (model / part.name).symlink_to(part)
    profile = services.profiles.create(None, ProfileSpec(
        name="unstartable", model=str(model), port=free_port()))
    client = dash.client(BOB)
    bob = dash.user(BOB)
    model.rename(tmp_path / "moved")
    with pytest.raises(AppError, match="No model folder"):
        send(client, profile.id, "my carefully typed question")
    (tmp_path / "moved").rename(model)
    with socket.socket() as holder:  # another program on the profile's port
        holder.bind(("127.0.0.1", profile.port))
        holder.listen()
        with pytest.raises(AppError, match="unstartable cannot start: port .* in use by "):
            send(client, profile.id, "my carefully typed question")
    assert services.chats.list(bob, profile.id) == []

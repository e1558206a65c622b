"""Saved chats against real SQLite and real files: each operation, owners, restart."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from manager.accounts.auth import User
from manager.chat.history import ChatHistory, ChatServer, NewMessage, title_from
from manager.errors import NotFound, ValidationError
from manager.servers.profiles import Profile, ProfileSpec
from manager.services import Services
from manager.settings import Settings
from manager.store import MIGRATIONS, Store
from tests.conftest import TEST_HASHER

PW = "correct horse battery"


@pytest.fixture
def history(services: Services) -> ChatHistory:
    return ChatHistory(services.store, services.settings.uploads_dir)


@pytest.fixture
def alice(services: Services) -> User:
    return services.auth.register("alice@example.com", PW)


@pytest.fixture
def bob(services: Services, alice: User) -> User:
    return services.auth.approve(alice, services.auth.register("bob@example.com", PW).id)


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    path = tmp_path / "Cat Photo.PNG"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    return path


def _conversation(history: ChatHistory, owner: User, picture: Path) -> int:
    chat = history.create(owner, "tiny-profile", model="mlx-community/tiny")
    history.add_message(owner, chat.id, NewMessage("user", "What is the weather in Paris "
                                                           "today and tomorrow please?"),
                        attachments=(picture,))
    history.add_message(owner, chat.id, NewMessage(
        "assistant", "", thinking="Need weather.", thinking_seconds=0.4,
        tool_calls=[{"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]))
    history.add_message(owner, chat.id, NewMessage(
        "tool", "Sunny, 21 °C (sample data)", tool_call_id="call_1", tool_name="get_weather"))
    history.add_message(owner, chat.id, NewMessage(
        "assistant", "It is sunny in Paris.",
        meta={"prompt_tokens": 12, "completion_tokens": 7, "tokens_per_s": 512.5}))
    return chat.id


def test_a_conversation_is_saved_exactly(history: ChatHistory, alice: User,
                                         picture: Path) -> None:
    chat_id = _conversation(history, alice, picture)
    chat = history.get(alice, chat_id)
    assert chat.summary.title == "What is the weather in Paris today and…"
    # Counted as a person sees it: one question, one answer (not the tool round).
    assert chat.summary.message_count == 2
    roles = [m.role for m in chat.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    user, call, result, answer = chat.messages
    assert [a.name for a in user.attachments] == ["Cat Photo.PNG"]
    assert user.attachments[0].path.read_bytes() == picture.read_bytes()
    assert user.attachments[0].mime == "image/png"
    assert call.thinking == "Need weather." and call.thinking_seconds == 0.4
    assert call.tool_calls[0]["function"]["name"] == "get_weather"
    assert (result.tool_call_id, result.tool_name) == ("call_1", "get_weather")
    assert answer.meta == {"prompt_tokens": 12, "completion_tokens": 7, "tokens_per_s": 512.5}


def test_a_new_app_on_the_same_data_dir_sees_the_chat(
    settings: Settings, alice: User, picture: Path
) -> None:
    first = Services.create(settings, hasher=TEST_HASHER)
    chat_id = _conversation(ChatHistory(first.store, settings.uploads_dir), alice, picture)
    first.close()
    again = Services.create(settings, hasher=TEST_HASHER)
    chat = ChatHistory(again.store, settings.uploads_dir).get(alice, chat_id)
    assert [m.content for m in chat.messages][-1] == "It is sunny in Paris."
    assert chat.messages[0].attachments[0].path.exists()
    again.close()


def _profile(services: Services, name: str, model: Path) -> Profile:
    return services.profiles.create(None, ProfileSpec(name=name, model=str(model)))


def test_lists_are_per_server_newest_first_and_searchable(
    history: ChatHistory, alice: User, services: Services, tiny_models: dict[str, Path]
) -> None:
    qwen = _profile(services, "qwen", tiny_models["text"]).id
    vision = _profile(services, "vision", tiny_models["vision"]).id
    one = history.create(alice, "qwen", profile_id=qwen)
    history.add_message(alice, one.id, NewMessage("user", "tell me about llamas"))
    two = history.create(alice, "qwen", profile_id=qwen)
    history.add_message(alice, two.id, NewMessage("user", "100% sure_thing?"))
    other = history.create(alice, "vision", profile_id=vision)
    history.add_message(alice, other.id, NewMessage("user", "describe the image"))
    history.add_message(alice, one.id, NewMessage("assistant", "Llamas are camelids."))
    assert [c.id for c in history.list(alice, qwen)] == [one.id, two.id]
    assert [c.id for c in history.list(alice, vision)] == [other.id]
    assert {c.id for c in history.list(alice)} == {one.id, two.id, other.id}
    assert [c.id for c in history.list(alice, qwen, search="camelid")] == [one.id]
    assert [c.id for c in history.list(alice, qwen, search="100%")] == [two.id]
    assert [c.id for c in history.list(alice, qwen, search="sure_")] == [two.id]
    assert [c.id for c in history.list(alice, qwen, search="%")] == [two.id]
    # Wildcards are literal: "l%s" would match "llamas" if % were a LIKE wildcard.
    assert history.list(alice, qwen, search="l%s") == []


def test_the_history_filter_lists_the_owners_servers_only(
    history: ChatHistory, alice: User, bob: User, services: Services,
    tiny_models: dict[str, Path]
) -> None:
    """Issue 15: one list of a person's chats, filterable by the servers they chatted with."""
    qwen = _profile(services, "qwen", tiny_models["text"])
    vision = _profile(services, "Vision", tiny_models["vision"])
    _profile(services, "unused", tiny_models["text"])
    for profile in (qwen, qwen, vision):
        history.create(alice, profile.name, profile_id=profile.id)
    history.create(bob, "unused", profile_id=services.profiles.find("unused").id)
    assert history.servers(alice) == (ChatServer(qwen.id, "qwen", 2),
                                      ChatServer(vision.id, "Vision", 1))
    assert [s.name for s in history.servers(bob)] == ["unused"]
    # A deleted profile's chats stay in the whole list but leave the filter.
    services.profiles.delete(None, vision.id)
    assert [s.name for s in history.servers(alice)] == ["qwen"]
    assert len(history.list(alice)) == 3


def test_a_renamed_profile_keeps_its_chats_under_its_new_name(
    alice: User, services: Services, tiny_models: dict[str, Path]
) -> None:
    profile = _profile(services, "qwen", tiny_models["text"])
    chat = services.chat_engine.start_chat(alice, profile)
    services.profiles.update(None, profile.id, replace(profile.spec(), name="Qwen tiny"))
    listed = services.chats.list(alice, profile.id)
    assert [(c.id, c.server) for c in listed] == [(chat.id, "Qwen tiny")]
    assert services.chats.get(alice, chat.id).summary.server == "Qwen tiny"
    # A profile that is deleted leaves its chats, with the name they last showed.
    services.profiles.delete(None, profile.id)
    (left,) = services.chats.list(alice)
    assert left.id == chat.id and left.profile_id is None and left.server == "qwen"


def test_the_migration_points_existing_chats_at_their_profiles_by_name(
    tmp_path: Path
) -> None:
    path = tmp_path / "old.db"
    before = next(i for i, m in enumerate(MIGRATIONS) if m.name == "0007_chats_profile_id")
    old = Store(path, MIGRATIONS[:before])
    with old.connect() as db:
        db.execute("INSERT INTO users (id, email, password_hash, role, status, created_at)"
                   " VALUES (1, 'a@example.com', 'x', 'admin', 'active', 'now')")
        db.execute("INSERT INTO profiles (id, name, model, backend, host, port, created_at,"
                   " updated_at) VALUES (7, 'Qwen', 'm', 'mlx_lm', '127.0.0.1', 8100, 'now',"
                   " 'now')")
        for chat_id, server in ((1, "Qwen"), (2, "qwen"), (3, "gone")):
            db.execute("INSERT INTO chats (id, user_id, server, title, created_at, updated_at)"
                       " VALUES (?, 1, ?, 't', 'now', 'now')", [chat_id, server])
    assert Store(path).migrate() == []  # opening it applied the new migration already
    with Store(path).connect() as db:
        rows = {r["id"]: r["profile_id"] for r in db.query("SELECT id, profile_id FROM chats")}
    assert rows == {1: 7, 2: 7, 3: None}


def test_rename_keeps_the_title_and_rejects_empty(history: ChatHistory, alice: User) -> None:
    chat = history.create(alice, "qwen")
    renamed = history.rename(alice, chat.id, "  Trip   planning ")
    assert renamed.title == "Trip planning"
    history.add_message(alice, chat.id, NewMessage("user", "first words here"))
    assert history.get(alice, chat.id).summary.title == "Trip planning"
    with pytest.raises(ValidationError):
        history.rename(alice, chat.id, "   ")


def test_delete_removes_messages_and_files(history: ChatHistory, alice: User,
                                           picture: Path, services: Services) -> None:
    chat_id = _conversation(history, alice, picture)
    stored = history.get(alice, chat_id).messages[0].attachments[0].path
    assert stored.exists()
    history.delete(alice, chat_id)
    assert not stored.exists() and not stored.parent.exists()
    with pytest.raises(NotFound):
        history.get(alice, chat_id)
    with services.store.connect() as db:
        counts = [next(db.query(f"SELECT count(*) AS n FROM {t}"))["n"]
                  for t in ("chats", "chat_messages", "chat_attachments")]
    assert counts == [0, 0, 0]


def test_truncate_drops_the_last_answer_for_retry(history: ChatHistory, alice: User,
                                                  picture: Path) -> None:
    chat_id = _conversation(history, alice, picture)
    history.truncate(alice, chat_id, 1)
    messages = history.get(alice, chat_id).messages
    assert [m.role for m in messages] == ["user"]
    again = history.add_message(alice, chat_id, NewMessage("assistant", "retry"))
    assert again.position == 1


def test_update_message_saves_a_growing_answer(history: ChatHistory, alice: User) -> None:
    chat = history.create(alice, "qwen")
    partial = history.add_message(alice, chat.id, NewMessage("assistant", "It is"))
    done = history.update_message(alice, partial.id, NewMessage(
        "assistant", "It is sunny.", thinking="t", meta={"completion_tokens": 3}))
    assert (done.content, done.thinking, done.meta) == ("It is sunny.", "t",
                                                         {"completion_tokens": 3})


def test_another_user_cannot_touch_a_chat_by_id(
    history: ChatHistory, alice: User, bob: User, picture: Path
) -> None:
    chat_id = _conversation(history, alice, picture)
    message_id = history.get(alice, chat_id).messages[-1].id
    attempts = {
        "read": lambda: history.get(bob, chat_id),
        "rename": lambda: history.rename(bob, chat_id, "mine now"),
        "continue": lambda: history.add_message(bob, chat_id, NewMessage("user", "hijack")),
        "edit": lambda: history.update_message(bob, message_id, NewMessage("assistant", "x")),
        "truncate": lambda: history.truncate(bob, chat_id, 0),
        "export markdown": lambda: history.export_markdown(bob, chat_id),
        "export json": lambda: history.export_json(bob, chat_id),
        "delete": lambda: history.delete(bob, chat_id),
    }
    for name, attempt in attempts.items():
        with pytest.raises(NotFound, match="does not exist"):
            attempt()
        assert name  # each attempt above raised
    assert history.list(bob) == []
    chat = history.get(alice, chat_id)
    assert chat.summary.title.startswith("What is the weather")
    assert len(chat.messages) == 4 and chat.messages[-1].content == "It is sunny in Paris."
    assert chat.messages[0].attachments[0].path.exists()


def test_exports(history: ChatHistory, alice: User, picture: Path) -> None:
    chat_id = _conversation(history, alice, picture)
    markdown = history.export_markdown(alice, chat_id)
    assert markdown.startswith("# What is the weather in Paris")
    assert "> *Thinking*" in markdown and "> Need weather." in markdown
    assert "*Called `get_weather` with `{\"city\": \"Paris\"}`*" in markdown
    assert "**Tool result (get_weather)**" in markdown
    assert "It is sunny in Paris." in markdown and "Attachment: Cat Photo.PNG" in markdown
    exported = history.export_json(alice, chat_id)
    text = json.dumps(exported)
    assert json.loads(text)["messages"][1]["thinking"] == "Need weather."
    assert exported["messages"][0]["attachments"] == [
        {"name": "Cat Photo.PNG", "mime": "image/png", "size": picture.stat().st_size}]
    assert exported["chat"]["server"] == "tiny-profile"


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("hello", "hello"),
        ("  spaced   out  ", "spaced out"),
        ("one two three four five six seven eight nine", "one two three four five six seven "
                                                         "eight…"),
        ("x" * 80, "x" * 60 + "…"),
        ("", "New chat"),
    ],
)
def test_titles_are_the_first_words(text: str, title: str) -> None:
    assert title_from(text) == title


def test_missing_attachment_is_a_clear_error(history: ChatHistory, alice: User,
                                             tmp_path: Path) -> None:
    chat = history.create(alice, "qwen")
    with pytest.raises(ValidationError, match="no longer there"):
        history.add_message(alice, chat.id, NewMessage("user", "see file"),
                            attachments=(tmp_path / "gone.png",))
    assert history.get(alice, chat.id).messages == ()

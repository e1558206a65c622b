"""SQLite under concurrent writers: one real database file, many threads at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from manager.accounts.api_keys import ApiKeyService
from manager.accounts.auth import AuthService, User
from manager.chat.history import ChatHistory, NewMessage
from manager.store import Store

PW = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "manager.db")


def _run_at_once(jobs: list[Callable[[], object]]) -> list[BaseException]:
    """Runs every job on its own thread, all released together; returns the errors."""
    gate = threading.Barrier(len(jobs))

    def run(job: Callable[[], object]) -> BaseException | None:
        gate.wait()
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - the test reports every failure
            return exc
        return None

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    return [exc for exc in results if exc is not None]


def test_keys_chat_saves_and_logins_at_once_lose_nothing(store: Store, tmp_path: Path) -> None:
    # Cheap hashes: the point is the database, not argon2's cost.
    auth = AuthService(store, b"k" * 32,
                       hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    keys = ApiKeyService(store, auth)
    chats = ChatHistory(store, tmp_path / "uploads")
    users: list[User] = [auth.add_user(f"user{i}@example.com", PW) for i in range(10)]
    owner = users[0]
    chat_ids = [chats.create(owner, "srv").id for _ in range(20)]

    def save_chat(chat_id: int) -> None:
        chats.add_message(owner, chat_id, NewMessage("user", "hello"))
        answer = chats.add_message(owner, chat_id, NewMessage("assistant", "…"))
        chats.update_message(owner, answer.id, NewMessage("assistant", "hello there"))

    def login(user: User) -> None:
        signed_in = auth.authenticate(user.email, PW, "10.0.0.9")
        auth.issue_session(signed_in)

    jobs: list[Callable[[], object]] = []
    jobs += [lambda i=i: keys.create(users[i % 10], f"key {i}") for i in range(30)]
    jobs += [lambda c=c: save_chat(c) for c in chat_ids]
    jobs += [lambda u=u: login(u) for u in users]

    errors = _run_at_once(jobs)

    assert errors == []
    with store.connect() as db:
        assert next(db.query("SELECT count(*) AS n FROM api_keys"))["n"] == 30
        assert next(db.query("SELECT count(*) AS n FROM chat_messages"))["n"] == 40
        assert next(db.query(
            "SELECT count(*) AS n FROM chat_messages WHERE content = 'hello there'"))["n"] == 20
        assert next(db.query(
            "SELECT count(*) AS n FROM users WHERE last_login_at IS NOT NULL"))["n"] == 10


def test_read_then_write_units_take_the_write_lock_up_front(store: Store) -> None:
    """A unit that reads and then writes must not fail when another writer commits
    between its read and its write (a deferred transaction would get SQLITE_BUSY)."""
    with store.connect() as db:
        db.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        db.execute("INSERT INTO counter (n) VALUES (0)")

    def bump() -> None:
        with store.connect() as db:
            n = next(db.query("SELECT n FROM counter"))["n"]
            db.execute("UPDATE counter SET n = ?", [n + 1])

    assert _run_at_once([bump] * 40) == []
    with store.connect() as db:
        assert next(db.query("SELECT n FROM counter"))["n"] == 40

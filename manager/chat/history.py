"""Saved chats: per user (one list, filterable by server), with thinking, tool calls,
attachments and timings.

A chat points at its server's profile by id, so renaming the profile keeps its chats
(they show the profile's current name); the name it was started with stays for chats
whose profile was deleted.

Every read and write names the owner in its SQL, so a chat id from another user's
browser finds nothing: the answer is the same "not found" as for an id that never existed.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manager.accounts.auth import User
from manager.clock import utc_now
from manager.errors import NotFound, ValidationError
from manager.store import Store

log = logging.getLogger(__name__)

TITLE_WORDS = 8
TITLE_CHARS = 60
MAX_TITLE = 120
ROLES = ("user", "assistant", "tool", "system")


@dataclass(frozen=True)
class Attachment:
    id: int
    path: Path  # absolute, under the uploads dir
    name: str  # the name the user gave the file
    mime: str
    size: int


@dataclass(frozen=True)
class NewMessage:
    """What the chat hands over to be saved; every field but role and content is optional."""

    role: str
    content: str = ""
    thinking: str | None = None
    thinking_seconds: float | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    # Token counts, tokens/s, time to first token, model, notes such as "4 frames sent".
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    id: int
    chat_id: int
    position: int
    role: str
    content: str
    thinking: str | None
    thinking_seconds: float | None
    tool_calls: list[dict[str, Any]]
    tool_call_id: str | None
    tool_name: str | None
    meta: dict[str, Any]
    attachments: tuple[Attachment, ...]
    created_at: str


@dataclass(frozen=True)
class ChatSummary:
    id: int
    title: str
    server: str  # the profile's current name (the name at creation if it is gone)
    model: str
    created_at: str
    updated_at: str
    message_count: int
    profile_id: int | None = None


@dataclass(frozen=True)
class ChatServer:
    """A server (profile) the owner has chats with, for the history's server filter."""

    profile_id: int
    name: str
    chats: int


@dataclass(frozen=True)
class Chat:
    summary: ChatSummary
    messages: tuple[Message, ...]

    @property
    def id(self) -> int:
        return self.summary.id


def title_from(text: str) -> str:
    """The first words of the first message, short enough for a sidebar."""
    words = text.split()
    if not words:
        return "New chat"
    title = " ".join(words[:TITLE_WORDS])
    if len(title) > TITLE_CHARS:
        title = title[:TITLE_CHARS].rsplit(" ", 1)[0]
    return title if title == " ".join(words) else title + "…"


# A chat's row, its profile's current name and its message count as a person sees it:
# questions and answers (not system prompts, tool results or tool-call-only rounds).
_SUMMARY_SQL = (
    "SELECT chats.*, coalesce(p.name, chats.server) AS server_name,"
    " (SELECT count(*) FROM chat_messages m WHERE m.chat_id = chats.id AND (m.role = 'user'"
    " OR (m.role = 'assistant' AND (m.content != '' OR m.tool_calls = '[]')))) AS message_count"
    " FROM chats LEFT JOIN profiles p ON p.id = chats.profile_id"
)


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ChatHistory:
    def __init__(self, store: Store, uploads_dir: Path) -> None:
        self._store = store
        self._files = uploads_dir / "chats"

    # --- chats -------------------------------------------------------------------------

    def create(self, owner: User, server: str, model: str = "", title: str = "", *,
               profile_id: int | None = None) -> ChatSummary:
        """A new chat on the server of profile `profile_id`, currently named `server`."""
        now = utc_now()
        with self._store.connect() as db:
            db.execute(
                "INSERT INTO chats (user_id, server, profile_id, model, title, custom_title,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [owner.id, server, profile_id, model, title.strip()[:MAX_TITLE] or "New chat",
                 1 if title.strip() else 0, now, now],
            )
            chat_id = next(db.query("SELECT last_insert_rowid() AS id"))["id"]
        return self._summary(owner, chat_id)

    def list(self, owner: User, profile_id: int | None = None,
             search: str = "") -> list[ChatSummary]:
        """The owner's chats, newest first, for one profile's server (or all), matching
        `search`."""
        sql = [_SUMMARY_SQL, "WHERE chats.user_id = ?"]
        params: list[Any] = [owner.id]
        if profile_id is not None:
            sql.append("AND chats.profile_id = ?")
            params.append(profile_id)
        if search.strip():
            sql.append(
                "AND (chats.title LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM chat_messages m"
                " WHERE m.chat_id = chats.id AND m.content LIKE ? ESCAPE '\\'))"
            )
            params += [_like(search.strip())] * 2
        sql.append("ORDER BY chats.updated_at DESC, chats.id DESC")
        with self._store.reading() as db:
            return [self._to_summary(row) for row in db.query(" ".join(sql), params)]

    def servers(self, owner: User) -> tuple[ChatServer, ...]:
        """The servers the owner has chats with, by name (chats whose profile was deleted
        are only in the unfiltered list)."""
        with self._store.reading() as db:
            rows = db.query(
                "SELECT p.id AS profile_id, p.name AS name, count(*) AS chats FROM chats"
                " JOIN profiles p ON p.id = chats.profile_id WHERE chats.user_id = ?"
                " GROUP BY p.id ORDER BY p.name COLLATE NOCASE, p.id", [owner.id])
            return tuple(ChatServer(row["profile_id"], row["name"], row["chats"])
                         for row in rows)

    def get(self, owner: User, chat_id: int) -> Chat:
        summary = self._summary(owner, chat_id)
        with self._store.reading() as db:
            rows = list(db.query(
                "SELECT * FROM chat_messages WHERE chat_id = ? ORDER BY position", [chat_id]))
            files = list(db.query(
                "SELECT * FROM chat_attachments WHERE chat_id = ? ORDER BY id", [chat_id]))
        by_message: dict[int, list[Attachment]] = {}
        for row in files:
            by_message.setdefault(row["message_id"], []).append(self._to_attachment(row))
        messages = tuple(self._to_message(row, by_message.get(row["id"], [])) for row in rows)
        return Chat(summary, messages)

    def rename(self, owner: User, chat_id: int, title: str) -> ChatSummary:
        clean = " ".join(title.split())
        if not clean:
            raise ValidationError("A chat needs a title.", "title")
        if len(clean) > MAX_TITLE:
            raise ValidationError(f"Titles are at most {MAX_TITLE} characters.", "title")
        self._summary(owner, chat_id)
        with self._store.connect() as db:
            db.execute(
                "UPDATE chats SET title = ?, custom_title = 1 WHERE id = ? AND user_id = ?",
                [clean, chat_id, owner.id],
            )
        return self._summary(owner, chat_id)

    def delete(self, owner: User, chat_id: int) -> None:
        """Removes the chat, its messages and its files from disk."""
        self._summary(owner, chat_id)
        with self._store.connect() as db:
            db.execute("DELETE FROM chats WHERE id = ? AND user_id = ?", [chat_id, owner.id])
        folder = self._files / str(chat_id)
        if folder.exists():
            shutil.rmtree(folder)
        log.info("chat %s of %s deleted", chat_id, owner.email)

    # --- messages ----------------------------------------------------------------------

    def add_message(self, owner: User, chat_id: int, message: NewMessage,
                    attachments: tuple[Path, ...] = ()) -> Message:
        """Saves one message (and copies its attachments under the data dir)."""
        if message.role not in ROLES:
            raise ValidationError(f"Unknown message role {message.role!r}.")
        summary = self._summary(owner, chat_id)
        now = utc_now()
        copies = [self._copy_in(chat_id, path) for path in attachments]
        with self._store.connect(immediate=True) as db:
            position = next(db.query(
                "SELECT coalesce(max(position), -1) + 1 AS p FROM chat_messages WHERE chat_id = ?",
                [chat_id]))["p"]
            db.execute(
                "INSERT INTO chat_messages (chat_id, position, role, content, thinking,"
                " thinking_seconds, tool_calls, tool_call_id, tool_name, meta, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [chat_id, position, message.role, message.content, message.thinking,
                 message.thinking_seconds, json.dumps(message.tool_calls),
                 message.tool_call_id, message.tool_name, json.dumps(message.meta), now],
            )
            message_id = next(db.query("SELECT last_insert_rowid() AS id"))["id"]
            for stored, original, mime, size in copies:
                db.execute(
                    "INSERT INTO chat_attachments (chat_id, message_id, path, name, mime, size)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [chat_id, message_id, stored, original, mime, size],
                )
            updates: list[Any] = [now]
            title_sql = ""
            if message.role == "user" and summary.message_count == 0 and \
                    not self._has_custom_title(db, chat_id):
                title_sql = ", title = ?"
                updates.append(title_from(message.content))
            db.execute(f"UPDATE chats SET updated_at = ?{title_sql} WHERE id = ?",
                       [*updates, chat_id])
        return self._message(owner, chat_id, message_id)

    def update_message(self, owner: User, message_id: int, message: NewMessage) -> Message:
        """Replaces a message's content in place (a streaming answer saved as it grows)."""
        with self._store.connect() as db:
            rows = list(db.query(
                "SELECT m.chat_id FROM chat_messages m JOIN chats c ON c.id = m.chat_id"
                " WHERE m.id = ? AND c.user_id = ?", [message_id, owner.id]))
            if not rows:
                raise NotFound("That message does not exist.")
            db.execute(
                "UPDATE chat_messages SET content = ?, thinking = ?, thinking_seconds = ?,"
                " tool_calls = ?, meta = ? WHERE id = ?",
                [message.content, message.thinking, message.thinking_seconds,
                 json.dumps(message.tool_calls), json.dumps(message.meta), message_id],
            )
            db.execute("UPDATE chats SET updated_at = ? WHERE id = ?",
                       [utc_now(), rows[0]["chat_id"]])
        return self._message(owner, rows[0]["chat_id"], message_id)

    def truncate(self, owner: User, chat_id: int, keep: int) -> None:
        """Keeps the first `keep` messages (Retry drops the last answer and asks again)."""
        self._summary(owner, chat_id)
        with self._store.connect() as db:
            gone = list(db.query(
                "SELECT path FROM chat_attachments WHERE message_id IN (SELECT id FROM"
                " chat_messages WHERE chat_id = ? AND position >= ?)", [chat_id, keep]))
            db.execute("DELETE FROM chat_messages WHERE chat_id = ? AND position >= ?",
                       [chat_id, keep])
        for row in gone:
            Path(row["path"]).unlink(missing_ok=True)

    # --- export ------------------------------------------------------------------------

    def export_json(self, owner: User, chat_id: int) -> dict[str, Any]:
        chat = self.get(owner, chat_id)
        return {
            "chat": asdict(chat.summary),
            "messages": [
                {**{k: v for k, v in asdict(m).items() if k != "attachments"},
                 "attachments": [{"name": a.name, "mime": a.mime, "size": a.size}
                                 for a in m.attachments]}
                for m in chat.messages
            ],
        }

    def export_markdown(self, owner: User, chat_id: int) -> str:
        chat = self.get(owner, chat_id)
        return chat_to_markdown(chat)

    # --- internals ---------------------------------------------------------------------

    def _copy_in(self, chat_id: int, source: Path) -> tuple[str, str, str, int]:
        if not source.is_file():
            raise ValidationError(f"The attachment {source.name} is no longer there.")
        folder = self._files / str(chat_id)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{uuid.uuid4().hex}{source.suffix.lower()}"
        shutil.copyfile(source, target)
        mime = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        return str(target), source.name, mime, target.stat().st_size

    def _has_custom_title(self, db: Any, chat_id: int) -> bool:
        return bool(next(db.query("SELECT custom_title FROM chats WHERE id = ?",
                                  [chat_id]))["custom_title"])

    def _summary(self, owner: User, chat_id: int) -> ChatSummary:
        with self._store.reading() as db:
            rows = list(db.query(f"{_SUMMARY_SQL} WHERE chats.id = ? AND chats.user_id = ?",
                                 [chat_id, owner.id]))
        if not rows:
            raise NotFound("That chat does not exist.")
        return self._to_summary(rows[0])

    def _message(self, owner: User, chat_id: int, message_id: int) -> Message:
        chat = self.get(owner, chat_id)
        return next(m for m in chat.messages if m.id == message_id)

    @staticmethod
    def _to_summary(row: dict[str, Any]) -> ChatSummary:
        return ChatSummary(id=row["id"], title=row["title"], server=row["server_name"],
                           model=row["model"], created_at=row["created_at"],
                           updated_at=row["updated_at"], message_count=row["message_count"],
                           profile_id=row["profile_id"])

    @staticmethod
    def _to_attachment(row: dict[str, Any]) -> Attachment:
        return Attachment(id=row["id"], path=Path(row["path"]), name=row["name"],
                          mime=row["mime"], size=row["size"])

    @staticmethod
    def _to_message(row: dict[str, Any], attachments: Sequence[Attachment]) -> Message:
        return Message(
            id=row["id"], chat_id=row["chat_id"], position=row["position"], role=row["role"],
            content=row["content"], thinking=row["thinking"],
            thinking_seconds=row["thinking_seconds"],
            tool_calls=json.loads(row["tool_calls"] or "[]"),
            tool_call_id=row["tool_call_id"], tool_name=row["tool_name"],
            meta=json.loads(row["meta"] or "{}"), attachments=tuple(attachments),
            created_at=row["created_at"],
        )


def chat_to_markdown(chat: Chat) -> str:
    """A readable transcript: thinking and tool calls as quoted, labelled sections."""
    lines = [f"# {chat.summary.title}", "",
             f"*Server: {chat.summary.server or 'n/a'} · Model: {chat.summary.model or 'n/a'}"
             f" · Started {chat.summary.created_at}*", ""]
    for m in chat.messages:
        if m.role == "tool":
            lines += [f"**Tool result ({m.tool_name or 'tool'})**", "", "```", m.content, "```",
                      ""]
            continue
        lines += [f"**{m.role.capitalize()}**", ""]
        if m.thinking:
            quoted = "\n".join("> " + line for line in m.thinking.splitlines())
            lines += ["> *Thinking*", ">", quoted, ""]
        if m.content:
            lines += [m.content, ""]
        for call in m.tool_calls:
            function = call.get("function", call)
            lines += [f"*Called `{function.get('name', '?')}` with "
                      f"`{function.get('arguments', '')}`*", ""]
        for a in m.attachments:
            lines += [f"*Attachment: {a.name} ({a.mime})*", ""]
    return "\n".join(lines).rstrip() + "\n"

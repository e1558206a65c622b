"""A chat history kept in memory for one check scenario.

The check drives the real `ChatEngine` (the Chat tab's tool loop, MCP client and
built-in MCP server), which saves every message as it goes. A scenario's turn is not a
chat anybody wrote, so it must not land in anyone's chat list: this history keeps the
turn's messages in memory instead, and the check reads its transcript from the events.
It implements the methods the engine calls on a `ChatHistory`; nothing else.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

from manager.accounts.auth import User
from manager.chat.history import Chat, ChatHistory, ChatSummary, Message, NewMessage
from manager.clock import utc_now
from manager.errors import NotFound, ValidationError


class ScratchHistory(ChatHistory):
    """One in-memory chat per `create`; thread-safe; forgotten with the object."""

    def __init__(self) -> None:  # no store: nothing is written to SQLite
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._chats: dict[int, ChatSummary] = {}
        self._messages: dict[int, list[Message]] = {}

    def create(self, owner: User, server: str, model: str = "", title: str = "", *,
               profile_id: int | None = None) -> ChatSummary:
        now = utc_now()
        with self._lock:
            chat_id = next(self._ids)
            summary = ChatSummary(chat_id, title or "Tool check", server, model, now, now, 0,
                                  profile_id)
            self._chats[chat_id] = summary
            self._messages[chat_id] = []
        return summary

    def get(self, owner: User, chat_id: int) -> Chat:
        with self._lock:
            if chat_id not in self._chats:
                raise NotFound("That check chat does not exist.")
            return Chat(self._chats[chat_id], tuple(self._messages[chat_id]))

    def add_message(self, owner: User, chat_id: int, message: NewMessage,
                    attachments: tuple[Path, ...] = ()) -> Message:
        if attachments:
            raise ValidationError("A tool check sends no attachments.")
        with self._lock:
            if chat_id not in self._messages:
                raise NotFound("That check chat does not exist.")
            messages = self._messages[chat_id]
            saved = self._made(next(self._ids), chat_id, len(messages), message)
            messages.append(saved)
            return saved

    def update_message(self, owner: User, message_id: int, message: NewMessage) -> Message:
        with self._lock:
            for messages in self._messages.values():
                for index, old in enumerate(messages):
                    if old.id == message_id:
                        messages[index] = self._made(old.id, old.chat_id, old.position,
                                                        message)
                        return messages[index]
        raise NotFound("That message does not exist.")

    def truncate(self, owner: User, chat_id: int, keep: int) -> None:
        with self._lock:
            del self._messages[chat_id][keep:]

    @staticmethod
    def _made(message_id: int, chat_id: int, position: int, message: NewMessage
                 ) -> Message:
        return Message(message_id, chat_id, position, message.role, message.content,
                       message.thinking, message.thinking_seconds, list(message.tool_calls),
                       message.tool_call_id, message.tool_name, dict(message.meta), (),
                       utc_now())

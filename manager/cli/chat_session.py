"""Terminal chats (`mlx-manager run PROFILE`): the Chat tab's own turn (ChatEngine: the
thinking parser, the MCP tools, the tool loop), with the chat kept in memory, not saved
in anyone's chat list, like `ollama run`.

`TerminalChats` runs in whichever process owns the servers: the CLI itself when no
dashboard runs, else the dashboard (its control API streams the events as JSON lines,
`event_json` / `event_from_json`), so a turn uses the dashboard's supervisor and tools.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from manager.accounts.auth import Role, Status, User
from manager.chat.engine import ChatEngine
from manager.chat.events import (
    AnswerStats,
    ChatEvent,
    ChatEventKind,
    ChatOptions,
    EventStream,
    ToolCall,
    ToolOutcome,
)
from manager.chat.toolcheck.scratch import ScratchHistory
from manager.errors import NotFound
from manager.servers.profiles import Profile
from manager.services import Services

log = logging.getLogger(__name__)

#: The owner of terminal chats: the machine's owner (the same rights as other CLI
#: commands, actor None); the in-memory history never stores it.
TERMINAL_OWNER = User(0, "terminal", Role.ADMIN, Status.ACTIVE, 0, "", None, None)
#: Terminal chats a dashboard keeps at most (the oldest goes first); a chat is dropped
#: when its terminal leaves.
MAX_CHATS = 32
TOOLS_ON = ChatOptions(tools=True)


class _Chat:
    def __init__(self, services: Services, profile: Profile) -> None:
        self.profile = profile
        self.engine = ChatEngine(chats=ScratchHistory(), inference=services.inference,
                                 tools=services.tools, supervisor=services.supervisor,
                                 profiles=services.profiles)
        self.chat_id = self.engine.start_chat(TERMINAL_OWNER, profile).id


class TerminalChats:
    """Chats held in memory by id; thread-safe."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._chats: OrderedDict[int, _Chat] = OrderedDict()

    def open(self, profile: Profile) -> int:
        chat = _Chat(self._services, profile)
        with self._lock:
            chat_id = next(self._ids)
            self._chats[chat_id] = chat
            while len(self._chats) > MAX_CHATS:
                self._chats.popitem(last=False)
        return chat_id

    def turn(self, chat_id: int, text: str) -> EventStream:
        """The answer to `text` as events; close the generator to stop it."""
        with self._lock:
            chat = self._chats.get(chat_id)
        if chat is None:
            raise NotFound("That terminal chat is gone (the dashboard restarted, or it "
                           "was idle while many others opened). Run the command again.")
        return chat.engine.turn(TERMINAL_OWNER, chat.chat_id, chat.profile.id, text,
                                options=TOOLS_ON)

    def close(self, chat_id: int) -> None:
        with self._lock:
            self._chats.pop(chat_id, None)


# --- the wire: one JSON object per event --------------------------------------------------


def event_json(event: ChatEvent) -> dict[str, Any]:
    """What a terminal shows of an event (saved messages stay in the dashboard)."""
    out: dict[str, Any] = {"kind": event.kind.value}
    if event.text:
        out["text"] = event.text
    if event.seconds is not None:
        out["seconds"] = event.seconds
    if not event.finished:
        out["finished"] = False
    if event.round:
        out["round"] = event.round
    if event.call is not None:
        out["call"] = {"id": event.call.id, "name": event.call.name,
                       "arguments": event.call.arguments}
    if event.outcome is not None:
        out["outcome"] = {"status": event.outcome.status, "text": event.outcome.text,
                          "seconds": event.outcome.seconds}
    if event.stats is not None:
        out["stats"] = event.stats.meta()
    return out


def event_from_json(data: Mapping[str, Any]) -> ChatEvent:
    call = data.get("call")
    outcome = data.get("outcome")
    return ChatEvent(
        ChatEventKind(data["kind"]), text=str(data.get("text") or ""),
        seconds=data.get("seconds"), finished=bool(data.get("finished", True)),
        round=int(data.get("round") or 0),
        call=ToolCall(str(call.get("id") or ""), str(call.get("name") or ""),
                      str(call.get("arguments") or "")) if isinstance(call, Mapping) else None,
        outcome=ToolOutcome(str(outcome.get("status") or ""), str(outcome.get("text") or ""),
                            outcome.get("seconds")) if isinstance(outcome, Mapping) else None,
        stats=AnswerStats.from_meta(data.get("stats")))

"""One gateway request as the gateway handles it: its route's kind and what was read of
it (gateway.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from manager.accounts.auth import User
from manager.api import ollama_flow
from manager.api.responses_routes import Prepared
from manager.api.wire import ApiFormat


class Kind(enum.Enum):
    CHAT = "chat"
    COMPLETION = "completion"
    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    RESPONSES = "responses"
    OLLAMA_CHAT = "ollama_chat"  # manager/api/ollama_flow.py
    OLLAMA_GENERATE = "ollama_generate"


OLLAMA = (Kind.OLLAMA_CHAT, Kind.OLLAMA_GENERATE)


@dataclass(frozen=True)
class Job:
    """A request read and checked: its kind, its key's user, the model it names."""

    kind: Kind
    user: User
    model: str
    body: dict[str, Any]
    size: int = 0  # bytes of the request body
    #: A Responses request made ready (its body is then the chat request to send).
    responses: Prepared | None = None
    received_ns: int = 0  # perf_counter_ns when it arrived (Ollama's durations)

    @property
    def fmt(self) -> ApiFormat:
        if self.kind in OLLAMA:
            return ApiFormat.OLLAMA
        return ApiFormat.ANTHROPIC if self.kind in (Kind.MESSAGES, Kind.COUNT_TOKENS) \
            else ApiFormat.OPENAI

    @property
    def generate(self) -> bool:
        return self.kind is Kind.OLLAMA_GENERATE

    @property
    def completion(self) -> bool:
        """Sent to the server's /v1/completions (a prompt, no messages)."""
        return self.kind is Kind.COMPLETION or ollama_flow.raw(self.generate, self.body)

    def streams(self) -> bool:
        if self.kind in OLLAMA:
            return ollama_flow.streams(self.generate, self.body)
        return bool(self.body.get("stream")) and self.kind is not Kind.COUNT_TOKENS

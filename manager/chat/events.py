"""What a chat turn is made of and what it yields to a UI: options, tool calls and their
outcomes, answer statistics and the stream of events."""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from manager.chat.attachments import DEFAULT_LIMITS, AttachmentLimits
from manager.chat.history import Message
from manager.chat.toolset import ToolResult
from manager.errors import ValidationError
from manager.servers.metering import RateBasis, RequestStats
from manager.servers.profiles import Profile

DEFAULT_MAX_TOOL_ROUNDS = 5
MAX_TOOL_ROUNDS = 50
MAX_FRAMES = 64


class VideoMode(str, Enum):
    AUTO = "auto"  # native video where the model and server read it, frames otherwise
    FRAMES = "frames"  # always frames as images
    NATIVE = "native"  # always the video itself (refused where it cannot work)


class AttachmentKind(str, Enum):
    IMAGE = "image"
    VIDEO = "video"


@dataclass(frozen=True)
class ChatOptions:
    tools: bool = True
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    max_frames: int = DEFAULT_LIMITS.max_frames
    video_mode: VideoMode = VideoMode.AUTO
    limits: AttachmentLimits = DEFAULT_LIMITS
    #: Seconds one tool call may take; None = the toolbox default.
    tool_timeout: float | None = None
    #: Sampling fixed for every request of the turn (None = the profile's default); the
    #: tool-use check runs at temperature 0 with a fixed seed and a token cap.
    temperature: float | None = None
    seed: int | None = None
    max_tokens: int | None = None

    def sampling(self) -> dict[str, Any]:
        """The request fields these options set."""
        fixed = {"temperature": self.temperature, "seed": self.seed,
                 "max_tokens": self.max_tokens}
        return {k: v for k, v in fixed.items() if v is not None}

    def checked(self) -> ChatOptions:
        if not 1 <= self.max_tool_rounds <= MAX_TOOL_ROUNDS:
            raise ValidationError(f"Max tool rounds must be between 1 and {MAX_TOOL_ROUNDS}.",
                                  "max_tool_rounds")
        if not 1 <= self.max_frames <= MAX_FRAMES:
            raise ValidationError(f"Video frames must be between 1 and {MAX_FRAMES}.",
                                  "max_frames")
        return self


#: The options of a turn nobody changed (a shared default: ChatOptions is frozen).
DEFAULT_OPTIONS = ChatOptions()


class ChatEventKind(str, Enum):
    USER = "user"  # the user's message was saved (`message`)
    NOTE = "note"  # something worth saying that is not the model's (`text`; `message`
    # when it is saved with the user's message, else with the reply that follows)
    ROUND = "round"  # a request to the model starts (`round`, from 1)
    THINKING_STARTED = "thinking_started"
    THINKING = "thinking"  # thinking text delta
    THINKING_ENDED = "thinking_ended"  # `seconds` thought so far; `finished` False if cut off
    RECLASSIFIED = "reclassified"  # the answer so far (`text`) was thinking: move it
    ANSWER = "answer"  # answer text delta
    TOOL_STARTED = "tool_started"  # `call`
    TOOL_FINISHED = "tool_finished"  # `call`, `outcome`
    STATS = "stats"  # `stats` of the request that just ended
    SAVED = "saved"  # an assistant or tool message was saved (`message`)
    ERROR = "error"  # the turn ended early (`text` says why)
    DONE = "done"  # the turn is over (also after an error)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}

    @classmethod
    def from_openai(cls, call: Mapping[str, Any]) -> ToolCall:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        return cls(id=str(call.get("id") or ""), name=str(function.get("name") or ""),
                   arguments=arguments)


NOT_RUN = "not_run"


@dataclass(frozen=True)
class ToolOutcome:
    """What became of one tool call: a CallStatus value, or NOT_RUN at the round limit."""

    status: str
    text: str
    seconds: float | None = None
    server: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def of(cls, result: ToolResult) -> ToolOutcome:
        return cls(result.status.value, result.text, result.seconds, result.server)


@dataclass(frozen=True)
class AnswerStats:
    """Token figures of one request, as the inference client measured them; `rate_basis`
    says where tokens/s came from (measured here, the server's figure, or chunks)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None
    ttft_s: float | None = None
    duration_s: float | None = None
    rate_basis: str = RateBasis.MEASURED.value

    @classmethod
    def of(cls, stats: RequestStats) -> AnswerStats:
        return cls(stats.prompt_tokens, stats.completion_tokens, stats.tokens_per_s,
                   stats.ttft_s, stats.duration_s, stats.rate_basis.value)

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt_tokens": self.prompt_tokens,
                               "completion_tokens": self.completion_tokens,
                               "tokens_per_s": self.tokens_per_s, "ttft_s": self.ttft_s,
                               "duration_s": self.duration_s}
        if self.rate_basis != RateBasis.MEASURED.value:
            out["rate_basis"] = self.rate_basis
        return out

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> AnswerStats | None:
        if not isinstance(meta, Mapping):
            return None
        return cls(meta.get("prompt_tokens"), meta.get("completion_tokens"),
                   meta.get("tokens_per_s"), meta.get("ttft_s"), meta.get("duration_s"),
                   str(meta.get("rate_basis") or RateBasis.MEASURED.value))

    def label(self) -> str:
        """"12 prompt + 20 answer tokens · 340.2 tokens/s · first token 0.05 s"; n/a if
        unknown; a rate not measured here says whose it is."""
        def count(n: int | None) -> str:
            return "n/a" if n is None else str(n)

        rate = "n/a tokens/s" if self.tokens_per_s is None else \
            f"{self.tokens_per_s:.1f} tokens/s"
        if self.tokens_per_s is not None and self.rate_basis == RateBasis.SERVER.value:
            rate += " (the server's figure)"
        elif self.tokens_per_s is not None and self.rate_basis == RateBasis.CHUNKS.value:
            rate = (f"{self.tokens_per_s:.1f} chunks/s (the server sent no token count; "
                    "a chunk is about a token)")
        ttft = "n/a" if self.ttft_s is None else f"{self.ttft_s:.2f} s"
        return (f"{count(self.prompt_tokens)} prompt + {count(self.completion_tokens)} answer "
                f"tokens · {rate} · first token {ttft}")


@dataclass(frozen=True)
class ChatEvent:
    kind: ChatEventKind
    text: str = ""
    seconds: float | None = None
    finished: bool = True
    round: int = 0
    call: ToolCall | None = None
    outcome: ToolOutcome | None = None
    stats: AnswerStats | None = None
    message: Message | None = None


# A generator, not just an iterator: the chat tab closes it to stop a turn early.
EventStream = Generator[ChatEvent, None, None]


@dataclass(frozen=True)
class PreparedMessage:
    """A user message that passed the checks, ready to be saved and sent."""

    profile: Profile
    text: str
    attachments: tuple[Path, ...]
    kinds: tuple[AttachmentKind, ...]
    notes: tuple[str, ...]
    #: Parts made while checking (None for a native video); reused once the files are saved.
    parts: tuple[tuple[dict[str, Any], ...] | None, ...] = field(default=(), repr=False)

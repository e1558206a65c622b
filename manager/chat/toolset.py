"""What the toolbox hands the chat: the tools a model may call, the servers that could
not be reached, and the outcome of one call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it (`name`) and where it lives (`server`, `tool`)."""

    name: str
    server: str
    tool: str
    description: str
    parameters: Mapping[str, Any] = field(hash=False)
    title: str | None = None

    def openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": dict(self.parameters)}}


@dataclass(frozen=True)
class ServerProblem:
    server: str
    message: str


@dataclass(frozen=True)
class Toolset:
    tools: tuple[ToolSpec, ...]
    problems: tuple[ServerProblem, ...] = ()

    def openai_tools(self) -> list[dict[str, Any]]:
        return [tool.openai() for tool in self.tools]

    def find(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.tools if tool.name == name), None)

    @property
    def names(self) -> list[str]:
        return [tool.name for tool in self.tools]


class CallStatus(str, Enum):
    OK = "ok"
    TOOL_ERROR = "tool_error"  # the tool ran and reported an error (or raised)
    UNKNOWN_TOOL = "unknown_tool"
    BAD_ARGUMENTS = "bad_arguments"  # not JSON, or not a JSON object
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"  # the server could not be reached, or died


@dataclass(frozen=True)
class ToolResult:
    name: str
    status: CallStatus
    text: str  # the result, or a clear message saying what went wrong
    server: str | None = None
    arguments: Mapping[str, Any] | None = field(default=None, hash=False)
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is CallStatus.OK

"""MCP server configurations: the built-in server, admin-added stdio and HTTP servers,
their validation and how they may appear in logs (arguments and URLs can hold tokens)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from manager.errors import ValidationError

BUILTIN_NAME = "builtin"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_ARGS = 64
MAX_FIELD = 2000
# Bound on shutting every session down (a stdio child gets stdin closed, then TERM, KILL).
CLOSE_TIMEOUT = 15.0


class ServerKind(str, Enum):
    STDIO = "stdio"
    HTTP = "http"


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server the toolbox connects to. `id` is None for the built-in one."""

    name: str
    kind: ServerKind
    command: str | None = None
    args: tuple[str, ...] = ()
    url: str | None = None
    enabled: bool = True
    id: int | None = None
    builtin: bool = False
    # For the built-in server only: the dashboard's own checkout.
    cwd: str | None = None
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def target(self) -> str:
        """What it runs or where it points, for display."""
        if self.kind is ServerKind.HTTP:
            return self.url or ""
        return " ".join([self.command or "", *self.args]).strip()


@dataclass(frozen=True)
class ConnectFailure:
    """The last failed connection to a server: when, with which config, why, how often."""

    at: float
    config: McpServerConfig
    message: str
    count: int


def builtin_server_config() -> McpServerConfig:
    return McpServerConfig(
        name=BUILTIN_NAME, kind=ServerKind.STDIO, command=sys.executable,
        args=("-m", "manager.chat.mcp_builtin"), builtin=True, cwd=str(PROJECT_ROOT),
    )


def validated_config(name: str, kind: ServerKind | str, command: str | None, args: Sequence[str],
               url: str | None, enabled: bool) -> McpServerConfig:
    name = (name or "").strip().lower()
    if not NAME_PATTERN.fullmatch(name):
        raise ValidationError("A server name uses 1-32 lowercase letters, digits, - or _, "
                              "starting with a letter or digit.", field="name")
    if name == BUILTIN_NAME:
        raise ValidationError(f"'{BUILTIN_NAME}' is the name of the built-in server.",
                              field="name")
    try:
        kind = ServerKind(kind)
    except ValueError as exc:
        raise ValidationError("The kind must be 'stdio' (a command) or 'http' (a URL).",
                              field="kind") from exc
    if kind is ServerKind.STDIO:
        command = (command or "").strip()
        if not command:
            raise ValidationError("A stdio server needs the command that starts it.",
                                  field="command")
        if isinstance(args, str):
            raise ValidationError("Arguments must be a list; use parse_args() for text.",
                                  field="args")
        clean_args = tuple(str(arg) for arg in args)
        if len(clean_args) > MAX_ARGS or any(len(a) > MAX_FIELD for a in clean_args) \
                or len(command) > MAX_FIELD:
            raise ValidationError("That command line is too long.", field="args")
        if any("\x00" in part for part in (command, *clean_args)):
            raise ValidationError("The command line contains a NUL character.", field="args")
        return McpServerConfig(name=name, kind=kind, command=command, args=clean_args,
                               enabled=bool(enabled))
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > MAX_FIELD:
        raise ValidationError("The URL must start with http:// or https://, "
                              "e.g. http://127.0.0.1:8000/mcp.", field="url")
    return McpServerConfig(name=name, kind=kind, url=url, enabled=bool(enabled))


def parse_args(text: str) -> list[str]:
    """Arguments typed as one line, split like a shell would (no shell ever runs them)."""
    try:
        return shlex.split(text or "")
    except ValueError as exc:
        raise ValidationError(f"Those arguments cannot be split: {exc}.", field="args") from exc


def config_from_row(row: Mapping[str, Any]) -> McpServerConfig:
    return McpServerConfig(
        id=row["id"], name=row["name"], kind=ServerKind(row["kind"]), command=row["command"],
        args=tuple(json.loads(row["args"] or "[]")), url=row["url"],
        enabled=bool(row["enabled"]), created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def safe_url(url: str) -> str:
    """The URL without user:password or query string: either may carry a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def loggable_target(config: McpServerConfig) -> str:
    """What a log line may say about a server: arguments can hold tokens, so only counted."""
    if config.kind is ServerKind.HTTP:
        return safe_url(config.url or "")
    return f"{Path(config.command or '').name} with {len(config.args)} argument(s)"

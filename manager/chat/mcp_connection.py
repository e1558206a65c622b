"""One long-lived MCP client session per server, held open by a task in the toolbox's
event loop, and the helpers that turn its failures into messages a person can act on."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, CallToolResult, TextContent
from mcp_types import Tool as McpTool

from manager.chat.mcp_config import (
    CLOSE_TIMEOUT,
    McpServerConfig,
    ServerKind,
    loggable_target,
    safe_url,
)
from manager.units import format_duration

log = logging.getLogger(__name__)

class McpConnection:
    """One MCP client session, held open by a task in the toolbox loop.

    The client is entered and exited by the same task (`_hold`), as anyio requires;
    other coroutines in the loop use the entered client for requests.
    """

    def __init__(self, config: McpServerConfig, logs_dir: Path, connect_timeout: float,
                 call_timeout: float) -> None:
        self.config = config
        self.log_path = logs_dir / f"mcp-{config.name}.log" if config.kind is ServerKind.STDIO \
            else None
        self._logs_dir = logs_dir
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._client: Client | None = None
        self._ready: asyncio.Future[str | None] | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._broken = False

    @property
    def alive(self) -> bool:
        return (self._client is not None and not self._broken and self._task is not None
                and not self._task.done())

    async def open(self) -> str | None:
        """Connect; None when ready, else a message saying why not."""
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._hold(), name=f"mcp-{self.config.name}")
        return await self._ready

    async def list_tools(self) -> list[McpTool]:
        client = self._require_client()
        tools: list[McpTool] = []
        cursor: str | None = None
        for _page in range(50):  # a server that paginates forever cannot hang us
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    async def call_tool(self, tool: str, arguments: dict[str, Any],
                        timeout: float) -> CallToolResult:
        return await self._require_client().call_tool(tool, arguments,
                                                       read_timeout_seconds=timeout)

    def note_error(self, error: MCPError) -> None:
        if error.code == CONNECTION_CLOSED:
            self._broken = True  # reconnect on next use
            self._stop.set()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("MCP server %s did not shut down in time", self.config.name)
                self._task.cancel()

    def _require_client(self) -> Client:
        if self._client is None:
            raise MCPError(code=CONNECTION_CLOSED, message="Not connected")
        return self._client

    async def _hold(self) -> None:
        ready = self._ready
        if ready is None:
            raise RuntimeError("open() creates the ready future before the hold task")
        # One scope around the whole session: a deadline while connecting, none after
        # (entering a task group inside a shorter-lived cancel scope is not allowed).
        scope = anyio.CancelScope(deadline=anyio.current_time() + self._connect_timeout)
        try:
            with scope:
                async with AsyncExitStack() as stack:
                    client = Client(self._transport(stack), read_timeout_seconds=self._call_timeout)
                    await stack.enter_async_context(client)
                    scope.deadline = math.inf
                    self._client = client
                    ready.set_result(None)
                    log.info("MCP server %s connected (%s)", self.config.name,
                             loggable_target(self.config))
                    await self._stop.wait()
            if scope.cancelled_caught and not ready.done():
                ready.set_result(
                    f"The MCP server '{self.config.name}' did not answer within "
                    f"{format_duration(self._connect_timeout)} of starting.")
        except Exception as exc:  # any failure to connect becomes a message; logged below
            self._broken = True
            if ready.done():
                log.warning("MCP server %s: connection lost (%s)", self.config.name,
                            short_error(first_leaf(exc)))
            else:
                message = self._describe_failure(exc)
                log.warning("MCP server %s: %s", self.config.name, message)
                ready.set_result(message)
            log.debug("MCP server %s failure details", self.config.name, exc_info=exc)
        finally:
            self._client = None
            if not ready.done():
                ready.set_result(f"The MCP server '{self.config.name}' closed.")

    def _transport(self, stack: AsyncExitStack) -> Any:
        config = self.config
        if config.kind is ServerKind.HTTP or self.log_path is None:  # None only for HTTP
            return config.url
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        errlog = stack.enter_context(open(self.log_path, "a", encoding="utf-8"))
        params = StdioServerParameters(command=config.command or "", args=list(config.args),
                                       cwd=config.cwd)
        return stdio_client(params, errlog=errlog)

    def _describe_failure(self, exc: BaseException) -> str:
        leaf = first_leaf(exc)
        name = self.config.name
        if isinstance(leaf, FileNotFoundError) and self.config.kind is ServerKind.STDIO:
            return (f"The MCP server '{name}' could not be started: the command "
                    f"'{self.config.command}' was not found.")
        if isinstance(leaf, PermissionError) and self.config.kind is ServerKind.STDIO:
            return (f"The MCP server '{name}' could not be started: the command "
                    f"'{self.config.command}' is not executable.")
        if self.config.kind is ServerKind.HTTP:
            url = self.config.url or ""
            reason = short_error(leaf).replace(url, safe_url(url))
            return f"Could not connect to the MCP server '{name}' at {safe_url(url)}: {reason}"
        tail = log_tail(self.log_path) if self.log_path else ""
        return (f"The MCP server '{name}' stopped while starting ({short_error(leaf)})."
                + (f" Its last log line: {tail}" if tail else ""))


def result_text(result: CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    # Duck-typed: BaseExceptionGroup is not a builtin on Python 3.10.
    while inner := getattr(exc, "exceptions", None):
        exc = inner[0]
    return exc


def short_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def log_tail(path: Path, lines: int = 1) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            tail = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        log.debug("could not read %s: %s", path, exc)
        return ""
    kept = [line.strip() for line in tail.splitlines() if line.strip()]
    return " ".join(kept[-lines:])[:300]

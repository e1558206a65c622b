"""MCP tools for the chat: the built-in server plus admin-configured servers, as one toolbox.

`McpToolbox` connects with the official `mcp` client to the built-in server (started
as a stdio child process: `python -m manager.chat.mcp_builtin`) and to each enabled extra
server (a stdio command with args, or a streamable-HTTP URL) stored in SQLite. It
lists their tools as OpenAI `tools` definitions and runs a tool call by name.

Threading: Gradio handlers are synchronous threads, the MCP client is asyncio. The
toolbox owns one event loop in a background thread and keeps one long-lived client
session per server in it; handlers submit coroutines to that loop and wait. A
persistent session makes a call cost ~2 ms, where opening a session per call costs a
process start, an MCP handshake and a shutdown each time (~0.7 s here, ~350x;
`python -m bench.mcp_tools` prints the ratio). The built-in server runs out of
process, like the extra stdio servers: one code path, a crash or a runaway tool cannot
hurt the dashboard, and the SDK's server object configures the root logger when built,
which must not happen inside the dashboard.

Failures never raise out of `toolset()` / `call()`: a server that cannot start is
reported in `Toolset.problems` (the other servers' tools are still listed), and a
call that fails comes back as a `ToolResult` whose status and text say why, ready to
be shown and to be sent to the model as the tool message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from manager.accounts.auth import User
from manager.accounts.permissions import Action, require
from manager.chat.mcp_config import (
    CLOSE_TIMEOUT,
    MAX_FIELD,
    ConnectFailure,
    McpServerConfig,
    ServerKind,
    builtin_server_config,
    config_from_row,
    validated_config,
)
from manager.chat.toolset import CallStatus, ServerProblem, ToolResult, Toolset, ToolSpec
from manager.clock import utc_now
from manager.errors import Conflict, NotFound
from manager.store import Store, inserted_id
from manager.units import format_duration

if TYPE_CHECKING:
    from mcp_types import Tool as McpTool

    from manager.chat.mcp_connection import McpConnection

log = logging.getLogger(__name__)

DEFAULT_CALL_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 20.0
DEFAULT_RETRY_AFTER = 30.0
MAX_RETRY_AFTER = 600.0

T = TypeVar("T")


class McpToolbox:
    """The chat's tools over MCP; safe to use from any thread. Call close() at shutdown."""

    def __init__(
        self,
        store: Store,
        *,
        logs_dir: Path,
        builtin: McpServerConfig | None = None,
        include_builtin: bool = True,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry_after: float = DEFAULT_RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._logs_dir = logs_dir
        self._builtin = (builtin or builtin_server_config()) if include_builtin else None
        self._call_timeout = call_timeout
        self._connect_timeout = connect_timeout
        self._retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # Loop-side state: only touched by coroutines running in the toolbox loop.
        self._connections: dict[str, McpConnection] = {}
        self._closing: set[McpConnection] = set()  # being closed; close() waits for them too
        self._connect_locks: dict[str, asyncio.Lock] = {}
        # Shared with handler threads, behind self._lock.
        self._failures: dict[str, ConnectFailure] = {}
        self._routes: dict[str, ToolSpec] = {}

    # -- tools ----------------------------------------------------------------------

    def toolset(self) -> Toolset:
        """Every enabled server's tools (connecting as needed); problems listed, not raised."""
        configs = self._active_configs()
        wait = self._connect_timeout + self._call_timeout + 5
        try:
            listed = self._run(self._list_all(configs), timeout=wait)
        except concurrent.futures.TimeoutError:
            log.warning("listing MCP tools took longer than %.0f s", wait)
            return Toolset((), tuple(ServerProblem(c.name, "Did not answer in time.")
                                     for c in configs))
        tools: list[ToolSpec] = []
        problems: list[ServerProblem] = []
        taken: set[str] = set()
        for config, outcome in zip(configs, listed, strict=True):
            if isinstance(outcome, str):
                problems.append(ServerProblem(config.name, outcome))
                continue
            for tool in outcome:
                name = _exposed_name(config.name, tool.name, taken)
                taken.add(name)
                tools.append(ToolSpec(
                    name=name, server=config.name, tool=tool.name,
                    description=(tool.description or tool.title or tool.name)[:MAX_FIELD],
                    parameters=_parameters(tool), title=tool.title))
        toolset = Toolset(tuple(tools), tuple(problems))
        with self._lock:
            self._routes = {tool.name: tool for tool in toolset.tools}
        return toolset

    def openai_tools(self) -> list[dict[str, Any]]:
        return self.toolset().openai_tools()

    def call(
        self,
        name: str,
        arguments: str | Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> ToolResult:
        """Run a tool call as the model asked for it (`arguments` may be its JSON text)."""
        started = self._clock()
        parsed = _parse_arguments(name, arguments)
        if isinstance(parsed, str):
            return ToolResult(name, CallStatus.BAD_ARGUMENTS, parsed, seconds=0.0)
        with self._lock:
            spec = self._routes.get(name)
        if spec is None:
            spec = self.toolset().find(name)
        if spec is None:
            with self._lock:
                known = ", ".join(sorted(self._routes)) or "none"
            return ToolResult(name, CallStatus.UNKNOWN_TOOL,
                              f"There is no tool named '{name}'. Available tools: {known}.",
                              arguments=parsed, seconds=0.0)
        config = self._config_named(spec.server)
        if config is None:
            return ToolResult(name, CallStatus.UNKNOWN_TOOL,
                              f"The tool '{name}' belongs to the MCP server '{spec.server}', "
                              "which is no longer enabled.", server=spec.server,
                              arguments=parsed, seconds=0.0)
        limit = timeout if timeout is not None else self._call_timeout
        try:
            status, text = self._run(self._call(config, spec.tool, parsed, limit),
                                     timeout=self._connect_timeout + limit + 5)
        except concurrent.futures.TimeoutError:
            status, text = CallStatus.TIMEOUT, _timeout_message(spec, limit)
        if status is not CallStatus.OK:
            log.info("tool %s on %s: %s: %s", spec.tool, spec.server, status.value, text[:200])
        return ToolResult(name, status, text, server=spec.server, arguments=parsed,
                          seconds=self._clock() - started)

    # -- admin: extra servers -------------------------------------------------------

    def servers(self, actor: User) -> list[McpServerConfig]:
        """The built-in server (read only) and every configured extra server."""
        require(actor, Action.MANAGE_TOOLS)
        extras = self._stored_configs()
        return ([self._builtin] if self._builtin else []) + extras

    def add_server(
        self,
        actor: User,
        name: str,
        kind: ServerKind | str,
        *,
        command: str | None = None,
        args: Sequence[str] = (),
        url: str | None = None,
        enabled: bool = True,
    ) -> McpServerConfig:
        require(actor, Action.MANAGE_TOOLS)
        config = validated_config(name, kind, command, args, url, enabled)
        now = utc_now()
        with self._store.connect(immediate=True) as db:
            if next(db.query("SELECT 1 FROM mcp_servers WHERE name = ?", [config.name]), None):
                raise Conflict(f"An MCP server named '{config.name}' already exists.")
            cursor = db.execute(
                "INSERT INTO mcp_servers (name, kind, command, args, url, enabled, created_by,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [config.name, config.kind.value, config.command, json.dumps(list(config.args)),
                 config.url, int(config.enabled), actor.id, now, now],
            )
            server_id = inserted_id(cursor)
        log.info("MCP server %s (%s) added by user %s", config.name, config.kind.value, actor.id)
        return self._stored_config(server_id)

    def update_server(
        self,
        actor: User,
        server_id: int,
        *,
        name: str | None = None,
        command: str | None = None,
        args: Sequence[str] | None = None,
        url: str | None = None,
        enabled: bool | None = None,
    ) -> McpServerConfig:
        """Change a server; fields left None keep their value. The session is reopened."""
        require(actor, Action.MANAGE_TOOLS)
        old = self._stored_config(server_id)
        config = validated_config(
            name if name is not None else old.name, old.kind,
            command if command is not None else old.command,
            args if args is not None else old.args,
            url if url is not None else old.url,
            enabled if enabled is not None else old.enabled,
        )
        with self._store.connect(immediate=True) as db:
            clash = next(db.query("SELECT id FROM mcp_servers WHERE name = ? AND id != ?",
                                  [config.name, server_id]), None)
            if clash:
                raise Conflict(f"An MCP server named '{config.name}' already exists.")
            db.execute(
                "UPDATE mcp_servers SET name = ?, command = ?, args = ?, url = ?, enabled = ?,"
                " updated_at = ? WHERE id = ?",
                [config.name, config.command, json.dumps(list(config.args)), config.url,
                 int(config.enabled), utc_now(), server_id],
            )
        log.info("MCP server %s updated by user %s", config.name, actor.id)
        self._forget(old.name)
        self._forget(config.name)
        return self._stored_config(server_id)

    def set_enabled(self, actor: User, server_id: int, enabled: bool) -> McpServerConfig:
        return self.update_server(actor, server_id, enabled=enabled)

    def remove_server(self, actor: User, server_id: int) -> None:
        require(actor, Action.MANAGE_TOOLS)
        old = self._stored_config(server_id)
        with self._store.connect() as db:
            db.execute("DELETE FROM mcp_servers WHERE id = ?", [server_id])
        log.info("MCP server %s removed by user %s", old.name, actor.id)
        self._forget(old.name)

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Close every session (stdio children are stopped) and the loop; safe twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._close_all(), loop)
        try:
            future.result(timeout=CLOSE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            log.warning("MCP sessions did not close within %.0f s", CLOSE_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()
        log.debug("MCP toolbox closed")

    # -- internals: configs ---------------------------------------------------------

    def _active_configs(self) -> list[McpServerConfig]:
        extras = [c for c in self._stored_configs() if c.enabled]
        return ([self._builtin] if self._builtin else []) + extras

    def _config_named(self, name: str) -> McpServerConfig | None:
        return next((c for c in self._active_configs() if c.name == name), None)

    def _stored_configs(self) -> list[McpServerConfig]:
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM mcp_servers ORDER BY id"))
        return [config_from_row(row) for row in rows]

    def _stored_config(self, server_id: int) -> McpServerConfig:
        with self._store.reading() as db:
            row = next(db.query("SELECT * FROM mcp_servers WHERE id = ?", [server_id]), None)
        if row is None:
            raise NotFound("That MCP server no longer exists.")
        return config_from_row(row)

    def _forget(self, name: str) -> None:
        """Drop the session and any remembered failure, so the next use reconnects."""
        with self._lock:
            self._failures.pop(name, None)
            loop = self._loop
        if loop is not None and not self._closed:
            asyncio.run_coroutine_threadsafe(self._drop(name), loop)

    # -- internals: the loop --------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T], *, timeout: float) -> T:
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("the MCP toolbox is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="mcp-toolbox",
                                          daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _connection(self, config: McpServerConfig) -> McpConnection | str:
        """A live session to the server, or the reason there is none."""
        lock = self._connect_locks.setdefault(config.name, asyncio.Lock())
        async with lock:
            current = self._connections.get(config.name)
            if current is not None and current.alive and current.config == config:
                return current
            if current is not None:
                self._connections.pop(config.name, None)
                await self._close_connection(current)
            with self._lock:
                failure = self._failures.get(config.name)
            failures = 0
            if failure is not None and failure.config == config:
                failures = failure.count
                # Back off (30 s, 60 s, 120 s ... 10 min) so a dead server does not make
                # every chat turn wait for it.
                wait = min(self._retry_after * 2 ** (failure.count - 1), MAX_RETRY_AFTER)
                if self._clock() - failure.at < wait:
                    return failure.message
            # The mcp SDK (seconds of imports) loads with the first connection, not with
            # every process that builds Services (the CLI, each test worker).
            from manager.chat.mcp_connection import McpConnection

            connection = McpConnection(config, self._logs_dir, self._connect_timeout,
                                     self._call_timeout)
            problem = await connection.open()
            if problem is not None:
                with self._lock:
                    self._failures[config.name] = ConnectFailure(self._clock(), config, problem,
                                                           failures + 1)
                return problem
            with self._lock:
                self._failures.pop(config.name, None)
            self._connections[config.name] = connection
            return connection

    async def _list_all(self, configs: list[McpServerConfig]) -> list[list[McpTool] | str]:
        return list(await asyncio.gather(*(self._list_one(c) for c in configs)))

    async def _list_one(self, config: McpServerConfig) -> list[McpTool] | str:
        connection = await self._connection(config)
        if isinstance(connection, str):
            return connection
        from mcp.shared.exceptions import MCPError  # loaded with the connection

        from manager.chat.mcp_connection import short_error
        try:
            return await connection.list_tools()
        except MCPError as exc:
            connection.note_error(exc)
            log.warning("listing tools of MCP server %s failed: %s", config.name, exc)
            return f"Listing its tools failed: {exc.message}"
        except Exception as exc:  # a malformed reply must not break the other servers
            log.warning("listing tools of MCP server %s failed", config.name, exc_info=True)
            return f"Listing its tools failed: {short_error(exc)}"

    async def _call(self, config: McpServerConfig, tool: str, arguments: Mapping[str, Any],
                    timeout: float) -> tuple[CallStatus, str]:
        connection = await self._connection(config)
        if isinstance(connection, str):
            return CallStatus.UNAVAILABLE, connection
        from mcp.shared.exceptions import MCPError  # loaded with the connection
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        from manager.chat.mcp_connection import log_tail, result_text, short_error
        try:
            result = await connection.call_tool(tool, dict(arguments), timeout)
        except MCPError as exc:
            connection.note_error(exc)
            if exc.code == REQUEST_TIMEOUT:
                return CallStatus.TIMEOUT, (
                    f"The tool '{tool}' on the MCP server '{config.name}' did not answer "
                    f"within {format_duration(timeout)}.")
            if exc.code == CONNECTION_CLOSED:
                tail = log_tail(connection.log_path) if connection.log_path else ""
                return CallStatus.UNAVAILABLE, (
                    f"The MCP server '{config.name}' stopped while running '{tool}'."
                    + (f" Its last log line: {tail}" if tail else ""))
            return CallStatus.TOOL_ERROR, f"The tool '{tool}' failed: {exc.message}"
        except Exception as exc:  # e.g. a reply that does not match the protocol
            log.warning("calling %s on MCP server %s failed", tool, config.name, exc_info=True)
            return CallStatus.TOOL_ERROR, (
                f"The call to '{tool}' on the MCP server '{config.name}' failed: {short_error(exc)}")
        text = result_text(result)
        if result.is_error:
            return CallStatus.TOOL_ERROR, text or f"The tool '{tool}' failed without a message."
        return CallStatus.OK, text

    async def _drop(self, name: str) -> None:
        connection = self._connections.pop(name, None)
        if connection is not None:
            await self._close_connection(connection)

    async def _close_connection(self, connection: McpConnection) -> None:
        self._closing.add(connection)
        try:
            await connection.close()
        finally:
            self._closing.discard(connection)

    async def _close_all(self) -> None:
        # Connections a config change is closing right now are included: their stdio
        # children must be reaped before the loop stops.
        connections = set(self._connections.values()) | self._closing
        self._connections.clear()
        await asyncio.gather(*(c.close() for c in connections))


# -- helpers ---------------------------------------------------------------------------


def _exposed_name(server: str, tool: str, taken: set[str]) -> str:
    """The tool's own name when free, else `server__tool`; always a valid OpenAI function
    name (^[A-Za-z0-9_-]{1,64}$)."""
    base = re.sub(r"[^A-Za-z0-9_-]", "_", tool)[:64] or "tool"
    if base not in taken:
        return base
    prefixed = f"{server}__{base}"[:64]
    candidate, number = prefixed, 2
    while candidate in taken:
        suffix = f"_{number}"
        candidate = prefixed[: 64 - len(suffix)] + suffix
        number += 1
    return candidate


def _parameters(tool: McpTool) -> dict[str, Any]:
    schema = dict(tool.input_schema or {})
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    schema.pop("title", None)  # pydantic's "xArguments" model title means nothing to a model
    return schema


def _parse_arguments(name: str, arguments: str | Mapping[str, Any] | None
                     ) -> dict[str, Any] | str:
    """The arguments as a dict, or a message saying what is wrong with them."""
    if arguments is None:
        return {}
    if isinstance(arguments, Mapping):
        return dict(arguments)
    text = arguments.strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return (f"The arguments for '{name}' are not valid JSON ({exc.msg} at character "
                f"{exc.pos}): {text[:200]}")
    if not isinstance(value, dict):
        return f"The arguments for '{name}' must be a JSON object, not {type(value).__name__}."
    return value


def _timeout_message(spec: ToolSpec, limit: float) -> str:
    return (f"The tool '{spec.tool}' on the MCP server '{spec.server}' did not answer "
            f"within {format_duration(limit)}.")

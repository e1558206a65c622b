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
import math
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, TextContent
from mcp_types import Tool as McpTool

from manager.accounts.auth import User
from manager.errors import Conflict, NotFound, PermissionDenied, ValidationError
from manager.store import Store, utc_now

log = logging.getLogger(__name__)

BUILTIN_NAME = "builtin"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
MAX_ARGS = 64
MAX_FIELD = 2000
DEFAULT_CALL_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 20.0
DEFAULT_RETRY_AFTER = 30.0
MAX_RETRY_AFTER = 600.0
# Bound on shutting every session down (a stdio child gets stdin closed, then TERM, KILL).
CLOSE_TIMEOUT = 15.0

T = TypeVar("T")


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


def builtin_server_config() -> McpServerConfig:
    return McpServerConfig(
        name=BUILTIN_NAME, kind=ServerKind.STDIO, command=sys.executable,
        args=("-m", "manager.chat.mcp_builtin"), builtin=True, cwd=str(PROJECT_ROOT),
    )


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
        self._connections: dict[str, _Connection] = {}
        self._closing: set[_Connection] = set()  # being closed; close() waits for them too
        self._connect_locks: dict[str, asyncio.Lock] = {}
        # Shared with handler threads, behind self._lock.
        self._failures: dict[str, _Failure] = {}
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
        _require_admin(actor)
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
        _require_admin(actor)
        config = _validated(name, kind, command, args, url, enabled)
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
            server_id = cursor.lastrowid
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
        _require_admin(actor)
        old = self._stored_config(server_id)
        config = _validated(
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
        _require_admin(actor)
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
        with self._store.connect() as db:
            rows = list(db.query("SELECT * FROM mcp_servers ORDER BY id"))
        return [_config_from_row(row) for row in rows]

    def _stored_config(self, server_id: int) -> McpServerConfig:
        with self._store.connect() as db:
            row = next(db.query("SELECT * FROM mcp_servers WHERE id = ?", [server_id]), None)
        if row is None:
            raise NotFound("That MCP server no longer exists.")
        return _config_from_row(row)

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

    async def _connection(self, config: McpServerConfig) -> _Connection | str:
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
            connection = _Connection(config, self._logs_dir, self._connect_timeout,
                                     self._call_timeout)
            problem = await connection.open()
            if problem is not None:
                with self._lock:
                    self._failures[config.name] = _Failure(self._clock(), config, problem,
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
        try:
            return await connection.list_tools()
        except MCPError as exc:
            connection.note_error(exc)
            log.warning("listing tools of MCP server %s failed: %s", config.name, exc)
            return f"Listing its tools failed: {exc.message}"
        except Exception as exc:  # a malformed reply must not break the other servers
            log.warning("listing tools of MCP server %s failed", config.name, exc_info=True)
            return f"Listing its tools failed: {_short(exc)}"

    async def _call(self, config: McpServerConfig, tool: str, arguments: Mapping[str, Any],
                    timeout: float) -> tuple[CallStatus, str]:
        connection = await self._connection(config)
        if isinstance(connection, str):
            return CallStatus.UNAVAILABLE, connection
        try:
            result = await connection.call_tool(tool, dict(arguments), timeout)
        except MCPError as exc:
            connection.note_error(exc)
            if exc.code == REQUEST_TIMEOUT:
                return CallStatus.TIMEOUT, (
                    f"The tool '{tool}' on the MCP server '{config.name}' did not answer "
                    f"within {_seconds(timeout)}.")
            if exc.code == CONNECTION_CLOSED:
                tail = _log_tail(connection.log_path) if connection.log_path else ""
                return CallStatus.UNAVAILABLE, (
                    f"The MCP server '{config.name}' stopped while running '{tool}'."
                    + (f" Its last log line: {tail}" if tail else ""))
            return CallStatus.TOOL_ERROR, f"The tool '{tool}' failed: {exc.message}"
        except Exception as exc:  # e.g. a reply that does not match the protocol
            log.warning("calling %s on MCP server %s failed", tool, config.name, exc_info=True)
            return CallStatus.TOOL_ERROR, (
                f"The call to '{tool}' on the MCP server '{config.name}' failed: {_short(exc)}")
        text = _result_text(result)
        if result.is_error:
            return CallStatus.TOOL_ERROR, text or f"The tool '{tool}' failed without a message."
        return CallStatus.OK, text

    async def _drop(self, name: str) -> None:
        connection = self._connections.pop(name, None)
        if connection is not None:
            await self._close_connection(connection)

    async def _close_connection(self, connection: _Connection) -> None:
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


@dataclass(frozen=True)
class _Failure:
    at: float
    config: McpServerConfig
    message: str
    count: int


class _Connection:
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
                             _loggable_target(self.config))
                    await self._stop.wait()
            if scope.cancelled_caught and not ready.done():
                ready.set_result(
                    f"The MCP server '{self.config.name}' did not answer within "
                    f"{_seconds(self._connect_timeout)} of starting.")
        except Exception as exc:  # any failure to connect becomes a message; logged below
            self._broken = True
            if ready.done():
                log.warning("MCP server %s: connection lost (%s)", self.config.name,
                            _short(_first_leaf(exc)))
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
        if config.kind is ServerKind.HTTP:
            return config.url
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        errlog = stack.enter_context(open(self.log_path, "a", encoding="utf-8"))
        params = StdioServerParameters(command=config.command or "", args=list(config.args),
                                       cwd=config.cwd)
        return stdio_client(params, errlog=errlog)

    def _describe_failure(self, exc: BaseException) -> str:
        leaf = _first_leaf(exc)
        name = self.config.name
        if isinstance(leaf, FileNotFoundError) and self.config.kind is ServerKind.STDIO:
            return (f"The MCP server '{name}' could not be started: the command "
                    f"'{self.config.command}' was not found.")
        if isinstance(leaf, PermissionError) and self.config.kind is ServerKind.STDIO:
            return (f"The MCP server '{name}' could not be started: the command "
                    f"'{self.config.command}' is not executable.")
        if self.config.kind is ServerKind.HTTP:
            url = self.config.url or ""
            reason = _short(leaf).replace(url, _safe_url(url))
            return f"Could not connect to the MCP server '{name}' at {_safe_url(url)}: {reason}"
        tail = _log_tail(self.log_path) if self.log_path else ""
        return (f"The MCP server '{name}' stopped while starting ({_short(leaf)})."
                + (f" Its last log line: {tail}" if tail else ""))


# -- helpers ---------------------------------------------------------------------------


def _require_admin(actor: User) -> None:
    if not actor.is_admin:
        raise PermissionDenied("Only an administrator can manage MCP servers.")


def _validated(name: str, kind: ServerKind | str, command: str | None, args: Sequence[str],
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


def _config_from_row(row: Mapping[str, Any]) -> McpServerConfig:
    return McpServerConfig(
        id=row["id"], name=row["name"], kind=ServerKind(row["kind"]), command=row["command"],
        args=tuple(json.loads(row["args"] or "[]")), url=row["url"],
        enabled=bool(row["enabled"]), created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


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


def _result_text(result: CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{getattr(block, 'type', 'content')} omitted]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _timeout_message(spec: ToolSpec, limit: float) -> str:
    return (f"The tool '{spec.tool}' on the MCP server '{spec.server}' did not answer "
            f"within {_seconds(limit)}.")


def _safe_url(url: str) -> str:
    """The URL without user:password or query string: either may carry a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _loggable_target(config: McpServerConfig) -> str:
    """What a log line may say about a server: arguments can hold tokens, so only counted."""
    if config.kind is ServerKind.HTTP:
        return _safe_url(config.url or "")
    return f"{Path(config.command or '').name} with {len(config.args)} argument(s)"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    # Duck-typed: BaseExceptionGroup is not a builtin on Python 3.10.
    while getattr(exc, "exceptions", None):
        exc = exc.exceptions[0]
    return exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _log_tail(path: Path, lines: int = 1) -> str:
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

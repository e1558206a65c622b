"""The MCP toolbox against real MCP servers: the built-in one over stdio, the same module
over streamable HTTP, a small extra server written by the test, and broken servers."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from manager.accounts.auth import AuthService, User
from manager.chat.mcp_builtin import SAMPLE_NOTE, sample_weather
from manager.chat.mcp_config import PROJECT_ROOT, ServerKind, parse_args
from manager.chat.tools import McpToolbox
from manager.chat.toolset import CallStatus
from manager.errors import Conflict, NotFound, PermissionDenied, ValidationError
from manager.net import free_port
from manager.store import Store
from tests.conftest import PASSWORD, TEST_HASHER
from tests.waits import wait_for

EXTRA_SERVER = textwrap.dedent('''
    """A small MCP server for tests: tools that work, raise, hang and die."""
    import gc
    import logging
    import os
    import time

    gc.disable()  # as manager.chat.mcp_builtin does while the SDK is imported
    from mcp.server.mcpserver import MCPServer

    # Plain log lines: the SDK's own logging setup (rich, kept out by this one) renders a
    # crash's traceback in colour, ~0.4 s of CPU for explode's, and no test reads them.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server = MCPServer("extra", log_level="WARNING")
    gc.freeze()
    gc.enable()


    @server.tool(description="Repeat the text in capitals.")
    def shout(text: str) -> str:
        return text.upper() + "!"


    @server.tool(description="Always fails.")
    def explode() -> str:
        raise RuntimeError("the secret internals of explode")


    @server.tool(description="Takes its time.")
    def slow(seconds: float) -> str:
        time.sleep(seconds)
        return "done"


    @server.tool(description="Kills its own server.")
    def die() -> str:
        os._exit(3)


    @server.tool(name="odd.name", description="A name OpenAI would not accept as is.")
    def odd() -> str:
        return "odd"


    if __name__ == "__main__":
        server.run()
''')

# Starts, notes that it started, complains on stderr and exits: not an MCP server.
BROKEN_SERVER = textwrap.dedent('''
    import sys
    with open(sys.argv[1], "a") as starts:
        starts.write("start\\n")
    sys.stderr.write("fatal: the config file broken.toml is missing\\n")
    sys.exit(2)
''')


@dataclass
class Env:
    tmp: Path
    http_url: str
    extra_script: Path


@dataclass
class Box:
    """A toolbox over its own database, with an admin and a plain user in it."""

    toolbox: McpToolbox
    admin: User
    user: User
    toolbox_dir: Path


def make_box(directory: Path, **kwargs: object) -> Box:
    directory.mkdir(parents=True, exist_ok=True)
    store = Store(directory / "manager.db")
    auth = AuthService(store, b"k" * 48, hasher=TEST_HASHER)
    admin = auth.add_user("admin@example.com", PASSWORD, admin=True)
    user = auth.add_user("user@example.com", PASSWORD)
    return Box(McpToolbox(store, logs_dir=directory / "logs", **kwargs), admin, user, directory)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    """A fresh toolbox without the built-in server (tests add what they need)."""
    made = make_box(tmp_path / "box", include_builtin=False)
    yield made
    made.toolbox.close()


def _start_http_builtin(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """The built-in module over streamable HTTP, as its own process group."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "manager.chat.mcp_builtin", "--transport", "streamable-http",
             "--port", str(port)],
            cwd=PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        wait_for(lambda: _listening(port, process), 30, "the HTTP MCP server to listen")
    except RuntimeError:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _listening(port: int, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"the HTTP MCP server exited with {process.returncode}")
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("tools")
    script = tmp / "extra_server.py"
    script.write_text(EXTRA_SERVER)
    server = _start_http_builtin(port := free_port(), tmp / "http.log")
    try:
        yield Env(tmp, f"http://127.0.0.1:{port}/mcp", script)
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def toolbox(env: Env) -> Iterator[McpToolbox]:
    """Built-in server + 'web' (HTTP) + 'extra' (stdio script) + 'ghost' (no such command)."""
    made = make_box(env.tmp / "shared", call_timeout=15, connect_timeout=20)
    box, admin = made.toolbox, made.admin
    box.add_server(admin, "web", ServerKind.HTTP, url=env.http_url)
    box.add_server(admin, "extra", "stdio", command=sys.executable, args=[str(env.extra_script)])
    box.add_server(admin, "ghost", ServerKind.STDIO, command="no-such-mcp-server-here",
                   args=["--stdio"])
    yield box
    box.close()


# -- the built-in server -----------------------------------------------------------


def test_tools_are_listed_as_openai_definitions(toolbox: McpToolbox) -> None:
    toolset = toolbox.toolset()
    assert toolset.names[:2] == ["get_weather", "calculator"]
    weather = toolset.find("get_weather").openai()
    assert weather["type"] == "function"
    function = weather["function"]
    assert function["name"] == "get_weather"
    assert "SAMPLE DATA" in function["description"]
    parameters = function["parameters"]
    assert parameters["type"] == "object" and parameters["required"] == ["city"]
    assert parameters["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert parameters["properties"]["unit"]["default"] == "celsius"
    calculator = toolset.find("calculator").openai()["function"]
    assert calculator["parameters"]["required"] == ["expression"]
    assert toolbox.openai_tools() == toolset.openai_tools()


def test_get_weather_is_stable_marked_sample_and_differs_by_city(toolbox: McpToolbox) -> None:
    first = toolbox.call("get_weather", '{"city": "Paris"}')
    second = toolbox.call("get_weather", {"city": "Paris"})
    assert first.ok and second.ok
    assert first.text == second.text
    assert first.text.startswith(SAMPLE_NOTE) and "Paris" in first.text
    assert first.server == "builtin" and first.arguments == {"city": "Paris"}
    cities = ["Paris", "Tokyo", "Lima", "Oslo", "Nairobi", "Perth"]
    texts = {toolbox.call("get_weather", {"city": c}).text.split(": ", 1)[1] for c in cities}
    assert len(texts) > 1
    fahrenheit = toolbox.call("get_weather", {"city": "Paris", "unit": "fahrenheit"})
    expected = sample_weather("Paris", "fahrenheit")
    assert fahrenheit.text == expected.text() and "°F" in fahrenheit.text
    # Another process (this one, with its own str hash seed) says the same as the server.
    assert first.text == sample_weather("Paris").text()


@pytest.mark.parametrize(("expression", "status", "text"), [
    ("(1+2)*3", CallStatus.OK, "9"),
    ("7 / 2", CallStatus.OK, "3.5"),
    ("9**9**9", CallStatus.TOOL_ERROR, "That exponent is too large"),
    ("__import__('os')", CallStatus.TOOL_ERROR, "not function calls ('__import__(...)')"),
    ("1/0", CallStatus.TOOL_ERROR, "Division by zero is not defined."),
])
def test_calculator_through_mcp(toolbox: McpToolbox, expression: str, status: CallStatus,
                                text: str) -> None:
    result = toolbox.call("calculator", {"expression": expression})
    assert result.status is status
    assert text in result.text


@pytest.mark.parametrize(("name", "arguments", "status", "text"), [
    ("calculator", '{"expression": ', CallStatus.BAD_ARGUMENTS, "are not valid JSON"),
    ("calculator", "[1, 2]", CallStatus.BAD_ARGUMENTS, "must be a JSON object, not list"),
    ("get_weather", '{"city": ""}', CallStatus.TOOL_ERROR, "Please name a city"),
    ("get_weather", "{}", CallStatus.TOOL_ERROR, "city"),  # required argument missing
    ("get_weather", '{"city": "Oslo", "unit": "kelvin"}', CallStatus.TOOL_ERROR, "celsius"),
    ("teleport", "{}", CallStatus.UNKNOWN_TOOL, "There is no tool named 'teleport'"),
])
def test_bad_calls_come_back_as_clear_results(toolbox: McpToolbox, name: str, arguments: str,
                                              status: CallStatus, text: str) -> None:
    result = toolbox.call(name, arguments)
    assert result.status is status
    assert text in result.text
    assert not result.ok


# -- extra servers -----------------------------------------------------------------


def test_extra_servers_join_the_list_and_a_broken_one_is_reported(toolbox: McpToolbox) -> None:
    toolset = toolbox.toolset()
    by_name = {tool.name: tool for tool in toolset.tools}
    # The HTTP server offers the same tool names: the built-in keeps them, the clash is
    # resolved with the server name.
    assert by_name["get_weather"].server == "builtin"
    assert (by_name["web__get_weather"].server, by_name["web__get_weather"].tool) == (
        "web", "get_weather")
    assert by_name["web__calculator"].server == "web"
    assert by_name["shout"].server == "extra"
    assert by_name["odd_name"].tool == "odd.name"  # made a valid function name
    assert len(set(toolset.names)) == len(toolset.names)
    assert [p.server for p in toolset.problems] == ["ghost"]
    assert "could not be started: the command 'no-such-mcp-server-here' was not found" in \
        toolset.problems[0].message


def test_calls_reach_the_right_server(toolbox: McpToolbox) -> None:
    assert toolbox.call("shout", {"text": "hi"}).text == "HI!"
    over_http = toolbox.call("web__get_weather", {"city": "Paris"})
    assert over_http.ok and over_http.server == "web"
    assert over_http.text == toolbox.call("get_weather", {"city": "Paris"}).text
    assert toolbox.call("odd_name").text == "odd"


def test_a_tool_that_raises_is_a_tool_error_and_the_server_carries_on(
        toolbox: McpToolbox) -> None:
    result = toolbox.call("explode", "{}")
    assert result.status is CallStatus.TOOL_ERROR
    assert "Error executing tool explode" in result.text
    assert "secret internals" not in result.text  # a crash's text stays on the server
    assert toolbox.call("shout", {"text": "still here"}).ok


def test_a_call_that_takes_too_long_times_out(toolbox: McpToolbox) -> None:
    result = toolbox.call("slow", {"seconds": 5}, timeout=0.5)
    assert result.status is CallStatus.TIMEOUT
    assert result.text == "The tool 'slow' on the MCP server 'extra' did not answer within 0.5 s."
    assert toolbox.call("shout", {"text": "after"}).text == "AFTER!"


def test_a_server_that_dies_mid_call_is_reported_and_restarted(toolbox: McpToolbox) -> None:
    died = toolbox.call("die")
    assert died.status is CallStatus.UNAVAILABLE
    assert "The MCP server 'extra' stopped while running 'die'." in died.text
    assert toolbox.call("shout", {"text": "again"}).text == "AGAIN!"  # a new process
    assert toolbox.call("get_weather", {"city": "Lima"}).ok  # the others never noticed


def test_an_http_server_that_goes_away_is_reported(box: Box) -> None:
    port = free_port()
    server = _start_http_builtin(port, box.toolbox_dir / "http-gone.log")
    try:
        box.toolbox.add_server(box.admin, "gone", "http", url=f"http://127.0.0.1:{port}/mcp")
        assert box.toolbox.call("calculator", {"expression": "2*21"}).text == "42"
    finally:
        _stop(server)
    result = box.toolbox.call("calculator", {"expression": "2*21"})
    assert result.status is CallStatus.UNAVAILABLE
    assert "The MCP server 'gone' stopped while running 'calculator'." in result.text
    problems = box.toolbox.toolset().problems
    assert [p.server for p in problems] == ["gone"]
    assert problems[0].message.startswith("Could not connect to the MCP server 'gone' at")


def test_handler_threads_can_call_at_the_same_time(toolbox: McpToolbox) -> None:
    cities = ["Paris", "Tokyo", "Lima", "Oslo"] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda c: toolbox.call("get_weather", {"city": c}), cities))
        sums = list(pool.map(lambda n: toolbox.call("calculator", {"expression": f"{n}+1"}),
                             range(16)))
    assert all(r.ok for r in results)
    by_city: dict[str, set[str]] = {}
    for city, result in zip(cities, results, strict=True):
        by_city.setdefault(city, set()).add(result.text)
    assert all(len(texts) == 1 for texts in by_city.values())
    assert [r.text for r in sums] == [str(n + 1) for n in range(16)]


# -- failures while connecting -------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_servers_that_fail_to_start_say_why_and_are_not_retried_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="manager.chat.tools")
    starts = tmp_path / "broken-starts.txt"
    broken = tmp_path / "broken_server.py"
    broken.write_text(BROKEN_SERVER)
    clock = FakeClock()
    made = make_box(tmp_path / "box", include_builtin=False, connect_timeout=30, retry_after=60,
                    clock=clock)
    box, admin = made.toolbox, made.admin
    try:
        box.add_server(admin, "broken", "stdio", command=sys.executable,
                       args=[str(broken), str(starts)])
        port = free_port()
        box.add_server(admin, "nowhere", "http",
                       url=f"http://me:s3cret@127.0.0.1:{port}/mcp?token=t0ken")
        toolset = box.toolset()
        problems = {p.server: p.message for p in toolset.problems}
        assert problems["broken"].startswith("The MCP server 'broken' stopped while starting")
        assert "Its last log line: fatal: the config file broken.toml is missing" in \
            problems["broken"]
        # Credentials in the URL are never shown (nor logged).
        assert problems["nowhere"].startswith(
            f"Could not connect to the MCP server 'nowhere' at http://127.0.0.1:{port}/mcp: ")
        assert "s3cret" not in problems["nowhere"] and "t0ken" not in problems["nowhere"]
        assert "s3cret" not in caplog.text and "t0ken" not in caplog.text
        assert toolset.tools == ()
        assert box.toolset().problems == toolset.problems
        assert starts.read_text().count("start") == 1  # remembered, not retried at once
        clock.now += 61
        box.toolset()
        assert starts.read_text().count("start") == 2  # retried after 60 s
        clock.now += 61
        box.toolset()
        assert starts.read_text().count("start") == 2  # the next wait doubles: 120 s
        clock.now += 60
        box.toolset()
        assert starts.read_text().count("start") == 3
    finally:
        box.close()


def test_a_server_that_never_answers_is_given_up_after_the_connect_timeout(
        tmp_path: Path) -> None:
    # Its own toolbox with a short timeout: the others here need a generous one, since a
    # loaded machine may take seconds to start a Python process.
    made = make_box(tmp_path / "box", include_builtin=False, connect_timeout=0.3)
    try:
        # Reads its requests and never answers; it ends when its stdin closes, so the
        # toolbox's cleanup need not wait for the SDK to give up on it and kill it (2 s).
        made.toolbox.add_server(made.admin, "mute", "stdio", command=sys.executable,
                                args=["-c", "import sys; sys.stdin.read()"])
        problems = {p.server: p.message for p in made.toolbox.toolset().problems}
        assert problems == {
            "mute": "The MCP server 'mute' did not answer within 0.3 s of starting."}
    finally:
        made.toolbox.close()


# -- admin CRUD ----------------------------------------------------------------------


def test_only_admins_manage_servers(box: Box, env: Env) -> None:
    toolbox, admin, user = box.toolbox, box.admin, box.user
    with pytest.raises(PermissionDenied):
        toolbox.add_server(user, "mine", "http", url="http://127.0.0.1:1/mcp")
    with pytest.raises(PermissionDenied):
        toolbox.servers(user)
    created = toolbox.add_server(admin, "crud", "stdio", command=sys.executable,
                                 args=[str(env.extra_script)])
    for attempt in (
        lambda: toolbox.update_server(user, created.id, enabled=False),
        lambda: toolbox.set_enabled(user, created.id, False),
        lambda: toolbox.remove_server(user, created.id),
    ):
        with pytest.raises(PermissionDenied):
            attempt()
    assert [server.name for server in toolbox.servers(admin)] == ["crud"]


def test_the_builtin_server_is_listed_first_for_admins(tmp_path: Path) -> None:
    made = make_box(tmp_path / "b")
    try:
        servers = made.toolbox.servers(made.admin)
        assert [(s.name, s.builtin, s.id) for s in servers] == [("builtin", True, None)]
        assert servers[0].target.endswith("-m manager.chat.mcp_builtin")
    finally:
        made.toolbox.close()


@pytest.mark.parametrize(("kwargs", "field", "message"), [
    ({"name": "Bad Name!", "kind": "stdio", "command": "x"}, "name", "lowercase letters"),
    ({"name": "builtin", "kind": "stdio", "command": "x"}, "name", "built-in server"),
    ({"name": "ok", "kind": "ftp", "command": "x"}, "kind", "'stdio'"),
    ({"name": "ok", "kind": "stdio", "command": "  "}, "command", "needs the command"),
    ({"name": "ok", "kind": "http", "url": "ftp://host/mcp"}, "url", "http:// or https://"),
    ({"name": "ok", "kind": "http", "url": "http://"}, "url", "http:// or https://"),
])
def test_server_settings_are_validated(box: Box, kwargs: dict, field: str, message: str) -> None:
    name, kind = kwargs.pop("name"), kwargs.pop("kind")
    with pytest.raises(ValidationError) as caught:
        box.toolbox.add_server(box.admin, name, kind, **kwargs)
    assert caught.value.field == field and message in caught.value.message


def test_crud_round_trip_changes_what_the_chat_sees(box: Box, env: Env) -> None:
    toolbox, admin = box.toolbox, box.admin
    created = toolbox.add_server(admin, "round", "stdio", command=sys.executable,
                                 args=parse_args(f"'{env.extra_script}'"))
    assert (created.kind, created.args, created.enabled) == (
        ServerKind.STDIO, (str(env.extra_script),), True)
    with pytest.raises(Conflict):
        toolbox.add_server(admin, "round", "http", url="http://127.0.0.1:1/mcp")
    assert "round" in {t.server for t in toolbox.toolset().tools}
    toolbox.set_enabled(admin, created.id, False)
    assert "round" not in {t.server for t in toolbox.toolset().tools}
    assert toolbox.call("shout", {"text": "x"}).status is CallStatus.UNKNOWN_TOOL
    renamed = toolbox.update_server(admin, created.id, name="round2", enabled=True)
    assert (renamed.name, renamed.enabled) == ("round2", True)
    shout = toolbox.toolset().find("shout")
    assert shout is not None and shout.server == "round2"
    assert toolbox.call("shout", {"text": "back"}).text == "BACK!"
    toolbox.remove_server(admin, created.id)
    with pytest.raises(NotFound):
        toolbox.remove_server(admin, created.id)
    assert toolbox.toolset().tools == ()


def test_parse_args_splits_like_a_shell_without_one() -> None:
    assert parse_args('--root "/tmp/my dir" -v') == ["--root", "/tmp/my dir", "-v"]
    assert parse_args("") == []
    with pytest.raises(ValidationError):
        parse_args('"unterminated')


def test_close_stops_the_child_processes(tmp_path: Path) -> None:
    before = _builtin_children()
    box = make_box(tmp_path / "close").toolbox
    assert box.toolset().find("calculator") is not None
    started = [psutil.Process(pid) for pid in _builtin_children() - before]
    assert len(started) == 1, "one built-in server process for this toolbox"
    box.close()
    box.close()  # safe twice
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert alive == [] and len(gone) == 1


def _builtin_children() -> set[int]:
    """Live child processes of this test process running the built-in server."""
    found = set()
    for child in psutil.Process().children():
        try:
            if "manager.chat.mcp_builtin" in " ".join(child.cmdline()) and \
                    child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found

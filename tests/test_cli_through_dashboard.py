"""`mlx-manager start|stop|run|pull|rm|ps` with a real dashboard process on the data dir
(they act through it: its supervisor owns the server, its download jobs fetch the model)
and without one (they act directly). Real model servers on the scripted tiny "tools"
model (thinking, a weather call, an answer), the local hub; the commands run in-process
(tests/test_cli.py run_cli: the same parser and code, without seconds of imports)."""

from __future__ import annotations

import _thread
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import psutil
import pytest

from manager.chat.events import ChatEvent
from manager.cli.chat_session import event_from_json
from manager.cli.instance import read_control
from manager.cli.remote import Dashboard
from manager.cli.terminal_chat import Repl
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.servers.records import read_records
from manager.services import Services
from manager.settings import Settings
from manager.store import Store
from tests.dashboard_process import DashboardProcess, launch
from tests.fixtures.local_hub import LocalHub
from tests.server_helpers import hf_home_env, make_broken_model
from tests.test_cli import run_cli
from tests.waits import wait_for

QUESTION = "What is the weather in Paris?\n/bye\n"
#: The plain (not a terminal) rendering of the tools model's turn: thinking, the call,
#: its result (the built-in weather tool's sample data), the answer.
ANSWER = (r"Thinking\.\.\.\nNeed weather\.\n\.\.\.done thinking( \([^)]*\))?\.\n\n"
          r"\[tool\] get_weather\(\{\"city\": \"Paris\"\}\)\n"
          r"\[tool\] get_weather -> [^\n]*Paris[^\n]*\n"
          r"It is sunny in Paris\.\n")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cli_hf_home")
    (home / "hub").mkdir()
    with hf_home_env(home):
        yield home


def make_profiles(data_dir: Path, tiny_models: dict[str, Path], *, long: bool = False
                  ) -> None:
    services = Services.create(Settings(data_dir=data_dir), run_servers=False)
    try:
        services.profiles.create(None, ProfileSpec(
            name="tools", model=str(tiny_models["tools"]), port=free_port()))
        if long:  # answers until stopped (the tiny text model never says its end token)
            # Long enough to be stopped after its first characters, short enough that a
            # Ctrl-C that never arrived fails the test instead of running for minutes.
            services.profiles.create(None, ProfileSpec(
                name="long", model=str(tiny_models["text"]), port=free_port(),
                max_tokens=4000))
        broken = make_broken_model(data_dir.parent / "broken", tiny_models["text"])
        services.profiles.create(None, ProfileSpec(name="broken", model=str(broken),
                                                   port=free_port()))
    finally:
        services.close()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path],
              model_home: Path, local_hub: LocalHub) -> Iterator[DashboardProcess]:
    root = tmp_path_factory.mktemp("cli_dashboard")
    data_dir = root / "data"
    make_profiles(data_dir, tiny_models, long=True)
    env = {**os.environ, "HF_ENDPOINT": local_hub.url, "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)  # its download jobs fetch from the local hub
    running = launch(root, data_dir, "--no-warm-spare", env=env)
    try:
        yield running
    finally:
        running.end()  # Ctrl-C: it stops the servers it runs


def test_commands_act_through_a_running_dashboard(
        dashboard: DashboardProcess, local_hub: LocalHub, hub_repos: dict[str, str]) -> None:
    data_dir = dashboard.data_dir
    started = run_cli("start", "tools", data_dir=data_dir)
    assert started.returncode == 0, started.stderr
    assert re.match(r"tools is ready on port \d+ \(pid \d+; run by the dashboard at "
                    r"http://127\.0\.0\.1:\d+ \(pid \d+\)\)\.\n$", started.stdout)
    # Its supervisor owns the server: it started it and shows it ready.
    assert re.search(r"server tools: stopped -> starting \(started by mlx-manager start",
                     dashboard.log())
    server = dashboard.servers()["tools"]
    assert server["state"] == "ready" and psutil.pid_exists(server["pid"])
    assert re.search(rf"\ntools +ready +{server['pid']} ", "\n" + run_cli(
        "ps", data_dir=data_dir).stdout)

    # A chat through it: its engine, its tools (the built-in MCP server it runs).
    chat = run_cli("run", "tools", stdin=QUESTION, data_dir=data_dir)
    assert chat.returncode == 0, chat.stderr
    assert re.fullmatch(ANSWER, chat.stdout), chat.stdout
    assert "MCP server builtin connected" in dashboard.log()

    stopped = run_cli("stop", "tools", data_dir=data_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("Stopped tools (through the dashboard at ")
    assert dashboard.servers()["tools"]["state"] == "stopped"
    again = run_cli("stop", "tools", data_dir=data_dir)
    assert (again.returncode, again.stderr) == (1, "error: tools is not running.\n")

    failed = run_cli("start", "broken", data_dir=data_dir)
    assert failed.returncode == 1
    assert failed.stderr.startswith("Starting broken...\nerror: broken did not start (failed): ")

    # A pull is the dashboard's own download job: its Models tab lists it.
    repo = hub_repos["text"]
    pulled = run_cli("pull", repo, data_dir=data_dir)
    assert pulled.returncode == 0, pulled.stderr
    assert "through the dashboard at" in pulled.stdout
    assert pulled.stdout.splitlines()[-1].startswith(f"{repo}: downloaded (")
    assert re.search(rf"download \d+ of {re.escape(repo)} queued", dashboard.log())
    with sqlite3.connect(data_dir / "manager.db") as db:
        assert db.execute("SELECT repo_id, status FROM downloads").fetchall() == \
            [(repo, "done")]
    removed = run_cli("rm", repo, data_dir=data_dir)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith(f"Deleted {repo} (") and "through the dashboard" in \
        removed.stdout


def test_without_a_dashboard_run_start_and_stop_act_directly(
        tmp_path: Path, tiny_models: dict[str, Path], model_home: Path) -> None:
    data_dir = tmp_path / "data"
    make_profiles(data_dir, tiny_models)
    records = Store(data_dir / "manager.db")

    # `run` starts the profile for the chat, and stops it on leaving.
    chat = run_cli("run", "tools", stdin=QUESTION, data_dir=data_dir)
    assert chat.returncode == 0, chat.stderr
    assert re.fullmatch(ANSWER, chat.stdout), chat.stdout
    assert chat.stderr.startswith("Starting tools...\n")
    assert "Stopped tools (it was started for this chat" in chat.stderr
    assert {r.profile_name: r.state.value for r in read_records(records)}["tools"] == "stopped"

    # `start` leaves it running after the command ends (for a dashboard to adopt).
    started = run_cli("start", "tools", data_dir=data_dir)
    assert started.returncode == 0, started.stderr
    (pid,) = [r.pid for r in read_records(records) if r.profile_name == "tools"]
    assert pid is not None and psutil.pid_exists(pid)
    assert re.search(r"\ntools +ready ", "\n" + run_cli("ps", data_dir=data_dir).stdout)
    stopped = run_cli("stop", "tools", data_dir=data_dir)
    assert (stopped.returncode, stopped.stdout) == (0, "Stopped tools.\n")
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status()
             == psutil.STATUS_ZOMBIE, 30, "the server to be gone")

    # The terminal closes mid-chat (SIGHUP): `run` still stops what it started (it used
    # to die at once and leave the server running, with nothing to tell anyone).
    with subprocess.Popen([sys.executable, "app.py", "--data-dir", str(data_dir), "run", "tools"],
                          stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as hung:
        wait_for(lambda: any(r.profile_name == "tools" and r.state.value == "ready"
                             for r in read_records(records)), 120, "run to start tools")
        (pid,) = [r.pid for r in read_records(records) if r.profile_name == "tools"]
        hung.send_signal(signal.SIGHUP)
        assert hung.wait(60) == 128 + signal.SIGHUP, hung.stderr.read() if hung.stderr else ""
    assert {r.profile_name: r.state.value for r in read_records(records)}["tools"] == "stopped"
    assert pid is not None
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status()
             == psutil.STATUS_ZOMBIE, 30, "the server to be gone")


class InterruptingOutput(io.StringIO):
    """A terminal whose person presses Ctrl-C once the answer has begun: SIGINT's
    handler runs in the main thread, as when the key is pressed."""

    def __init__(self, after_chars: int) -> None:
        super().__init__()
        self._after = after_chars
        self.pressed = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if not self.pressed and len(self.getvalue()) > self._after:
            self.pressed = True
            _thread.interrupt_main()
        return written


def test_ctrl_c_stops_the_answer_in_the_dashboard_and_the_chat_goes_on(
        dashboard: DashboardProcess) -> None:
    # _thread.interrupt_main() does nothing while SIGINT is ignored (a suite started in
    # the background; conftest restores Python's handler): say so instead of waiting.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    credential = read_control(dashboard.data_dir)
    assert credential is not None
    client = Dashboard(credential)
    out = InterruptingOutput(after_chars=100)
    try:
        client.call("POST", "/servers/start", {"profile": "long", "wait": 60})
        wait_for(lambda: dashboard.servers()["long"]["state"] == "ready", 240,
                 "the long profile to be ready")
        chat_id = client.call("POST", "/chats", {"profile": "long"})["chat"]

        def turns(text: str) -> Generator[ChatEvent, None, None]:
            lines = client.stream(f"/chats/{chat_id}/turn", {"text": text})
            try:
                for line in lines:
                    yield event_from_json(line)
            finally:
                lines.close()

        Repl(turns, stdin=io.StringIO("Tell me a long story\n/?\n/bye\n"), out=out,
             tty=False).run()
    finally:
        client.close()
    assert out.pressed
    said = out.getvalue()
    # The answer stopped, the prompt loop went on (the help after it), and the dashboard
    # ended the model's request.
    assert "\n(stopped)\nType a message" in said, said[-300:]
    dashboard.wait_line(r"chat \d+: stopped during round 1")

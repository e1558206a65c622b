"""The dashboard as a process a person runs in a terminal (issue 15 items 3 and 4): what
its log says while tabs poll and a server crashes, and what Ctrl-C does.

Real `python app.py` processes with a real model server on the tiny text model; waits
are on log lines and process states (generous timeouts only guard against hangs)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.servers.records import read_records
from manager.services import Services
from manager.settings import Settings
from manager.store import Store
from tests.conftest import PASSWORD
from tests.dashboard_process import ROOT, DashboardProcess, launch
from tests.server_helpers import hf_home_env
from tests.waits import wait_for

pytestmark = pytest.mark.slow


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("process_hf_home")
    (home / "hub").mkdir()
    with hf_home_env(home):
        yield home


def start(root: Path, model: Path, *flags: str) -> DashboardProcess:
    """A data dir with one auto-started (and auto-restarted) profile, "quiet", and a
    dashboard process on it, once it answers."""
    data_dir = root / "data"
    services = Services.create(Settings(data_dir=data_dir), run_servers=False)
    try:
        services.profiles.create(None, ProfileSpec(
            name="quiet", model=str(model), port=free_port(), auto_start=True,
            auto_restart=True))
    finally:
        services.close()
    return launch(root, data_dir, *flags)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path],
              model_home: Path) -> Iterator[DashboardProcess]:
    running = start(tmp_path_factory.mktemp("dashboard"), tiny_models["text"])
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait(timeout=30)


def test_polls_and_ticks_stay_out_of_the_log_and_a_crash_stands_out(
        dashboard: DashboardProcess) -> None:
    """Issue 15 item 3: 5,671 lines in 20 minutes, every poll and tick at INFO, a crash
    only at INFO."""
    dashboard.wait_line(r"INFO .*server quiet: starting -> ready")
    mark = len(dashboard.lines())
    with httpx.Client(base_url=dashboard.url, timeout=60) as client:
        client.post("/register", data={"email": "ada@example.com", "password": PASSWORD,
                                       "confirm": PASSWORD})
        client.post("/login", data={"email": "ada@example.com", "password": PASSWORD})
        for _ in range(10):  # what an open tab does, page loads and polls
            for path in ("/", "/config", "/gradio_api/info", "/login"):
                assert client.get(path).status_code < 500
    pid = dashboard.server_pid("quiet")
    os.killpg(pid, signal.SIGKILL)
    # The sampler's tick notices the crash: ticks ran, and only the crash is told.
    crash = dashboard.wait_line(r"server quiet: ready -> (backoff|failed)", after=mark)
    crash_line = dashboard.lines()[crash]
    assert " WARNING " in crash_line and "exited with" in crash_line, crash_line
    said = dashboard.lines()[mark:crash + 1]
    assert not [line for line in said if "GET /" in line or "apscheduler" in line
                or "Monitor.tick" in line], said
    # The account's creation and sign-in, and the crash: events a person cares about.
    assert len(said) <= 4, said


def test_ctrl_c_stops_at_once_without_a_traceback_and_stops_the_servers(
        dashboard: DashboardProcess) -> None:
    """Issue 15 item 4: Ctrl-C took ~9 s, printed an ~80-line traceback, and left the
    model servers running unnoticed."""
    def ready_again() -> bool:  # (restarted after the crash of the test before)
        moves = [line for line in dashboard.lines() if "server quiet: " in line]
        return bool(moves) and moves[-1].split(" -> ")[-1].startswith("ready")

    wait_for(ready_again, 180, "the quiet server to be ready")
    pid = dashboard.server_pid("quiet")
    with httpx.Client(base_url=dashboard.url, timeout=60) as client:
        client.post("/register", data={"email": "ada@example.com", "password": PASSWORD,
                                       "confirm": PASSWORD})
        client.post("/login", data={"email": "ada@example.com", "password": PASSWORD})
        # An open tab's heartbeat stream: it never ends by itself.
        with client.stream("GET", "/gradio_api/heartbeat/processtest") as heartbeat:
            assert heartbeat.status_code == 200
            assert dashboard.interrupt() == 0
    output = "\n".join(dashboard.lines())
    assert "Traceback" not in output and "CancelledError" not in output
    wait_for(lambda: gone(pid), 30, "the model server to stop with the dashboard")
    assert re.search(r"stopped, and the model servers it ran: quiet \(pid \d+", output)


def test_keep_servers_leaves_them_running_and_says_which(
        tmp_path: Path, tiny_models: dict[str, Path], model_home: Path) -> None:
    kept = start(tmp_path, tiny_models["text"], "--keep-servers")
    pid = None
    try:
        kept.wait_line(r"server quiet: starting -> ready")
        pid = kept.server_pid("quiet")
        assert kept.interrupt() == 0
        output = "\n".join(kept.lines())
        assert "Traceback" not in output
        assert re.search(rf"WARNING .*Left running for the next start to adopt .*: "
                         rf"quiet \(pid {pid}, port \d+\)", output), output
        assert not gone(pid)
    finally:
        if kept.process.poll() is None:
            kept.process.kill()
        if pid is not None and not gone(pid):
            os.killpg(pid, signal.SIGTERM)
            wait_for(lambda: gone(pid), 30, "the kept server to stop")


def test_a_sigterm_while_servers_auto_start_stops_those_started(
        tmp_path: Path, tiny_models: dict[str, Path], model_home: Path) -> None:
    """A SIGTERM (systemd's stop, `kill`) while the dashboard still auto-started its
    servers ended it where it stood: the servers started so far, in sessions of their
    own, ran on unseen. The second profile's model sits on a disk that does not answer
    (its tokenizer_config.json is a FIFO nobody writes), which holds the start-up at its
    memory estimate."""
    data_dir = tmp_path / "data"
    slow_disk = tmp_path / "slow-disk-model"
    slow_disk.mkdir()
    for part in tiny_models["text"].iterdir():
        (slow_disk / part.name).symlink_to(part)
    services = Services.create(Settings(data_dir=data_dir), run_servers=False)
    try:
        for name, model in (("a first", tiny_models["text"]), ("b held", slow_disk)):
            services.profiles.create(None, ProfileSpec(
                name=name, model=str(model), port=free_port(), auto_start=True))
    finally:
        services.close()
    (slow_disk / "tokenizer_config.json").unlink()
    os.mkfifo(slow_disk / "tokenizer_config.json")
    store = Store(data_dir / "manager.db")

    def first_server() -> int | None:
        return next((r.pid for r in read_records(store) if r.profile_name == "a first"
                     and r.pid is not None), None)

    log_file = tmp_path / "dashboard.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--data-dir", str(data_dir), "--port",
             str(free_port()), "--no-warm-spare"], cwd=ROOT, stdout=out,
            stderr=subprocess.STDOUT)
    pid = None
    try:
        pid = wait_for(first_server, 240, "the first auto-started server")
        assert process.poll() is None  # held at the second profile's model
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        wait_for(lambda: gone(pid), 30, "the auto-started server to stop with the dashboard")
        assert code == 128 + signal.SIGTERM  # a normal exit, not one by the signal
        assert "Traceback" not in log_file.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        if pid is not None and not gone(pid):
            os.killpg(pid, signal.SIGKILL)

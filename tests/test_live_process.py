"""Which recorded server is still the process it was (manager/servers/process.live_process):
a restarted dashboard adopts its servers by pid, start time and command line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from manager.servers.process import live_process
from manager.servers.records import ServerRecord
from manager.servers.states import ServerState

#: Where python.org's, Homebrew's and Xcode's Python (framework builds) start: a launcher
#: that execs Python.app's binary, so the running process's argv[0] is not this path.
LAUNCHER = "/Library/Frameworks/Python.framework/Versions/3.11/bin/python3.11"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "--port", "8080"])
    yield process
    process.kill()
    process.wait()


def _record(process: subprocess.Popen[bytes], cmdline: list[str]) -> ServerRecord:
    return ServerRecord(
        profile_id=1, profile_name="p", state=ServerState.READY, pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(), cmdline=tuple(cmdline),
        host="127.0.0.1", port=8080, started_at=0.0, exit_code=None, reason="",
        log_path=None)


def test_a_server_started_through_a_launcher_is_still_found(
        sleeper: subprocess.Popen[bytes]) -> None:
    """Bug: on a Mac with a framework build of Python, the recorded command starts with
    the launcher's path and the running process's with Python.app's, so a restarted
    dashboard took every server it had left running for gone: it kept running, holding
    its memory and port, with nothing managing it."""
    args = [str(a) for a in sleeper.args[1:]]  # type: ignore[index]
    assert live_process(_record(sleeper, [LAUNCHER, *args])) is not None


def test_a_process_running_another_command_is_not_taken_for_the_server(
        sleeper: subprocess.Popen[bytes]) -> None:
    args = [str(a) for a in sleeper.args[1:]]  # type: ignore[index]
    assert live_process(_record(sleeper, [sys.executable, *args])) is not None
    other = [sys.executable, *args[:-1], "9090"]  # another port: another server
    assert live_process(_record(sleeper, other)) is None
    assert live_process(_record(sleeper, [sys.executable])) is None

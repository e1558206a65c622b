"""Model servers run below the dashboard's CPU priority (manager/servers/cpu_priority.py):
a spawned process and every thread it starts, its Linux autogroup, the setting. Real
processes; the spare and the distributed ranks are checked in test_spare.py and
test_distributed_group.py."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from manager.cli.main import build_parser, settings_from_args
from manager.errors import ValidationError
from manager.servers import cpu_priority
from manager.servers.process import spawn
from manager.settings import MAX_NICE, SERVER_NICE, Settings
from tests.server_helpers import autogroup_nice, exited, thread_nices
from tests.waits import wait_for

# Starts a second thread, then says so ("up" spelled apart: the log's first line holds
# this text): the thread is made after the spawn returned.
THREADED = ("import threading, time\n"
            "threading.Thread(target=time.sleep, args=(120,), daemon=True).start()\n"
            "print('u' + 'p', flush=True)\n"
            "time.sleep(120)\n")


def start_threaded(tmp_path: Path, nice: int) -> int:
    log = tmp_path / f"nice{nice}.log"
    popen, _ = spawn([sys.executable, "-c", THREADED], log, os.environ, tmp_path, by="a test",
                     nice=nice)
    wait_for(lambda: "\nup\n" in log.read_text() or popen.poll() is not None, 60, "the thread")
    assert popen.poll() is None, log.read_text()
    return popen.pid


def stop(pid: int) -> None:
    os.killpg(pid, 9)
    wait_for(lambda: exited(pid), 30, "the process to end")


def own_autogroup() -> int:
    own = autogroup_nice(os.getpid())
    return 0 if own is None else own


def test_a_server_and_the_threads_it_starts_run_the_given_steps_below_the_dashboard(
        tmp_path: Path) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    pid = start_threaded(tmp_path, 3)
    try:
        if sys.platform == "linux":
            assert len(os.listdir(f"/proc/{pid}/task")) >= 2
        assert thread_nices(pid) == {min(MAX_NICE, own + 3)}
        # Its own session's group too, where Linux groups the scheduling by session.
        group = autogroup_nice(pid)
        assert group is None or group == min(MAX_NICE, own_autogroup() + 3)
        assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the dashboard keeps its own
    finally:
        stop(pid)


def test_zero_steps_leave_it_at_the_dashboards_priority_and_the_lowest_is_19(
        tmp_path: Path) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    same, lowest = start_threaded(tmp_path, 0), start_threaded(tmp_path, 40)
    try:
        assert thread_nices(same) == {own}
        assert autogroup_nice(same) in (None, 0)  # a new session's group starts at 0
        assert thread_nices(lowest) == {MAX_NICE}
        assert autogroup_nice(lowest) in (None, MAX_NICE)
    finally:
        stop(same)
        stop(lowest)


def test_a_process_that_is_gone_is_logged_not_raised(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    popen, _ = spawn([sys.executable, "-c", "pass"], tmp_path / "log", os.environ, tmp_path,
                     by="a test")
    popen.wait()
    with caplog.at_level(logging.INFO, logger=cpu_priority.__name__):
        cpu_priority.lower(popen.pid, SERVER_NICE)
    assert f"could not lower the CPU priority of pid {popen.pid}" in caplog.text


def test_the_flag_and_the_environment_set_the_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    monkeypatch.delenv("MLX_MANAGER_SERVER_NICE", raising=False)
    assert Settings().server_nice == SERVER_NICE == 5
    assert settings_from_args(parse([])).server_nice == SERVER_NICE
    assert settings_from_args(parse(["serve", "--server-nice", "0"])).server_nice == 0
    monkeypatch.setenv("MLX_MANAGER_SERVER_NICE", "10")
    assert settings_from_args(parse([])).server_nice == 10
    assert settings_from_args(parse(["--server-nice", "2"])).server_nice == 2  # flag wins
    monkeypatch.setenv("MLX_MANAGER_SERVER_NICE", "low")
    with pytest.raises(ValidationError, match="MLX_MANAGER_SERVER_NICE must be a whole "
                                              "number from 0 to 19, not 'low'"):
        settings_from_args(parse([]))
    monkeypatch.delenv("MLX_MANAGER_SERVER_NICE")
    for wrong in ("-1", "20"):
        with pytest.raises(ValidationError, match=f"must be from 0 to 19, not {wrong}"):
            settings_from_args(parse(["--server-nice", wrong]))

"""Model servers run below the dashboard's CPU priority (manager/servers/cpu_priority.py):
a spawned process and every thread it starts, its Linux autogroup, the setting. Real
processes; the spare and the distributed ranks are checked in test_spare.py and
test_distributed_group.py."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from manager.cli.main import build_parser, settings_from_args
from manager.errors import ValidationError
from manager.servers import cpu_priority
from manager.servers.process import spawn
from manager.settings import MAX_NICE, SERVER_NICE, Settings
from tests.server_helpers import (
    all_gone,
    autogroup_nice,
    exited,
    lowered,
    lowered_group,
    thread_nices,
)
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
                     nice_steps=nice)
    wait_for(lambda: "\nup\n" in log.read_text() or popen.poll() is not None, 60, "the thread")
    assert popen.poll() is None, log.read_text()
    return popen.pid


def stop(pid: int) -> None:
    os.killpg(pid, 9)
    wait_for(lambda: exited(pid), 30, "the process to end")


def test_a_server_and_the_threads_it_starts_run_the_given_steps_below_the_dashboard(
        tmp_path: Path) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    own_group = autogroup_nice("self")
    pid = start_threaded(tmp_path, 3)
    try:
        if sys.platform == "linux":
            assert len(os.listdir(f"/proc/{pid}/task")) >= 2
        assert thread_nices(pid) == {lowered(3)}
        # Its own session's group too, where Linux groups the scheduling by session.
        wait_for(lambda: lowered_group(pid, 3), 30, "its session's group")
        assert os.getpriority(os.PRIO_PROCESS, 0) == own  # the dashboard keeps its own
        assert autogroup_nice("self") == own_group
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
        wait_for(lambda: autogroup_nice(lowest) in (None, MAX_NICE), 30, "the lowest group")
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
    assert f"pid {popen.pid} ended before its CPU priority was lowered" in caplog.text


# A dashboard without privileges spawning three servers at once (ranks, spares and
# auto-starts do): it prints their pids, and ends them when its stdin closes.
UNPRIVILEGED = """
import subprocess, sys
from manager.servers import cpu_priority
servers = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(3)]
for server in servers:
    cpu_priority.lower(server.pid, 4)
print(" ".join(str(server.pid) for server in servers), flush=True)
sys.stdin.read()
for server in servers:
    server.kill()
"""


def test_servers_spawned_together_all_get_their_group_lowered_without_privileges() -> None:
    """Linux takes one autogroup nice per 100 ms from a process without CAP_SYS_ADMIN
    and refuses the rest with EAGAIN; the refused ones are tried again."""
    if autogroup_nice("self") is None:
        pytest.skip("this kernel has no autogroups (/proc/self/autogroup)")
    prefix: list[str] = []
    if os.geteuid() == 0:  # root may write at any pace: drop that privilege for the child
        assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop CAP_SYS_ADMIN"
        prefix = ["setpriv", "--bounding-set=-sys_admin"]
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen(  # noqa: S603 - argv list, no shell
        [*prefix, sys.executable, "-c", UNPRIVILEGED], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)})
    assert child.stdout is not None and child.stdin is not None
    pids = [int(pid) for pid in child.stdout.readline().split()]
    try:
        assert len(pids) == 3
        assert all(thread_nices(pid) == {lowered(4)} for pid in pids)
        wait_for(lambda: all(lowered_group(pid, 4) for pid in pids), 30,
                 "every server's group lowered, one per 100 ms")
    finally:
        child.stdin.close()
        child.wait(30)
        wait_for(lambda: all_gone(pids), 30, "the servers to end")


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

"""A start handed to a spare that is still importing: everything the spare writes from
then on is in the server's log, an import that fails included, whether the spare moved
its output before it ended or not. Real spare interpreters
(manager/servers/spare_main.py) import a stand-in server module that waits on a FIFO,
so the hand-over lands in the middle of their imports."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from manager.servers import spare as spare_module
from manager.servers.profiles import Backend
from manager.servers.spare import SparePool
from tests.waits import wait_for

MODULE = "held_server"
TRACEBACK = "RuntimeError: this server module cannot load"


@dataclass
class Held:
    """A pool whose spare is halfway through importing MODULE."""

    pool: SparePool
    fifo: Path  # opened for writing: the imports go on
    spare_log: Path
    server_log: Path

    def take(self):  # noqa: ANN201 - the Popen
        handed = self.pool.take(Backend.MLX_LM, [sys.executable, "-m", MODULE],
                                self.server_log, dict(os.environ), self.server_log.parent,
                                by="alice@example.com")
        assert handed is not None
        return handed[0]

    def go_on(self) -> None:
        with open(self.fifo, "w"):
            pass

    def server_text(self) -> str:
        return self.server_log.read_text() if self.server_log.exists() else ""


def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fails: bool) -> Iterator[Held]:
    modules = tmp_path / "modules"
    modules.mkdir()
    fifo = tmp_path / "go-on"
    os.mkfifo(fifo)
    (modules / f"{MODULE}.py").write_text(textwrap.dedent(f"""
        import sys
        if __name__ != "__main__":  # the spare's import; run again as __main__ to serve
            print("loading the weights", file=sys.stderr, flush=True)
            with open({str(fifo)!r}) as held:
                held.read()
            print("still importing after the hand-over", file=sys.stderr, flush=True)
            if {fails!r}:
                raise RuntimeError("this server module cannot load")
        else:
            print("serving", flush=True)
    """))
    monkeypatch.setenv("PYTHONPATH", str(modules))
    monkeypatch.setattr(spare_module, "server_module", lambda backend: MODULE)
    logs = tmp_path / "logs"
    logs.mkdir()
    pool = SparePool(sys.executable, tmp_path / "hub", logs)
    try:
        pool.start({Backend.MLX_LM})
        (spare_log,) = wait_for(lambda: [p for p in logs.glob("spare-*.log")
                                         if "loading the weights" in p.read_text()],
                                30, "the spare halfway through its imports")
        yield Held(pool, fifo, spare_log, logs / "server.log")
    finally:
        pool.close()


@pytest.fixture
def failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    yield from held(tmp_path, monkeypatch, fails=True)


@pytest.fixture
def working(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    yield from held(tmp_path, monkeypatch, fails=False)


def test_an_import_that_fails_right_after_the_hand_over_says_why_in_the_servers_log(
        failing: Held) -> None:
    popen = failing.take()
    failing.go_on()  # the failure may come before or after the spare moves its output
    assert popen.wait(timeout=30) == 1
    text = wait_for(lambda: TRACEBACK in (t := failing.server_text()) and t, 30,
                    "the traceback in the server's log")
    assert text.startswith("# mlx-manager: ") and "warm spare interpreter" in text
    for line in ("loading the weights", "still importing after the hand-over", TRACEBACK):
        assert text.count(line) == 1, (line, text)
    wait_for(lambda: not failing.spare_log.exists(), 30, "the spare's own log removed")


def test_imports_that_end_after_the_hand_over_run_the_server_with_all_its_output(
        working: Held) -> None:
    popen = working.take()
    # The spare moved its output (its own log is removed once it said so)...
    wait_for(lambda: not working.spare_log.exists(), 30, "the spare's own log removed")
    working.go_on()  # ...then its imports end and it runs the server
    assert popen.wait(timeout=30) == 0
    lines = working.server_text().splitlines()
    for line in ("loading the weights", "still importing after the hand-over", "serving"):
        assert lines.count(line) == 1, (line, lines)
    assert "warm" not in lines  # stdout is the server's log by then


def test_a_spare_that_ends_before_moving_its_output_leaves_the_rest_to_the_dashboard(
        failing: Held) -> None:
    (spare,) = failing.pool.views()
    assert spare.pid is not None
    os.kill(spare.pid, signal.SIGSTOP)  # it cannot read its order and move its output
    wait_for(lambda: all_stopped(spare.pid), 30, "every thread of the spare stopped")
    server = failing.take()
    with failing.spare_log.open("a") as its_stderr:  # its last words, after the copy
        its_stderr.write("a line written after the copy\n")
    server.kill()
    server.wait(timeout=30)
    # What the supervisor waits for before it reads the gone server's log tail.
    failing.pool.settled(server.pid)
    text = failing.server_text()
    assert "a line written after the copy" in text, text
    assert text.count("loading the weights") == 1
    assert not failing.spare_log.exists()


def test_a_spare_log_that_cannot_be_removed_does_not_hold_up_the_servers_exit(
        failing: Held, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The supervisor waits (`settled`) before it reads a gone server's log tail: a
    failure while the dashboard settles the spare's log must still end that wait."""
    real_unlink = Path.unlink

    def stuck(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith("spare-"):
            raise PermissionError(f"cannot remove {self}")
        real_unlink(self, missing_ok=missing_ok)

    (spare,) = failing.pool.views()
    assert spare.pid is not None
    os.kill(spare.pid, signal.SIGSTOP)
    wait_for(lambda: all_stopped(spare.pid), 30, "every thread of the spare stopped")
    monkeypatch.setattr(Path, "unlink", stuck)
    server = failing.take()
    server.kill()
    server.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger=spare_module.__name__):
        failing.pool.settled(server.pid)
    assert "could not settle the log of spare" in caplog.text
    assert "not in its server's log yet" not in caplog.text


def all_stopped(pid: int) -> bool:
    """Every thread of `pid` stopped (kill() returns before a thread on another core,
    or one just woken, has stopped)."""
    return all(thread.read_text().rsplit(")", 1)[1].split()[0] == "T"
               for thread in Path(f"/proc/{pid}/task").glob("*/stat"))


def test_a_spare_whose_dashboard_is_gone_still_becomes_its_server(tmp_path: Path) -> None:
    """A dashboard that keeps its servers (service mode) may exit right after a
    hand-over: the spare's `warm` or `handed` line then meets a closed pipe, whichever
    comes first (its imports ending, or its order being read), and it goes on."""
    (tmp_path / "quick_server.py").write_text(
        'if __name__ == "__main__":\n    print("serving", flush=True)\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    spare = subprocess.Popen(  # noqa: S603 - as SparePool starts one, minus the dashboard
        [sys.executable, "-m", "manager.servers.spare_main", "quick_server"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        cwd=Path(spare_module.__file__).parents[2])
    assert spare.stdin is not None and spare.stdout is not None
    spare.stdout.close()  # the dashboard is gone
    server_log = tmp_path / "server.log"
    spare.stdin.write(json.dumps({"argv": [sys.executable, "-m", "quick_server"],
                                  "log": str(server_log), "env": env,
                                  "cwd": str(tmp_path)}).encode() + b"\n")
    spare.stdin.close()
    assert spare.wait(timeout=30) == 0
    assert server_log.read_text().splitlines() == ["serving"]


def test_the_logs_of_spares_an_earlier_dashboard_left_are_removed_at_the_start(
        tmp_path: Path) -> None:
    """A dashboard that ended between a hand-over and the spare moving its output."""
    logs = tmp_path / "logs"
    logs.mkdir()
    stale = logs / "spare-mlx_lm-1.log"
    stale.write_text("old\n")
    server_log = logs / "server-1-1.log"
    server_log.write_text("a server's\n")
    pool = SparePool(sys.executable, tmp_path / "hub", logs, enabled=False)
    try:
        pool.start({Backend.MLX_LM})  # off: no spare, and still the clean-up
        assert not stale.exists() and server_log.exists()
    finally:
        pool.close()

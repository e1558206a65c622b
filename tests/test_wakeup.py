"""The readiness watch's wake-up: a write to the server's log or the end of its process
wakes it (no timer). Each wait below is given far longer than any test runs, so
returning at all means the event woke it."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from manager.servers.wakeup import ChildWatch

NEVER_S = 600.0


@pytest.mark.skipif(sys.platform != "linux", reason="inotify and pidfd are Linux's")
def test_a_log_write_or_the_process_ending_wakes_the_watch(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("# mlx-manager: header\n")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],  # noqa: S603
                             stdin=subprocess.PIPE)
    watch = ChildWatch(log, child.pid)
    try:
        assert watch.event_driven
        def write() -> None:
            with log.open("a") as handle:
                handle.write("Starting httpd\n")

        writer = threading.Thread(target=write)
        writer.start()
        watch.wait(NEVER_S)  # woken by the write
        writer.join()
        assert child.stdin is not None
        child.stdin.close()  # the child exits
        watch.wait(NEVER_S)  # woken by the exit
        assert child.wait() == 0
    finally:
        watch.close()
        child.kill()


def test_a_log_it_cannot_watch_leaves_a_timer(tmp_path: Path) -> None:
    watch = ChildWatch(tmp_path / "missing.log", None)  # e.g. an adopted server's lost log
    assert not watch.event_driven
    watch.wait(0)  # returns after its timeout
    watch.close()

"""A start handed to a spare that is still importing: everything the spare writes from
then on, and an import that fails after the hand-over, is in the server's log. A real
spare interpreter (manager/servers/spare_main.py) importing a stand-in server module
that waits on a FIFO, so the hand-over lands in the middle of its imports."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from manager.servers import spare as spare_module
from manager.servers.profiles import Backend
from manager.servers.spare import SparePool
from tests.waits import wait_for

MODULE = "held_server"


def test_an_import_that_fails_after_the_hand_over_says_why_in_the_servers_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    fifo = tmp_path / "go-on"
    os.mkfifo(fifo)
    (modules / f"{MODULE}.py").write_text(textwrap.dedent(f"""
        import sys
        print("loading the weights", file=sys.stderr, flush=True)
        with open({str(fifo)!r}) as held:  # until the test opens the other end
            held.read()
        print("still importing after the hand-over", file=sys.stderr, flush=True)
        raise RuntimeError("this server module cannot load")
    """))
    monkeypatch.setenv("PYTHONPATH", str(modules))
    monkeypatch.setattr(spare_module, "server_module", lambda backend: MODULE)
    logs = tmp_path / "logs"
    pool = SparePool(sys.executable, tmp_path / "hub", logs)
    try:
        pool.start({Backend.MLX_LM})
        (spare_log,) = wait_for(lambda: [p for p in logs.glob("spare-*.log")
                                         if "loading the weights" in p.read_text()],
                                30, "the spare halfway through its imports")
        server_log = logs / "server.log"
        handed = pool.take(Backend.MLX_LM, [sys.executable, "-m", MODULE], server_log,
                           dict(os.environ), tmp_path, by="alice@example.com")
        assert handed is not None
        popen, _ = handed
        with open(fifo, "w"):  # the imports go on, and fail
            pass
        assert popen.wait(timeout=30) == 1
        text = server_log.read_text()
        assert text.startswith("# mlx-manager: ") and "warm spare interpreter" in text
        for line in ("loading the weights", "still importing after the hand-over",
                     "RuntimeError: this server module cannot load"):
            assert text.count(line) == 1, (line, text)
        assert "warm" not in text.splitlines()  # `warm` was not written on stdout (the log)
        wait_for(lambda: not spare_log.exists(), 30, "the spare's own log to be removed")
    finally:
        pool.close()

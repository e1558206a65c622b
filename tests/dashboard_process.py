"""A real dashboard process (`python app.py`) for tests: start it on a data dir, read its
log, ask its supervisor, press Ctrl-C. Shared by the tests of the dashboard as a process
and of the CLI acting through one."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manager.cli.instance import read_control
from manager.cli.remote import Dashboard
from manager.net import free_port
from manager.servers.records import read_records
from manager.store import Store
from tests.waits import wait_for

ROOT = Path(__file__).resolve().parents[1]
#: What the dashboard logs once it serves.
SERVING = r"MLX Model Manager on http"


@dataclass
class DashboardProcess:
    process: subprocess.Popen[bytes]
    log_file: Path
    data_dir: Path
    url: str

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.log().splitlines()

    def wait_line(self, pattern: str, after: int = 0, timeout: float = 240) -> int:
        """Index of the first log line after `after` matching `pattern` (the timeout only
        guards against a hang)."""
        regex = re.compile(pattern)

        def found() -> tuple[int] | None:
            index = next((i for i, line in enumerate(self.lines()) if i >= after
                          and regex.search(line)), None)
            return None if index is None else (index,)

        return wait_for(found, timeout, f"a log line matching {pattern!r}")[0]

    def server_pid(self, profile: str) -> int:
        records = {r.profile_name: r for r in read_records(Store(self.data_dir / "manager.db"))}
        pid = records[profile].pid
        assert pid is not None
        return pid

    def servers(self) -> dict[str, dict[str, Any]]:
        """The dashboard supervisor's own view (what its Servers tab shows)."""
        credential = read_control(self.data_dir)
        assert credential is not None
        client = Dashboard(credential)
        try:
            return {s["profile"]: s for s in client.call("GET", "/servers")["servers"]}
        finally:
            client.close()

    def interrupt(self) -> int:
        """Ctrl-C, and the exit code (the timeout only guards against a hang)."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def end(self) -> None:
        """Ctrl-C (it stops the servers it runs), or a kill if that hangs."""
        if self.process.poll() is not None:
            return
        try:
            self.interrupt()
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def launch(root: Path, data_dir: Path, *flags: str,
           env: Mapping[str, str] | None = None) -> DashboardProcess:
    """`python app.py` on `data_dir` and a free port, its log in `root`, once it serves."""
    port = free_port()
    log_file = root / "dashboard.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(port),
             *flags], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env=None if env is None else dict(env))
    running = DashboardProcess(process, log_file, data_dir, f"http://127.0.0.1:{port}")
    try:
        running.wait_line(SERVING)
    except BaseException:
        running.end()
        raise
    return running

"""`mlx-manager pull`, `ls`, `rm` and `ps` as real processes against the local hub
(issue 15: the terminal habits of Ollama and LM Studio users)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from manager.cli.instance import hold_data_dir
from tests.fixtures.local_hub import LocalHub
from tests.test_cli import CliResult, run_cli
from tests.test_downloads import WEIGHTS, fake_safetensors
from tests.waits import wait_for

ROOT = Path(__file__).resolve().parents[1]
BIG = "mlx-community/pull-qwen3"


def command(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "app.py"), *args, "--data-dir", str(data_dir)]


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(data_dir, *args), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def downloads(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "manager.db") as db:
        return db.execute("SELECT repo_id, status FROM downloads ORDER BY id").fetchall()


def test_pull_ls_rm_and_ps(tmp_path: Path, hf_hub_env: Path, hub: LocalHub,
                           hub_repos: dict[str, str]) -> None:
    """In-process (the same parser and command code; a new interpreter per command costs
    seconds): the Ctrl-C test below runs `pull` as a real process."""
    data_dir = tmp_path / "data"

    def cli(data_dir: Path, *args: str) -> CliResult:
        return run_cli(*args, data_dir=data_dir)

    repo = hub_repos["text"]
    assert "No models on this machine yet" in cli(data_dir, "ls").stdout
    pulled = cli(data_dir, "pull", repo)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.splitlines()[-1].startswith(f"{repo}: downloaded (")
    assert "100%" in pulled.stdout  # the progress bar's last line
    # The same download jobs the Models tab lists.
    assert downloads(data_dir) == [(repo, "done")]
    listed = cli(data_dir, "ls").stdout.splitlines()
    assert listed[0].split() == ["NAME", "SIZE", "BADGES"]
    (row,) = [line for line in listed[1:] if line.startswith(repo)]
    assert "KB" in row and "qwen3" in row
    status = cli(data_dir, "status").stdout
    assert cli(data_dir, "ps").stdout == status
    removed = cli(data_dir, "rm", repo)
    assert removed.returncode == 0 and removed.stdout.startswith(f"Deleted {repo} (")
    assert repo not in cli(data_dir, "ls").stdout
    missing = cli(data_dir, "rm", repo)
    assert missing.returncode == 1 and "No model called" in missing.stderr


@pytest.mark.slow  # a real process, a throttled transfer
def test_ctrl_c_pauses_a_pull_and_the_next_pull_resumes_from_the_bytes_on_disk(
        tmp_path: Path, hf_hub_env: Path, hub: LocalHub, tiny_models: dict[str, Path]
        ) -> None:
    files = {p.name: p.read_bytes() for p in tiny_models["text"].iterdir() if p.is_file()}
    files[WEIGHTS] = fake_safetensors(1_500_000)
    hub.add_repo(BIG, files)
    hub.throttle_bytes_per_sec = 200_000
    data_dir = tmp_path / "data"
    blobs = hf_hub_env / "hub" / ("models--" + BIG.replace("/", "--")) / "blobs"

    def partial_bytes() -> int:
        return sum(p.stat().st_size for p in blobs.glob("*.incomplete")) if blobs.exists() \
            else 0

    pull = subprocess.Popen(command(data_dir, "pull", BIG), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    wait_for(lambda: partial_bytes() > 100_000, 120, "part of the weights to arrive")
    pull.send_signal(signal.SIGINT)
    out, err = pull.communicate(timeout=120)
    assert pull.returncode == 130, err
    assert "Paused at" in out and "run the same command to resume" in out
    assert "Traceback" not in err
    kept = max(p.stat().st_size for p in blobs.glob("*.incomplete"))
    assert downloads(data_dir) == [(BIG, "paused")]
    hub.throttle_bytes_per_sec = None
    hub.clear_requests()
    resumed = cli(data_dir, "pull", BIG)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"Resuming {BIG} from ")
    ranges = [r.range for r in hub.requests if r.method == "GET"
              and r.path.endswith("/" + WEIGHTS)]
    assert ranges == [f"bytes={kept}-"]
    assert downloads(data_dir) == [(BIG, "done")]


def test_pull_and_rm_refuse_while_something_that_takes_no_commands_holds_the_data_dir(
        tmp_path: Path, hf_hub_env: Path, hub_repos: dict[str, str]) -> None:
    """A restore or a check-tools run holds the data dir and writes no control file; a
    dashboard's own commands: tests/test_cli_through_dashboard.py."""
    data_dir = tmp_path / "data"
    with hold_data_dir(data_dir, "mlx-manager restore"):
        refused = run_cli("pull", hub_repos["text"], data_dir=data_dir)
        assert run_cli("rm", "x", data_dir=data_dir).returncode == 1
    assert refused.returncode == 1
    assert (f"is in use by mlx-manager restore (pid {os.getpid()}), which takes no "
            "commands. Wait until it ends") in refused.stderr

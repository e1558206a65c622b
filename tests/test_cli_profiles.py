"""`mlx-manager profiles list|add|rm` and `mlx-manager status` on a data dir."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from manager.cli.main import build_parser, run_command, settings_from_args
from manager.net import free_port
from manager.servers.supervisor import ServerState
from manager.services import Services
from manager.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def cli(_capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = run_command(args, settings_from_args(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_add_list_rm_with_data_dir_before_or_after(tmp_path: Path, tiny_models: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    port = str(free_port())
    code, out, _ = cli(capsys, "--data-dir", data, "profiles", "add", "tiny", "--model",
                       str(tiny_models["text"]), "--port", port, "--system-prompt", "Be brief.",
                       "--max-tokens", "64", "--auto-start")
    assert code == 0 and f"Created profile 'tiny': mlx_lm on 127.0.0.1:{port}." in out
    code, out, _ = cli(capsys, "profiles", "add", "eyes", "--model", str(tiny_models["vision"]),
                       "--data-dir", data)
    assert code == 0 and "mlx_vlm" in out
    code, out, _ = cli(capsys, "profiles", "list", "--data-dir", data)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "BACKEND", "HOST", "PORT", "AUTO-START", "MODEL"]
    assert lines[1].split()[:2] == ["eyes", "mlx_vlm"]
    assert lines[2].split()[:5] == ["tiny", "mlx_lm", "127.0.0.1", port, "yes"]
    # The same checks as the tab, with the flag named.
    code, _, err = cli(capsys, "--data-dir", data, "profiles", "add", "tiny", "--model",
                       str(tiny_models["text"]))
    assert code == 1 and err.strip() == "error: NAME: A profile named 'tiny' already exists."
    code, _, err = cli(capsys, "--data-dir", data, "profiles", "add", "x", "--model", "/nope")
    assert code == 1 and "--model: No model folder at /nope." in err
    code, _, err = cli(capsys, "--data-dir", data, "profiles", "add", "x", "--model",
                       str(tiny_models["text"]), "--port", "80")
    assert code == 1 and "--port: Port must be between 1024 and 65535." in err
    code, out, _ = cli(capsys, "--data-dir", data, "profiles", "rm", "eyes")
    assert code == 0 and "Deleted profile 'eyes'." in out
    code, _, err = cli(capsys, "--data-dir", data, "profiles", "rm", "eyes")
    assert code == 1 and "No profile named 'eyes'" in err


def test_a_running_dashboard_sees_profiles_added_by_the_cli(
        services: Services, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(services.settings.data_dir)
    assert services.profiles.list() == []
    code, _, _ = cli(capsys, "profiles", "add", "from-cli", "--model", str(tiny_models["text"]),
                     "--data-dir", data, "--port", str(free_port()))
    assert code == 0
    assert [p.name for p in services.profiles.list()] == ["from-cli"]


@pytest.mark.slow
def test_status_prints_what_the_dashboard_runs(tmp_path: Path, tiny_models: dict[str, Path],
                                               hf_home: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), warm_spare=False)
    services = Services.create(settings)
    try:
        from manager.servers.profiles import ProfileSpec

        profile = services.profiles.create(None, ProfileSpec(
            name="served", model=str(tiny_models["text"]), port=free_port()))
        services.supervisor.start(profile.id)
        snap = services.supervisor.wait_ready(profile.id, 90)
        # A separate process, like a person typing in another terminal.
        result = subprocess.run(
            [sys.executable, str(ROOT / "app.py"), "status", "--data-dir", str(settings.data_dir)],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        header, row = result.stdout.splitlines()
        assert header.split() == ["PROFILE", "STATE", "PID", "PORT", "UPTIME", "MEMORY"]
        cells = row.split()
        assert cells[:4] == ["served", "ready", str(snap.pid), str(profile.port)]
        assert cells[-1] == "MB" and float(cells[-2]) > 10
        # The CLI did not take over the server: it still runs, under the dashboard.
        assert services.supervisor.snapshot(profile.id).state is ServerState.READY
        services.supervisor.stop(profile.id)
        # In-process now (the same command code): the separate process was shown above.
        code, out, _ = cli(capsys, "status", "--data-dir", str(settings.data_dir))
        assert (code, out.strip()) == (0, "No servers running.")
    finally:
        services.close()

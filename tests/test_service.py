"""`mlx-manager service`: the systemd unit and the launchd agent, generated for real paths and
checked by the tools that read them (systemd-analyze verify, plistlib); install, uninstall
and status in a throwaway home folder.

There is no user service manager in a test machine, so the commands that would talk to
one go through a recording runner; with no systemctl at all, the command says what to run.
"""

from __future__ import annotations

import argparse
import configparser
import io
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from manager.cli.main import build_parser, settings_from_args
from manager.cli.service import (
    LAUNCHD_LABEL,
    Flavour,
    ServiceHost,
    ServiceSpec,
    launchd_plist,
    run,
    systemd_unit,
)
from manager.errors import ManagerError
from manager.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def spec_in(tmp_path: Path) -> ServiceSpec:
    # A data dir with a space, a percent sign and a dollar: the quoting must hold.
    data_dir = tmp_path / "my data %h $HOME"
    return ServiceSpec.for_settings(Settings(data_dir=data_dir), port=9123)


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string(text)
    return parser


def systemd_argv(exec_start: str) -> list[str]:
    """ExecStart as systemd splits it (quotes, then %% and $$ unescaped)."""
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(exec_start)]


def test_the_systemd_unit_runs_this_python_on_app_py_and_restarts_on_failure(
        tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    unit = parse_unit(systemd_unit(spec))
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert systemd_argv(service["ExecStart"]) == [
        sys.executable, str(ROOT / "app.py"), "serve", "--keep-servers",
        "--data-dir", str(spec.data_dir), "--port", "9123"]
    assert service["Restart"] == "on-failure"
    log = str(spec.data_dir / "logs" / "service.log").replace("%", "%%")
    assert service["StandardOutput"] == service["StandardError"] == f"append:{log}"
    assert service["WorkingDirectory"] == str(ROOT)
    assert unit["Install"]["WantedBy"] == "default.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (the structure test still runs)")
def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "mlx-manager.service"
    path.write_text(systemd_unit(spec_in(tmp_path)))
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and bad values too; it only warns about them.
    assert result.stderr.strip() == "" and result.stdout.strip() == ""


def test_systemd_analyze_would_notice_a_broken_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / "broken.service"
    path.write_text(systemd_unit(spec_in(tmp_path)).replace("Restart=on-failure",
                                                            "Restart=sometimes"))
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert "restart specifier" in result.stderr


def test_the_launchd_agent_round_trips_through_plistlib(tmp_path: Path) -> None:
    spec = spec_in(tmp_path)
    agent = plistlib.loads(launchd_plist(spec))
    assert agent["Label"] == LAUNCHD_LABEL
    assert agent["ProgramArguments"] == spec.argv() == [
        sys.executable, str(ROOT / "app.py"), "serve", "--keep-servers",
        "--data-dir", str(spec.data_dir), "--port", "9123"]
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["RunAtLoad"] is True
    log = str(spec.data_dir / "logs" / "service.log")
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == log
    assert plistlib.dumps(agent) == launchd_plist(spec)


class Recorder:
    """Stands in for systemctl/launchctl (no user service manager runs in a test machine)."""

    def __init__(self, fail_with: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail_with = fail_with

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        return (1, self.fail_with) if self.fail_with else (0, "active (running)")


def cli(argv: list[str], host: ServiceHost, data_dir: Path) -> tuple[int, str]:
    args: argparse.Namespace = build_parser().parse_args([*argv, "--data-dir", str(data_dir)])
    out = io.StringIO()
    code = run(args, settings_from_args(args), out, host=host)
    return code, out.getvalue()


def test_install_status_uninstall_with_systemctl(tmp_path: Path) -> None:
    recorder = Recorder()
    host = ServiceHost(Flavour.SYSTEMD, tmp_path / "home", run=recorder,
                       which=lambda name: f"/usr/bin/{name}")
    data_dir = tmp_path / "data"
    code, said = cli(["--port", "9000", "service", "install"], host, data_dir)
    unit = tmp_path / "home" / ".config" / "systemd" / "user" / "mlx-manager.service"
    assert code == 0 and f"Wrote {unit}" in said
    assert "--port 9000" in parse_unit(unit.read_text())["Service"]["ExecStart"].replace('"', "")
    assert (data_dir / "logs").is_dir()
    assert recorder.calls == [["systemctl", "--user", "daemon-reload"],
                              ["systemctl", "--user", "enable", "--now", "mlx-manager.service"]]
    code, said = cli(["service", "status"], host, data_dir)
    assert code == 0 and "active (running)" in said
    code, said = cli(["service", "uninstall"], host, data_dir)
    assert code == 0 and not unit.exists()
    assert recorder.calls[-2:] == [
        ["systemctl", "--user", "disable", "--now", "mlx-manager.service"],
        ["systemctl", "--user", "daemon-reload"]]
    code, said = cli(["service", "status"], host, data_dir)
    assert code == 3 and "Not installed" in said


def test_without_systemctl_install_writes_the_unit_and_says_what_to_run(
        tmp_path: Path) -> None:
    recorder = Recorder()
    host = ServiceHost(Flavour.SYSTEMD, tmp_path / "home", run=recorder, which=lambda _: None)
    code, said = cli(["service", "install"], host, tmp_path / "data")
    assert code == 0 and host.path.is_file()
    assert "systemctl is not available here; run these yourself:" in said
    assert "systemctl --user enable --now mlx-manager.service" in said
    assert recorder.calls == []


def test_an_unreachable_user_manager_is_reported_with_what_to_run_later(
        tmp_path: Path) -> None:
    recorder = Recorder(fail_with="Failed to connect to bus: No medium found")
    host = ServiceHost(Flavour.SYSTEMD, tmp_path / "home", run=recorder,
                       which=lambda name: f"/usr/bin/{name}")
    code, said = cli(["service", "install"], host, tmp_path / "data")
    assert code == 0 and host.path.is_file()
    assert "Failed to connect to bus" in said
    assert "systemctl --user enable --now mlx-manager.service" in said
    assert len(recorder.calls) == 1  # it stops at the first failure


def test_macos_install_writes_a_launch_agent(tmp_path: Path) -> None:
    recorder = Recorder()
    host = ServiceHost(Flavour.LAUNCHD, tmp_path / "home", run=recorder,
                       which=lambda name: f"/bin/{name}", uid=501)
    data_dir = tmp_path / "data"
    code, said = cli(["service", "install"], host, data_dir)
    agent_path = tmp_path / "home" / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    assert code == 0 and f"Wrote {agent_path}" in said
    agent = plistlib.loads(agent_path.read_bytes())
    assert agent["ProgramArguments"][-2:] == ["--data-dir", str(data_dir.resolve())]
    assert recorder.calls == [["launchctl", "bootstrap", "gui/501", str(agent_path)]]
    cli(["service", "uninstall"], host, data_dir)
    assert recorder.calls[-1] == ["launchctl", "bootout", f"gui/501/{LAUNCHD_LABEL}"]
    assert not agent_path.exists()


def test_other_platforms_are_told_plainly() -> None:
    assert Flavour.of_platform("linux") is Flavour.SYSTEMD
    assert Flavour.of_platform("darwin") is Flavour.LAUNCHD
    with pytest.raises(ManagerError, match="needs Linux \\(systemd\\) or macOS"):
        Flavour.of_platform("win32")

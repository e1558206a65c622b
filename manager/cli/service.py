"""`mlx-manager service install|uninstall|status`: run the dashboard as a login service.

Linux: a systemd user unit (~/.config/systemd/user/mlx-manager.service). macOS: a launchd
agent (~/Library/LaunchAgents/<label>.plist). Both start this interpreter on this app.py
with the data dir, restart it when it fails and log to <data dir>/logs/. Making the files
is pure (tested on both flavours anywhere); install, uninstall and status then ask
systemctl --user / launchctl when they are there and otherwise say what to run.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TextIO

from manager.errors import ManagerError
from manager.settings import Settings

SERVICE_NAME = "mlx-manager"
LAUNCHD_LABEL = "local.mlx-manager"
LOG_NAME = "service.log"
#: Seconds between a crash and the restart (systemd RestartSec, launchd ThrottleInterval).
RESTART_DELAY_S = 5

#: Runs a command, returning (exit code, output); injectable for tests.
Runner = Callable[[Sequence[str]], tuple[int, str]]


class Flavour(Enum):
    SYSTEMD = "systemd"
    LAUNCHD = "launchd"

    @classmethod
    def of_platform(cls, platform: str = sys.platform) -> Flavour:
        if platform == "darwin":
            return cls.LAUNCHD
        if platform.startswith("linux"):
            return cls.SYSTEMD
        raise ManagerError(f"Service mode needs Linux (systemd) or macOS (launchd), not "
                           f"{platform}. Run `mlx-manager` from a terminal instead.")


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs: this interpreter on this app.py, with these settings."""

    python: Path
    app: Path
    data_dir: Path
    host: str | None = None
    port: int | None = None

    @classmethod
    def for_settings(cls, settings: Settings, *, host: str | None = None,
                     port: int | None = None) -> ServiceSpec:
        # app.py sits beside the manager package, in a checkout and when installed.
        app = Path(__file__).resolve().parents[2] / "app.py"
        return cls(python=Path(sys.executable), app=app, data_dir=settings.data_dir,
                   host=host, port=port)

    def argv(self) -> list[str]:
        # The service keeps its model servers across its own restarts (they are adopted).
        argv = [str(self.python), str(self.app), "serve", "--keep-servers", "--data-dir",
                str(self.data_dir)]
        if self.host is not None:
            argv += ["--host", self.host]
        if self.port is not None:
            argv += ["--port", str(self.port)]
        return argv

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / LOG_NAME


def unit_path(flavour: Flavour, home: Path) -> Path:
    if flavour is Flavour.SYSTEMD:
        return home / ".config" / "systemd" / "user" / f"{SERVICE_NAME}.service"
    return home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


# -- the files (pure) -----------------------------------------------------------------------


def _systemd_word(value: str) -> str:
    """One ExecStart argument: quoted, with systemd's specifier and variable signs doubled."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("%", "%%").replace("$", "$$") + '"'


def _systemd_path(path: Path) -> str:
    return str(path).replace("%", "%%")


def systemd_unit(spec: ServiceSpec) -> str:
    return "\n".join([
        "[Unit]",
        "Description=MLX Model Manager dashboard",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={_systemd_path(spec.app.parent)}",
        "ExecStart=" + " ".join(_systemd_word(arg) for arg in spec.argv()),
        "Restart=on-failure",
        f"RestartSec={RESTART_DELAY_S}",
        # Model servers are children; the dashboard's own exit leaves them for the next
        # start to adopt, so systemd must not kill the whole group when it stops.
        "KillMode=process",
        "Environment=PYTHONUNBUFFERED=1",
        f"StandardOutput=append:{_systemd_path(spec.log_path)}",
        f"StandardError=append:{_systemd_path(spec.log_path)}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def launchd_plist(spec: ServiceSpec) -> bytes:
    return plistlib.dumps({
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": spec.argv(),
        "WorkingDirectory": str(spec.app.parent),
        "RunAtLoad": True,
        # Restart after a failure, not after a clean exit (Ctrl-C, `launchctl bootout`).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_DELAY_S,
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
        "StandardOutPath": str(spec.log_path),
        "StandardErrorPath": str(spec.log_path),
        "ProcessType": "Interactive",
    })


def service_file(flavour: Flavour, spec: ServiceSpec) -> bytes:
    if flavour is Flavour.SYSTEMD:
        return systemd_unit(spec).encode()
    return launchd_plist(spec)


# -- install / uninstall / status -------------------------------------------------------------


def run_quietly(argv: Sequence[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


@dataclass(frozen=True)
class ServiceHost:
    """Where and how: the flavour, the home folder and the tools (all injectable)."""

    flavour: Flavour
    home: Path
    run: Runner = run_quietly
    which: Callable[[str], str | None] = shutil.which
    uid: int = os.getuid() if hasattr(os, "getuid") else 0

    @property
    def path(self) -> Path:
        return unit_path(self.flavour, self.home)

    def install_commands(self) -> list[list[str]]:
        if self.flavour is Flavour.SYSTEMD:
            return [["systemctl", "--user", "daemon-reload"],
                    ["systemctl", "--user", "enable", "--now", f"{SERVICE_NAME}.service"]]
        return [["launchctl", "bootstrap", f"gui/{self.uid}", str(self.path)]]

    def uninstall_commands(self) -> list[list[str]]:
        if self.flavour is Flavour.SYSTEMD:
            return [["systemctl", "--user", "disable", "--now", f"{SERVICE_NAME}.service"]]
        return [["launchctl", "bootout", f"gui/{self.uid}/{LAUNCHD_LABEL}"]]

    def after_uninstall_commands(self) -> list[list[str]]:
        if self.flavour is Flavour.SYSTEMD:
            return [["systemctl", "--user", "daemon-reload"]]
        return []

    def status_command(self) -> list[str]:
        if self.flavour is Flavour.SYSTEMD:
            return ["systemctl", "--user", "status", "--no-pager", f"{SERVICE_NAME}.service"]
        return ["launchctl", "print", f"gui/{self.uid}/{LAUNCHD_LABEL}"]

    def tool(self) -> str:
        return "systemctl" if self.flavour is Flavour.SYSTEMD else "launchctl"

    def run_all(self, commands: list[list[str]], out: TextIO) -> bool:
        """Runs the commands if the tool is here; otherwise (or when one fails) prints
        what to run by hand. True if they all ran."""
        if not commands:
            return True
        if self.which(self.tool()) is None:
            print(f"{self.tool()} is not available here; run these yourself:", file=out)
            _print_commands(commands, out)
            return False
        for index, argv in enumerate(commands):
            code, output = self.run(argv)
            if code != 0:
                print(f"`{shlex.join(argv)}` failed ({code}): {output}", file=out)
                print("Once the user service manager is reachable, run:", file=out)
                _print_commands(commands[index:], out)
                return False
        return True


def _print_commands(commands: list[list[str]], out: TextIO) -> None:
    for argv in commands:
        print(f"  {shlex.join(argv)}", file=out)


def install(spec: ServiceSpec, host: ServiceHost, out: TextIO) -> int:
    path = host.path
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(service_file(host.flavour, spec))
    print(f"Wrote {path}", file=out)
    print(f"It runs: {shlex.join(spec.argv())}", file=out)
    print(f"Logs go to {spec.log_path}", file=out)
    if host.run_all(host.install_commands(), out):
        print(f"The dashboard now starts with your login session ({host.tool()}).", file=out)
    return 0


def uninstall(host: ServiceHost, out: TextIO) -> int:
    path = host.path
    if not path.exists():
        print(f"No service is installed ({path} does not exist).", file=out)
        return 0
    host.run_all(host.uninstall_commands(), out)
    path.unlink()
    print(f"Removed {path}", file=out)
    host.run_all(host.after_uninstall_commands(), out)
    return 0


def status(host: ServiceHost, out: TextIO) -> int:
    path = host.path
    if not path.exists():
        print(f"Not installed ({path} does not exist). Install it with "
              "`mlx-manager service install`.", file=out)
        return 3
    print(f"Installed: {path}", file=out)
    if host.which(host.tool()) is None:
        print(f"{host.tool()} is not available here; ask it yourself:", file=out)
        _print_commands([host.status_command()], out)
        return 0
    code, output = host.run(host.status_command())
    print(output, file=out)
    return code


# -- the command ------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction,
                 command_group: Callable[..., Callable[[str, str], argparse.ArgumentParser]]
                 ) -> None:
    action = command_group(sub, "service", "run the dashboard as a login service "
                           "(systemd user unit / launchd agent)", "service_command")
    install_parser = action("install", "write the service file and start it")
    # SUPPRESS: `mlx-manager --port 9000 service install` works as well.
    install_parser.add_argument("--host", default=argparse.SUPPRESS,
                                help="address the service listens on")
    install_parser.add_argument("--port", type=int, default=argparse.SUPPRESS,
                                help="port the service listens on")
    action("uninstall", "stop the service and remove its file")
    action("status", "say whether it is installed and running")


def run(args: argparse.Namespace, settings: Settings, out: TextIO,
        host: ServiceHost | None = None) -> int:
    host = host or ServiceHost(Flavour.of_platform(), Path.home())
    if args.service_command == "install":
        spec = ServiceSpec.for_settings(settings, host=getattr(args, "host", None),
                                        port=getattr(args, "port", None))
        return install(spec, host, out)
    if args.service_command == "uninstall":
        return uninstall(host, out)
    return status(host, out)

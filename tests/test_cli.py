"""The command line: flags, the local account commands, port clashes and --share offline."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from manager.accounts.auth import Role, Status
from manager.cli.main import build_parser, run_command, settings_from_args
from manager.net import free_port
from manager.services import Services
from manager.settings import Settings
from tests.conftest import TEST_HASHER
from tests.waits import wait_for

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "mlx-manager"


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, stdin: str = "", data_dir: Path | None = None) -> CliResult:
    """A command as `mlx-manager` runs it (the same parser and command code), in-process:
    a new interpreter per call would cost seconds of imports. test_console_script_* and
    the serve test cover the real process."""
    argv = [*(["--data-dir", str(data_dir)] if data_dir is not None else []), *args]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            parsed = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help and usage errors end in argparse
        return CliResult(int(exc.code or 0), out.getvalue(), err.getvalue())
    code = run_command(parsed, settings_from_args(parsed), stdin=io.StringIO(stdin), out=out,
                       err=err)
    return CliResult(code, out.getvalue(), err.getvalue())


def test_help_lists_the_dashboard_flags() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--host", "--port", "--data-dir", "--share", "serve", "users"):
        assert flag in result.stdout
    assert "MLX_MANAGER_DATA_DIR" in result.stdout


def test_console_script_is_installed_and_answers_without_loading_the_services() -> None:
    """Help, backup, service and the like need no services: loading them (the database
    layer pulls in pandas through sqlite-utils, the model code huggingface_hub) cost every
    command ~1.5 s of CPU before it did anything."""
    # PYTHONPATH: the code of this tree, should the editable install point at another.
    result = subprocess.run([str(CONSOLE_SCRIPT), "users", "--help"], capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1",
                                 "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0
    assert "reset-password" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"app", "manager.cli.main", "manager.cli.servers"} <= imported
    assert not imported & {"manager.services", "sqlite_utils", "huggingface_hub", "gradio"}


def test_the_notebook_helper_is_still_reached_through_app() -> None:
    from app import notebook

    assert notebook.__name__ == "manager.cli.notebook" and callable(notebook.show)


def test_flags_and_env_make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_MANAGER_DATA_DIR", str(tmp_path / "from-env"))
    env_only = settings_from_args(build_parser().parse_args([]))
    assert env_only.data_dir == (tmp_path / "from-env").resolve()
    assert (env_only.host, env_only.port, env_only.share) == ("127.0.0.1", 7860, False)
    flags = settings_from_args(build_parser().parse_args(
        ["--host", "0.0.0.0", "--port", "9000", "--share", "--data-dir", str(tmp_path / "f")]
    ))
    assert (flags.host, flags.port, flags.share) == ("0.0.0.0", 9000, True)
    assert flags.data_dir == (tmp_path / "f").resolve()
    after = settings_from_args(build_parser().parse_args(
        ["users", "list", "--data-dir", str(tmp_path / "after")]
    ))
    assert after.data_dir == (tmp_path / "after").resolve()


def test_users_add_list_and_reset_password(tmp_path: Path) -> None:
    data = tmp_path / "data"
    empty = run_cli("users", "list", data_dir=data)
    assert empty.returncode == 0 and "No accounts yet" in empty.stdout
    added = run_cli("users", "add", "root@example.com", "--password-stdin",
                    stdin="first-password\n", data_dir=data)
    assert added.returncode == 0, added.stderr
    assert "root@example.com (admin, active)" in added.stdout
    second = run_cli("users", "add", "sam@example.com", "--password-stdin",
                     stdin="second-password\n", data_dir=data)
    assert "sam@example.com (user, active)" in second.stdout
    listing = run_cli("users", "list", data_dir=data)
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["EMAIL", "ROLE", "STATUS", "CREATED", "LAST", "LOGIN"]
    assert any(line.startswith("root@example.com") and " admin " in line for line in lines)
    services = Services.create(Settings(data_dir=data), run_servers=False, hasher=TEST_HASHER)
    root = services.auth.get_by_email("root@example.com")
    old_token = services.auth.issue_session(root)
    reset = run_cli("users", "reset-password", "root@example.com", "--password-stdin",
                    stdin="brand-new-password\n", data_dir=data)
    assert reset.returncode == 0, reset.stderr
    assert services.auth.user_for_session(old_token) is None
    assert services.auth.authenticate("root@example.com", "brand-new-password", "cli").role \
        is Role.ADMIN
    services.close()


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("users", "add", "not-an-email", "--password-stdin"), "long-enough-pw\n",
         "not a valid email"),
        (("users", "add", "a@example.com", "--password-stdin"), "short\n", "8 to 128"),
        (("users", "reset-password", "ghost@example.com", "--password-stdin"),
         "long-enough-pw\n", "No account with the email ghost@example.com"),
    ],
)
def test_cli_errors_are_clear_and_exit_nonzero(
    tmp_path: Path, args: tuple[str, ...], stdin: str, message: str
) -> None:
    result = run_cli(*args, stdin=stdin, data_dir=tmp_path / "data")
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_users_add_admin_flag_makes_an_admin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    services = Services.create(Settings(data_dir=data), run_servers=False, hasher=TEST_HASHER)
    services.auth.register("first@example.com", "first-password")
    run_cli("users", "add", "ops@example.com", "--admin", "--password-stdin",
            stdin="ops-password\n", data_dir=data)
    ops = services.auth.get_by_email("ops@example.com")
    assert (ops.role, ops.status) == (Role.ADMIN, Status.ACTIVE)
    services.close()


def _start(*args: str, data_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--data-dir", str(data_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )


def _answer(url: str, proc: subprocess.Popen) -> httpx.Response:
    if proc.poll() is not None:
        raise AssertionError(f"dashboard exited early:\n{proc.stdout.read()}")
    return httpx.get(url, timeout=2)


@pytest.mark.slow  # starts the whole dashboard as a process
def test_serve_with_share_offline_warns_and_keeps_running(tmp_path: Path) -> None:
    port = free_port()
    proc = _start("serve", "--port", str(port), "--share", data_dir=tmp_path / "data")
    try:
        url = f"http://127.0.0.1:{port}/login"
        assert wait_for(lambda: _answer(url, proc), 120, f"{url} to answer",
                        ignoring=(httpx.TransportError,)).status_code == 200
        # Lines until the share link's outcome (readline blocks until the process says more).
        lines: list[str] = []
        while not lines or ("share link" not in lines[-1] and lines[-1]):
            lines.append(proc.stdout.readline())
        assert any("Could not create a share link" in line for line in lines), lines
        assert httpx.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 200
        assert (tmp_path / "data" / "manager.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_port_in_use_gets_a_clear_message(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from app import main

    with socket.socket() as taken, caplog.at_level(logging.ERROR):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--data-dir", str(tmp_path / "data")]) == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in caplog.text


def test_a_data_dir_that_cannot_be_made_is_one_line_not_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A data dir under a file (or on a read-only disk): every command and the dashboard
    ended in an OSError's traceback."""
    from app import main

    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "data"
    for args in (("users", "list"), ("profiles", "list"), ("status",)):
        result = run_cli(*args, data_dir=data_dir)
        assert result.returncode == 1, args
        assert f"The data dir {data_dir} cannot be used: " in result.stderr
        assert "Not a directory" in result.stderr and "--data-dir" in result.stderr
        assert "Traceback" not in result.stderr
    with caplog.at_level(logging.ERROR):
        assert main(["--port", str(free_port()), "--data-dir", str(data_dir)]) == 1
    assert f"The data dir {data_dir} cannot be used: {data_dir}: Not a directory" \
        in caplog.text


def test_a_setting_misspelled_or_out_of_range_is_one_line_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value in an MLX_MANAGER_ variable (or --server-nice out of range) ended the
    dashboard and every command in a ValidationError's traceback."""
    from app import main

    data_dir = tmp_path / "data"
    cases = [
        ({"MLX_MANAGER_SERVER_NICE": "x"}, ["--port", str(free_port())],
         "MLX_MANAGER_SERVER_NICE must be a whole number from 0 to 19, not 'x'."),
        ({}, ["--server-nice", "25"], "The model servers' nice steps (--server-nice, "
                                      "MLX_MANAGER_SERVER_NICE) must be from 0 to 19, not 25."),
        ({"MLX_MANAGER_WARM_SPARE": "maybe"}, ["status"],
         "MLX_MANAGER_WARM_SPARE must be 1 or 0 (on or off), not 'maybe'."),
        ({"MLX_MANAGER_GATEWAY_MAX_BODY_BYTES": "1e6"}, ["users", "list"],
         "MLX_MANAGER_GATEWAY_MAX_BODY_BYTES must be a whole number, not '1e6'."),
    ]
    for env, args, message in cases:
        with monkeypatch.context() as patched:
            for name, value in env.items():
                patched.setenv(name, value)
            assert main(["--data-dir", str(data_dir), *args]) == 2, args
        err = capsys.readouterr().err
        assert err == f"error: {message}\n", args
    assert not data_dir.exists()  # refused before anything was made


def test_a_password_prompt_that_gets_no_password_and_one_not_needed_end_plainly(
        tmp_path: Path) -> None:
    """`users reset-password` asked for a password before it knew the account, `users add`
    before it knew the email was taken; and an input that ended at the prompt (Ctrl-D, no
    terminal) was an EOFError's traceback."""
    data_dir = tmp_path / "data"
    assert run_cli("users", "add", "ada@example.com", "--password-stdin",
                   stdin="long-enough-pw\n", data_dir=data_dir).returncode == 0

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - the project's own entry point
            [sys.executable, "app.py", "--data-dir", str(data_dir), *args], cwd=ROOT,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    for args, said in ((("users", "reset-password", "ghost@example.com"),
                        "No account with the email ghost@example.com"),
                       (("users", "add", "ada@example.com"), "already exists"),
                       (("users", "add", "bob@example.com"),
                        "No password was given: nothing was changed")):
        done = command(*args)
        assert done.returncode == 1, done.stderr
        assert said in done.stderr and "Traceback" not in done.stderr
        if "bob" not in args[-1]:
            assert "New password" not in done.stderr + done.stdout  # never asked
    assert [u.email for u in _accounts(data_dir)] == ["ada@example.com"]


def _accounts(data_dir: Path) -> list:
    services = Services.create(Settings(data_dir=data_dir), run_servers=False,
                               hasher=TEST_HASHER)
    try:
        return services.auth.all_users()
    finally:
        services.close()

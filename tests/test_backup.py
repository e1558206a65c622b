"""`mlx-manager backup` and `restore` on real SQLite: a consistent copy while writes go on,
a restore that checks the file first, keeps the old database and refuses while a dashboard
runs on the data dir."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from manager.chat.history import NewMessage
from manager.cli.backup import backup, copy_database, inspect_database, restore
from manager.cli.instance import DataDirBusy, hold_data_dir
from manager.errors import ManagerError
from manager.net import free_port
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, TEST_HASHER
from tests.test_cli import run_cli
from tests.waits import wait_for

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args, "--data-dir",
                           str(data_dir)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    created = Services.create(Settings(data_dir=tmp_path / "data"), run_servers=False,
                              hasher=TEST_HASHER)
    created.auth.register("admin@example.com", PASSWORD)
    yield created
    created.close()


class Writer:
    """Saves chat messages through the app's own store, one after another, until stopped."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.owner = services.auth.get_by_email("admin@example.com")
        self.chat = services.chats.create(self.owner, "server")
        self.written = 0
        self.started = threading.Event()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.services.chats.add_message(
                    self.owner, self.chat.id, NewMessage("user", "x" * 2000))
                self.written += 1
                if self.written == 20:
                    self.started.set()
                # Paced, not flat out: a steady stream is the point, and a writer spinning
                # through the CLI's seconds of start-up only starved it of CPU and grew the
                # database by tens of MB.
                self.stop.wait(0.002)
        except BaseException as exc:  # noqa: BLE001 - handed to the test, which fails on it
            self.errors.append(exc)
            self.started.set()

    def __enter__(self) -> Writer:
        self.thread.start()
        assert self.started.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def test_backup_while_writes_go_on_is_a_sound_consistent_copy(
        services: Services, tmp_path: Path) -> None:
    data_dir = services.settings.data_dir
    target = tmp_path / "backups" / "copy.db"
    with Writer(services) as writer:
        before = writer.written
        result = cli("backup", str(target), data_dir=data_dir)
        during = writer.written - before
    assert result.returncode == 0, result.stderr
    assert f"to {target}" in result.stdout
    assert writer.errors == [] and during > 0  # the app kept writing while it copied
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        copied = copy.execute("SELECT count(*) FROM chat_messages").fetchone()[0]
        positions = [row[0] for row in copy.execute(
            "SELECT position FROM chat_messages ORDER BY position")]
    # One snapshot: a gap-free prefix of what was written, nothing torn.
    assert before <= copied <= writer.written
    assert positions == list(range(copied))
    assert inspect_database(target).users == 1
    assert not list(target.parent.glob(".*partial"))


def test_backup_into_a_folder_and_never_over_a_file(services: Services, tmp_path: Path) -> None:
    # In-process (the same parser and command code): the test above runs the real process.
    folder = tmp_path / "folder"
    folder.mkdir()
    result = run_cli("backup", str(folder), data_dir=services.settings.data_dir)
    assert result.returncode == 0, result.stderr
    (made,) = folder.glob("manager-*.db")
    again = run_cli("backup", str(made), data_dir=services.settings.data_dir)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_restore_puts_the_backup_back_and_keeps_the_replaced_database(
        services: Services, tmp_path: Path) -> None:
    settings = services.settings
    backup_file = tmp_path / "before.db"
    backup(settings, backup_file, io.StringIO())
    services.auth.add_user("later@example.com", PASSWORD)
    services.close()
    result = run_cli("restore", str(backup_file), data_dir=settings.data_dir)
    assert result.returncode == 0, result.stderr
    assert "Restored" in result.stdout and "kept as" in result.stdout
    (kept,) = settings.data_dir.glob("manager.db.before-restore-*")
    assert count(kept, "users") == 2
    reopened = Services.create(settings, run_servers=False, hasher=TEST_HASHER)
    try:
        assert [u.email for u in reopened.auth.all_users()] == ["admin@example.com"]
    finally:
        reopened.close()


def test_restore_checks_the_file_before_touching_anything(services: Services,
                                                         tmp_path: Path) -> None:
    settings = services.settings
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("hello")
    other_app = tmp_path / "other.db"
    with sqlite3.connect(other_app) as conn:
        conn.execute("CREATE TABLE things (x)")
    newer = tmp_path / "newer.db"
    backup(settings, newer, io.StringIO())
    with sqlite3.connect(newer) as conn:
        conn.execute("INSERT INTO _migrations VALUES ('9999_from_the_future', 'x')")
    damaged = tmp_path / "damaged.db"
    backup(settings, damaged, io.StringIO())
    raw = bytearray(damaged.read_bytes())
    raw[4096 + 8: 4096 + 200] = b"\xff" * 192  # scribble over the second page
    damaged.write_bytes(bytes(raw))
    for source, message in ((not_sqlite, "is not an SQLite database"),
                            (other_app, "not one of MLX Model Manager"),
                            (newer, "made by a newer version"),
                            (damaged, "damaged"),
                            (tmp_path / "missing.db", "is not a file")):
        with pytest.raises(ManagerError, match=message):
            restore(settings, source, io.StringIO())
    assert not list(settings.data_dir.glob("manager.db.before-restore-*"))
    assert count(settings.db_path, "users") == 1


@pytest.mark.slow  # starts the dashboard as a process
def test_restore_refuses_while_a_dashboard_runs_on_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    backup_file = tmp_path / "b.db"
    settings = Settings(data_dir=data_dir)
    Services.create(settings, run_servers=False).close()
    backup(settings, backup_file, io.StringIO())
    port = free_port()
    dashboard = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "serve", "--port", str(port), "--data-dir",
         str(data_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/login", dashboard)
        refused = cli("restore", str(backup_file), data_dir=data_dir)
        assert refused.returncode == 1
        assert f"is in use by a dashboard on port {port} (pid {dashboard.pid})" in refused.stderr
        assert "Stop it first" in refused.stderr
        second = cli("serve", "--port", str(free_port()), data_dir=data_dir)
        assert second.returncode == 1 and "in use by a dashboard" in second.stderr
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=60)
    restored = cli("restore", str(backup_file), data_dir=data_dir)
    assert restored.returncode == 0, restored.stderr


def test_the_data_dir_lock_is_held_until_released(tmp_path: Path) -> None:
    with hold_data_dir(tmp_path, "first"):
        with pytest.raises(DataDirBusy, match=r"in use by first \(pid \d+\)"):
            with hold_data_dir(tmp_path, "second"):
                pass
    with hold_data_dir(tmp_path, "third"):
        assert "third" in (tmp_path / "dashboard.lock").read_text()


def wait_until_answers(url: str, process: subprocess.Popen[bytes], seconds: float = 120) -> None:
    def answers() -> httpx.Response:
        if process.poll() is not None:
            raise AssertionError(f"the dashboard exited early ({process.returncode})")
        return httpx.get(url, timeout=2)

    wait_for(answers, seconds, f"{url} to answer", ignoring=(httpx.TransportError,))


def test_backup_and_restore_leave_nothing_beside_the_files_they_read(
        services: Services, tmp_path: Path) -> None:
    """`backup` left `.NAME.partial-wal` and `-shm` beside the copy, and `restore` made
    NAME-wal and NAME-shm beside the backup it read, also when it refused it: the copy was
    in WAL mode, and a read-only open of such a file makes both."""
    folder = tmp_path / "backups"
    folder.mkdir()
    made = folder / "one.db"
    assert run_cli("backup", str(made), data_dir=services.settings.data_dir).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["one.db"]
    old = folder / "old.db"  # a file in WAL mode: a copy of the live database itself
    copy_database(services.settings.db_path, old)
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    truncated = folder / "truncated.db"
    truncated.write_bytes(made.read_bytes()[:2048])
    services.close()
    data_dir = services.settings.data_dir
    assert run_cli("restore", str(truncated), data_dir=data_dir).returncode == 1
    for source in (old, made):
        result = run_cli("restore", str(source), data_dir=data_dir)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["old.db", "one.db", "truncated.db"]

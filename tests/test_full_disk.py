"""A full or read-only disk under the data dir: registering, signing in and commands say
so, and nothing is lost.

The disks are real: a small tmpfs mounted in a mount namespace of the test's own
(`unshare` maps the user to root there; Linux only), filled to its last byte or mounted
read-only. The code under test runs in a process inside that namespace and reports what
it answered."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _own_mounts_work() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--map-root-user", "--mount", "true"],  # noqa: S607 - a system tool
        capture_output=True, timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(
    not _own_mounts_work(), reason="a disk of the test's own needs Linux's unshare (mount "
    "namespaces); this machine has none")


def in_a_small_disk(disk: Path, script: str) -> subprocess.CompletedProcess[str]:
    """A Python script run with a 2 MB tmpfs on `disk` (its path is the script's argv[1])."""
    return subprocess.run(  # noqa: S603 - fixed arguments
        ["unshare", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$1" -c "$2" "$0"',
         str(disk), sys.executable, script],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


#: What the scripts below share: `fill(path)` writes a file until the disk is full and
#: says whether it stopped at ENOSPC.
FILL = textwrap.dedent('''
    import errno

    def fill(path):
        with open(path, "wb", buffering=0) as out:
            while True:  # to the last byte
                try:
                    out.write(b"0" * 4096)
                except OSError as exc:
                    return exc.errno == errno.ENOSPC
''')

SCRIPT = FILL + textwrap.dedent('''
    import json, sys
    from pathlib import Path

    from argon2 import PasswordHasher
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from manager.accounts.auth import AuthService
    from manager.api.login import build_auth_router
    from manager.store import Store

    disk = Path(sys.argv[1])
    store = Store(disk / "manager.db")
    auth = AuthService(store, b"s" * 32,
                       hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app = FastAPI()
    app.include_router(build_auth_router(auth))
    client = TestClient(app)
    password = "correct horse battery"

    def register(email):
        return client.post("/register", follow_redirects=False, data={
            "email": email, "password": password, "confirm": password})

    def answer(response):
        return [response.status_code, response.text]

    said = {"first": answer(register("alice@example.com"))}
    filler = disk / "filler"
    said["filled"] = fill(filler)
    said["second"] = answer(register("bob@example.com"))
    said["sign_in"] = answer(client.post("/login", follow_redirects=False, data={
        "email": "alice@example.com", "password": password}))
    filler.unlink()
    said["after"] = answer(register("bob@example.com"))
    said["users"] = [u.email for u in auth.all_users()]
    print(json.dumps(said))
''')


def test_registering_and_signing_in_on_a_full_disk_say_so_and_lose_nothing(
        tmp_path: Path) -> None:
    """Both answered a bare "500 Internal Server Error" (SQLite's "database or disk is
    full", or its "disk I/O error" for a WAL index that cannot grow)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run = in_a_small_disk(disk, SCRIPT)
    assert run.returncode == 0, run.stderr
    said = json.loads(run.stdout.strip().splitlines()[-1])
    assert said["first"][0] == 303 and said["filled"]
    full = "The disk that holds the dashboard&#x27;s data"
    for step in ("second", "sign_in"):
        status, page = said[step]
        assert status == 503 and full in page and "Free some space" in page, step
        assert "Internal Server Error" not in page
    assert said["after"][0] == 200 and "You can sign in once it is approved" in said["after"][1]
    assert said["users"] == ["alice@example.com", "bob@example.com"]


MAKE_DATA = textwrap.dedent('''
    import sys
    from app import main
    sys.exit(main(["--data-dir", sys.argv[1] + "/data", "users", "add", "ada@example.com",
                   "--password-stdin"]))
''')
LIST_USERS = textwrap.dedent('''
    import sys
    from app import main
    code = main(["--data-dir", sys.argv[1] + "/data", "users", "list"])
    print("exit", code)
''')


def test_a_data_dir_on_a_read_only_disk_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The data dir existed, so its folders could be "made"; opening its database for
    writing was SQLite's OperationalError, and a traceback."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run = subprocess.run(  # the same, with a password for `users add` on stdin
        ["unshare", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o size=2m tmpfs "$0" && "$1" -c "$2" "$0" < "$4" && '
         'mount -o remount,ro "$0" && "$1" -c "$3" "$0"',
         str(disk), sys.executable, MAKE_DATA, LIST_USERS, str(_password_file(tmp_path))],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "exit 1" in run.stdout
    assert f"The data dir {disk}/data cannot be used: " in run.stderr
    assert "make it writable" in run.stderr and "Traceback" not in run.stderr


def _password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text("correct horse battery\n")
    return path


KEY_ON_A_FULL_DISK = FILL + textwrap.dedent('''
    import json, sys
    from pathlib import Path

    from manager.accounts.auth import load_or_create_secret
    from manager.errors import StorageFull

    disk = Path(sys.argv[1])
    key = disk / "data" / "secret.key"
    said = {}
    filler = disk / "filler"
    said["filled"] = fill(filler)
    try:
        load_or_create_secret(key)
    except StorageFull as exc:
        said["full"] = exc.message
    said["left"] = key.exists()
    filler.unlink()
    said["after"] = len(load_or_create_secret(key))
    said["again"] = load_or_create_secret(key) == key.read_bytes()
    print(json.dumps(said))
''')


def test_a_session_key_that_cannot_be_written_says_so_and_leaves_no_empty_key(
        tmp_path: Path) -> None:
    """The first start on a full disk wrote an empty key file and ended in a traceback
    (ENOSPC); every later start then refused that file ("shorter than 32 bytes; delete
    it") until someone deleted it by hand."""
    disk = tmp_path / "disk"
    disk.mkdir()
    run = in_a_small_disk(disk, KEY_ON_A_FULL_DISK)
    assert run.returncode == 0, run.stderr
    said = json.loads(run.stdout.strip().splitlines()[-1])
    assert said["filled"]
    assert said["full"] == (f"The disk that holds {disk}/data is full: the session key "
                            "could not be written. Free some space there and start again.")
    assert said["left"] is False
    assert said["after"] >= 32 and said["again"] is True

"""A full disk under the data dir: registering and signing in say so, and nothing is lost.

The disk is real: a 2 MB tmpfs mounted in a mount namespace of the test's own (`unshare`
maps the user to root there), filled to its last byte. The sign-in routes and the store
run in a process inside that namespace and report what they answered."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import errno, json, sys
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
    with open(filler, "wb", buffering=0) as out:
        while True:  # to the last byte
            try:
                out.write(b"0" * 4096)
            except OSError as exc:
                said["filled"] = exc.errno == errno.ENOSPC
                break
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
    run = subprocess.run(  # noqa: S603 - fixed arguments
        ["unshare", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$1" -c "$2" "$0"',
         str(disk), sys.executable, SCRIPT],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
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

"""Files named in Gradio API requests: only this dashboard's own uploads are ever opened.

A live mounted app, a real session, raw requests to Gradio's real API routes (the queue
the browser uses and the /call route clients use), exactly as an attacker would send
them. inotify proves a refused file was never opened; for the database, the failure
the issue saw is reproduced: a stray open drops this process's SQLite locks and the next
process to close the database deletes its WAL.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio.utils import get_upload_folder
from PIL import Image

from manager.api.login import SESSION_COOKIE
from manager.chat.attachments import NotUploaded, uploaded_file
from tests.conftest import LiveDashboard
from tests.file_watch import OpenWatch

USER = "mallory@example.com"
REFUSED = "was not uploaded through this dashboard"
# Gradio's own check, switched on by app.py, refuses before it copies anything.
NOT_UPLOADED = "because it was not uploaded by a user"


def file_data(path: Path | str) -> dict[str, Any]:
    """What a client posts for a file: Gradio's FileData with its marker."""
    return {"path": str(path), "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


def message_box(*paths: Path | str) -> dict[str, Any]:
    return {"text": "What is in this picture?", "files": [file_data(p) for p in paths]}


@pytest.fixture
def dashboard(shared_live_dashboard: LiveDashboard) -> LiveDashboard:
    """The session's shared live dashboard (starting one costs ~0.5 s of CPU), handed over
    as new, with the user signed up."""
    shared_live_dashboard.register(USER)
    return shared_live_dashboard


@pytest.fixture
def client(dashboard: LiveDashboard) -> Iterator[httpx.Client]:
    with dashboard.client(cookies={SESSION_COOKIE: dashboard.session_cookie(USER)}) as signed_in:
        yield signed_in


def call_send(client: httpx.Client, *paths: Path | str) -> tuple[int, str]:
    """POST to /gradio_api/call/chat_send; (status, the refusal or the job's outcome)."""
    response = client.post("/gradio_api/call/chat_send",
                           json={"data": [message_box(*paths), None, True, 5, 8, "auto", ""]})
    if response.status_code != 200:
        return response.status_code, response.json()["detail"]
    event_id = response.json()["event_id"]
    stream = client.get(f"/gradio_api/call/chat_send/{event_id}")
    return response.status_code, stream.text


def queue_join(client: httpx.Client, *paths: Path | str) -> httpx.Response:
    """The browser's way: join the queue with the chat send event's inputs."""
    config = client.get("/config").json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "chat_send")
    data = [message_box(*paths), None, None, True, 5, 8, "auto", ""]
    return client.post("/gradio_api/queue/join", json={
        "data": data, "fn_index": fn_index, "session_hash": uuid.uuid4().hex[:10],
        "event_data": None, "trigger_id": None})


def picture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_an_image_outside_the_upload_cache_is_refused_and_never_opened(
        client: httpx.Client, tmp_path: Path) -> None:
    secret = picture(tmp_path / "elsewhere" / "holiday.png")
    with OpenWatch(secret) as watch:
        status, detail = call_send(client, secret)
        response = queue_join(client, secret)
        assert not watch.opened()
        assert status == 200 and "event: error" in detail and NOT_UPLOADED in detail
        assert response.status_code == 200  # queued; refused when it is processed
        secret.read_bytes()  # the watch does see an open
        assert watch.opened()


def test_the_database_is_refused_and_its_locks_and_wal_survive(
        dashboard: LiveDashboard, client: httpx.Client) -> None:
    db_path = dashboard.services.settings.db_path
    # A connection that has read holds SQLite's POSIX lock for this process (the app's
    # own). Any other open-and-close of the file in this process would drop it.
    held = sqlite3.connect(db_path)
    try:
        held.execute("SELECT count(*) FROM users").fetchall()
        status, detail = call_send(client, db_path)
        # Another process (say `mlx-manager users list`) opens and closes the database.
        # Had the locks been dropped, it would believe itself the last user of the
        # database and delete the WAL under the dashboard's feet.
        subprocess.run([sys.executable, "-c", (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
            " c.execute('SELECT count(*) FROM users').fetchall(); c.close()"),
            str(db_path)], check=True)
        assert Path(f"{db_path}-wal").exists() and Path(f"{db_path}-shm").exists()
        assert held.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # The database is in Gradio's blocked paths too, which its message names.
        assert "manager.db to the gradio cache dir because it is located in one of the " \
               "blocked_paths" in detail
    finally:
        held.close()
    assert dashboard.services.auth.get_by_email(USER) is not None


def test_a_symlink_in_the_upload_cache_pointing_out_is_refused(
        client: httpx.Client, tmp_path: Path) -> None:
    target = picture(tmp_path / "private" / "id-card.png")
    folder = Path(get_upload_folder()) / f"test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    link = folder / "innocent.png"
    link.symlink_to(target)
    try:
        with OpenWatch(target) as watch:
            status, detail = call_send(client, link)
            assert not watch.opened()
            assert NOT_UPLOADED in detail
    finally:
        link.unlink()
        folder.rmdir()


@pytest.mark.parametrize("named", ["/etc/passwd", "../../../../etc/hostname"])
def test_other_paths_are_refused(client: httpx.Client, named: str) -> None:
    status, detail = call_send(client, named)
    assert "event: error" in detail and NOT_UPLOADED in detail


def test_a_real_upload_goes_through(client: httpx.Client, tmp_path: Path) -> None:
    image = picture(tmp_path / "mine.png")
    with image.open("rb") as handle:
        uploaded = client.post("/gradio_api/upload",
                               files={"files": ("mine.png", handle, "image/png")})
    (cached,) = uploaded.json()
    assert Path(cached).resolve().is_relative_to(Path(get_upload_folder()).resolve())
    status, outcome = call_send(client, cached)
    # It reaches the Chat tab, which asks for a server (none is picked here).
    assert status == 200 and REFUSED not in outcome
    assert "event: error" in outcome and "server" in json.dumps(outcome).lower()


def test_uploaded_file_resolves_names_without_opening(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    inside = picture(root / "a" / "ok.png")
    outside = picture(tmp_path / "outside.png")
    (root / "a" / "link.png").symlink_to(outside)
    (root / "a" / "inner-link.png").symlink_to(inside)
    assert uploaded_file(inside, [root]) == inside.resolve()
    assert uploaded_file(root / "a" / "inner-link.png", [root]) == inside.resolve()
    for bad in (outside, root / "a" / "link.png", root, root / "a" / ".." / ".." / "outside.png",
                "file:///etc/passwd", "data:image/png;base64,AAAA", ""):
        with pytest.raises(NotUploaded, match=REFUSED):
            uploaded_file(bad, [root])


"""Shared fixtures: real SQLite in tmp dirs, a live dashboard on a free port, a real browser."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from manager.api.login import SESSION_COOKIE
from manager.net import free_port
from manager.services import Services
from manager.settings import Settings

pytest_plugins = ["tests.fixtures.plugin"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORD = "correct horse battery"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", port=free_port())


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    created = Services.create(settings)
    yield created
    created.close()


@dataclass
class LiveDashboard:
    url: str
    services: Services

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def register(self, email: str, password: str = PASSWORD) -> httpx.Response:
        with self.client() as client:
            return client.post("/register",
                               data={"email": email, "password": password, "confirm": password})

    def session_cookie(self, email: str, password: str = PASSWORD) -> str:
        """The session cookie a real login through the form hands out."""
        with self.client() as client:
            response = client.post("/login", data={"email": email, "password": password})
        if response.status_code != 303 or SESSION_COOKIE not in response.cookies:
            raise AssertionError(f"login failed for {email}: {response.status_code}")
        return response.cookies[SESSION_COOKIE]

    def login(self, email: str, password: str = PASSWORD) -> httpx.Client:
        """A new client carrying the session cookie of a successful login."""
        return self.client(cookies={SESSION_COOKIE: self.session_cookie(email, password)})


def run_uvicorn(app: object, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    # A gradio_client keeps a heartbeat stream open; without a graceful-shutdown limit
    # uvicorn waits for it and every such test pays the 15 s join timeout below.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.05)
    return server, thread


@pytest.fixture
def dashboard(services: Services) -> Iterator[LiveDashboard]:
    from app import create_app

    server, thread = run_uvicorn(create_app(services), services.settings.port)
    yield LiveDashboard(f"http://127.0.0.1:{services.settings.port}", services)
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()

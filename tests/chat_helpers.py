"""A live dashboard with running tiny-model servers, shared by the chat tab's test modules;
and a way to see every text a page element showed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from gradio_client import Client

from manager.accounts.auth import User
from manager.errors import ValidationError
from manager.net import free_port
from manager.servers.profiles import Profile, ProfileSpec
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, LiveDashboard, run_uvicorn
from tests.gradio_clients import gradio_client
from tests.server_helpers import hf_home_env

# Every text an element shows from the moment this runs: a late drawing can be drawn over
# before a test reads the element.
_WATCH_JS = """(selector) => {
  const element = document.querySelector(selector);
  window.shownTexts = window.shownTexts || {};
  const seen = window.shownTexts[selector] = [element.textContent];
  new MutationObserver(() => seen.push(element.textContent))
    .observe(element, {subtree: true, childList: true, characterData: true});
}"""


def watch_texts(page, selector: str) -> None:  # noqa: ANN001 - a Playwright Page
    page.evaluate(_WATCH_JS, selector)


def texts_shown(page, selector: str) -> list[str]:  # noqa: ANN001
    """What the element showed since `watch_texts`."""
    return list(page.evaluate("(selector) => window.shownTexts[selector]", selector))


@dataclass
class ChatDashboard:
    """Services + the real app on a free port + model servers (profile name -> Profile)."""

    root: Path
    services: Services
    live: LiveDashboard
    profiles: dict[str, Profile]
    _server: uvicorn.Server
    _thread: threading.Thread
    users: dict[str, User] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.live.url

    def user(self, email: str) -> User:
        """Register (the first one is the admin) and approve an account."""
        if email not in self.users:
            self.live.register(email, PASSWORD)
            user = self.services.auth.get_by_email(email)
            admin = next((u for u in self.users.values() if u.is_admin), None)
            if admin is not None and not user.status.value == "active":
                user = self.services.auth.approve(admin, user.id)
            self.users[email] = user
        return self.services.auth.get_by_email(email)

    def cookie(self, email: str) -> str:
        self.user(email)
        return self.live.session_cookie(email, PASSWORD)

    def client(self, email: str) -> Client:
        return gradio_client(self.url, cookie=self.cookie(email))

    def restart(self) -> None:
        """A dashboard restart: the same data dir, servers left running and adopted."""
        self._stop_http()
        self.services.close(keep_servers=True)
        settings = Settings(data_dir=self.root / "data", port=free_port(), warm_spare=False,
                            registrations_per_hour=50)
        self.services = Services.create(settings)
        self._serve()
        self.users = {email: self.services.auth.get_by_email(email) for email in self.users}

    def close(self) -> None:
        self._stop_http()
        self.services.close()

    def _serve(self) -> None:
        from app import create_app

        port = self.services.settings.port
        self._server, self._thread = run_uvicorn(create_app(self.services), port)
        self.live = LiveDashboard(f"http://127.0.0.1:{port}", self.services)

    def _stop_http(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


def _create_on_a_free_port(services: Services, name: str, spec: ProfileSpec) -> Profile:
    """The profile on a port free_port() gave; another program can take that port before
    the profile's own check (an outgoing connection's ephemeral port: seen once in a
    browser test), and then another port is asked for."""
    for _ in range(4):
        try:
            return services.profiles.create(None, ProfileSpec(
                **{**spec.__dict__, "name": name, "port": free_port()}))
        except ValidationError as exc:
            if exc.field != "port":
                raise
            last = exc
    raise last


@contextmanager
def chat_dashboard(root: Path, specs: dict[str, ProfileSpec]) -> Iterator[ChatDashboard]:
    """Start the servers of `specs` (name -> spec, port filled in) and the dashboard."""
    with hf_home_env(root / "hf_home"):
        # Its modules register a user per test, all from this address.
        services = Services.create(Settings(data_dir=root / "data", port=free_port(),
                                            warm_spare=False, registrations_per_hour=50))
        dashboard: ChatDashboard | None = None
        try:
            profiles = {}
            for name, spec in specs.items():
                profile = _create_on_a_free_port(services, name, spec)
                services.supervisor.start(profile.id)
                profiles[name] = profile
            for profile in profiles.values():
                services.supervisor.wait_ready(profile.id, 120)
            from app import create_app

            port = services.settings.port
            server, thread = run_uvicorn(create_app(services), port)
            dashboard = ChatDashboard(root, services,
                                      LiveDashboard(f"http://127.0.0.1:{port}", services),
                                      profiles, server, thread)
            yield dashboard
        finally:
            if dashboard is not None:
                dashboard.close()
            else:
                services.close()

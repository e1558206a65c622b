"""Shared fixtures: real SQLite in tmp dirs, light services, the real app in-process or on a
free port, a real browser."""

from __future__ import annotations

import gc
import re
import signal
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from argon2 import PasswordHasher

from components.gradio_startup import skip_stub_regeneration
from manager.accounts.limits import LoginLimiter, RegistrationLimiter
from manager.net import free_port, tls_context
from manager.settings import WARM_SPARE_ENV, Settings
from tests.waits import wait_for

if TYPE_CHECKING:  # imported where used: pytest-xdist's controller process needs none of them
    import uvicorn
    from anyio.from_thread import BlockingPortal

    from manager.services import Services

pytest_plugins = ["tests.fixtures.plugin"]

# Before any test module imports Gradio: its import then costs each worker ~1 s less CPU.
skip_stub_regeneration()

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORD = "correct horse battery"
# Real argon2id at its cheapest settings: argon2's defaults cost ~0.1-1 s a hash and
# hashing then dominates every test that registers or signs in.
TEST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class Clock:
    """A clock that stands still until a test moves `now`."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


# A module whose tests are all slow says so at its top: `pytestmark = pytest.mark.slow` or
# `pytestmark = [pytest.mark.slow, ...]`.
_ALL_SLOW = re.compile(r"^pytestmark\s*=\s*\[?\s*pytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m "not slow"` (make test-fast), a module whose tests are all slow is not even
    imported: every xdist worker collects every module it imports, and the slow modules'
    imports (SDKs, Playwright helpers) cost each worker ~6 s of CPU for nothing."""
    if (config.option.markexpr or "").strip() != "not slow" or collection_path.suffix != ".py" \
            or not collection_path.name.startswith("test_"):
        return None
    return bool(_ALL_SLOW.search(collection_path.read_text(encoding="utf-8"))) or None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A browser test is a slow test, whether or not it says so (make test-fast skips both)."""
    for item in items:
        if item.get_closest_marker("browser") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Iterator[object]:
    """No garbage collection while the test modules are imported: importing Gradio, pandas
    and the SDKs builds hundreds of thousands of objects that all live on, and the full
    collections they triggered looked at each of them again and again, a fifth of the
    CPU of the imports (`import gradio`: ~4.5 s -> ~3.5 s of CPU on the loaded machine).
    Each pytest-xdist worker collects every module. Collection makes few cycles; those it
    makes are collected later (pytest_collection_finish freezes what lives on)."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported so far (Gradio, pandas, the SDKs, every test module) lives until
    the process ends: frozen, it is left out of the full garbage collections that the tests'
    allocations trigger. Each of them walked that whole heap, ~0.27 s of CPU, a dozen times
    per pytest-xdist worker.

    What the tests create is still collected, in larger batches: a young collection every
    10,000 net allocations instead of 700. Building apps and clients allocates millions of
    objects that live as long as their test; every 700 of them Python looked for cycles,
    and the old ones piled up until full collections ran again (the apps and clients a
    module shares live for the module). A test process is short: the larger batches cost
    a little memory, and a finalizer runs as before, at the latest in pytest's own last
    collection."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The run is over and the process about to exit: its heap (Gradio, the SDKs' pydantic
    models, every test's leftovers) is frozen so that the interpreter's last garbage
    collections skip it. They took ~1.6 s of CPU per process, which each pytest-xdist worker
    paid at the end of make test-fast while the run waited for it."""
    gc.freeze()


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_reaches_child_processes() -> None:
    """A suite started in the background (`make test &`, nohup) runs with SIGINT ignored,
    and every process the tests start would inherit that: the Ctrl-C tests then saw a
    pull finish instead of pausing. Python's own handler is not inherited across exec, so
    children get the default again."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _no_warm_spare_in_child_dashboards() -> Iterator[None]:
    """Dashboards and CLI commands a test runs (in-process through settings_from_args, or as
    processes) keep no warm spare: it would import mlx_lm once more after each server start.
    Settings built in tests say `warm_spare=False` for the same reason; tests/test_*spare*
    and the Admin tab's switch test the spare itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WARM_SPARE_ENV, "0")
        yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", port=free_port(), warm_spare=False)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    """Light services: nothing adopted, auto-started, sampled or resumed in the background
    (what a test that starts a server asks for, it starts itself)."""
    from manager.services import Services

    created = Services.create(settings, run_servers=False, hasher=TEST_HASHER)
    yield created
    created.close()


class InProcessTransport(httpx.BaseTransport):
    """A sync httpx transport into the ASGI app (httpx.ASGITransport on an event loop
    thread): the real app and middleware, no socket, no uvicorn. Bodies are read whole,
    so it suits request/response routes, not streams a test reads as they arrive."""

    def __init__(self, app: Any, portal: BlockingPortal) -> None:
        self.app = app
        self._asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        return self._portal.call(self._send, request)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._asgi.handle_async_request(request)
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=httpx.ByteStream(raw), extensions=response.extensions)


@dataclass
class LiveDashboard:
    url: str
    services: Services
    transport: httpx.BaseTransport | None = None  # None: a real socket at `url`

    def client(self, **kwargs: Any) -> httpx.Client:
        if self.transport is not None:
            kwargs.setdefault("transport", self.transport)
        # The process's one TLS context: a client otherwise loads the CA bundle (~30 ms of
        # CPU), and tests make hundreds of clients.
        kwargs.setdefault("verify", tls_context())
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def register(self, email: str, password: str = PASSWORD) -> httpx.Response:
        with self.client() as client:
            return client.post("/register",
                               data={"email": email, "password": password, "confirm": password})

    def session_cookie(self, email: str, password: str = PASSWORD) -> str:
        """The session cookie a real login through the form hands out."""
        from manager.api.session_gate import SESSION_COOKIE

        with self.client() as client:
            response = client.post("/login", data={"email": email, "password": password})
        if response.status_code != 303 or SESSION_COOKIE not in response.cookies:
            raise AssertionError(f"login failed for {email}: {response.status_code}")
        return response.cookies[SESSION_COOKIE]

    def login(self, email: str, password: str = PASSWORD) -> httpx.Client:
        """A new client carrying the session cookie of a successful login."""
        from manager.api.session_gate import SESSION_COOKIE

        return self.client(cookies={SESSION_COOKIE: self.session_cookie(email, password)})


def run_uvicorn(app: object, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    import uvicorn

    # A gradio_client keeps a heartbeat stream open; without a graceful-shutdown limit
    # uvicorn waits for it and every such test pays the 15 s join timeout below. Nothing
    # else is in flight when a test's server stops, so the limit need not be long: at
    # 0.5 s, the six stops with a stream open in make test-fast waited ~0.65 s each.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=0.1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start")
    if not server.started:
        raise RuntimeError("the dashboard did not start")
    return server, thread


@pytest.fixture
def live_dashboard(services: Services) -> Iterator[LiveDashboard]:
    """The real app on a real socket: for gradio_client, browsers, websockets, streams."""
    from app import create_app

    server, thread = run_uvicorn(create_app(services), services.settings.port)
    yield LiveDashboard(f"http://127.0.0.1:{services.settings.port}", services)
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def dashboard(live_dashboard: LiveDashboard) -> LiveDashboard:
    """The real app on a socket; a module of route tests overrides it with app_dashboard."""
    return live_dashboard


@pytest.fixture(scope="session")
def asgi_portal() -> Iterator[BlockingPortal]:
    """One event loop thread that in-process requests run on."""
    from anyio.from_thread import start_blocking_portal

    with start_blocking_portal() as portal:
        yield portal


@pytest.fixture
def app_dashboard(services: Services, asgi_portal: BlockingPortal) -> LiveDashboard:
    """The real app built by app.create_app, called in-process over httpx.ASGITransport:
    for route tests that need no socket."""
    from app import create_app

    return LiveDashboard("http://testserver", services,
                         InProcessTransport(create_app(services), asgi_portal))


class SharedApp:
    """One built app for all the tests of a module (or of every module that keeps the
    default settings): building it costs seconds (Gradio makes its routes app three
    times), a test that uses it milliseconds.

    `fresh()` hands it to the next test as new: the database back to the copy taken right
    after it was created (users, sessions, keys, profiles, chats, seeded rows, id counters)
    and new sign-in and registration limiters, the only account state kept in memory."""

    def __init__(self, services: Services, app: Any) -> None:
        self.services = services
        self.app = app
        self._pristine = sqlite3.connect(":memory:", check_same_thread=False)
        with closing(sqlite3.connect(services.settings.db_path)) as live:
            live.backup(self._pristine)

    def fresh(self) -> Services:
        with closing(sqlite3.connect(self.services.settings.db_path)) as live:
            self._pristine.backup(live)
        auth = self.services.auth
        auth._limiter = LoginLimiter()
        auth._registrations = RegistrationLimiter(self.services.settings.registrations_per_hour)
        return self.services

    def close(self) -> None:
        self._pristine.close()
        self.services.close()


@pytest.fixture(scope="session")
def _default_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("shared") / "data", port=free_port(),
                    warm_spare=False)


@pytest.fixture(scope="module")
def module_settings(_default_settings: Settings) -> Settings:
    """The settings of the app a module shares. A module overrides this to change them;
    the modules that keep these defaults share one app (and socket) for the session."""
    return _default_settings


def _build_shared_app(settings: Settings) -> SharedApp:
    from app import create_app
    from manager.services import Services

    services = Services.create(settings, run_servers=False, hasher=TEST_HASHER)
    # With the local control API (mlx-manager commands), so route walks cover it too.
    return SharedApp(services, create_app(services, control_token="test-control-token"))


@pytest.fixture(scope="session")
def _default_app(_default_settings: Settings) -> Iterator[SharedApp]:
    shared = _build_shared_app(_default_settings)
    yield shared
    shared.close()


@pytest.fixture(scope="module")
def shared_app(module_settings: Settings, request: pytest.FixtureRequest
               ) -> Iterator[SharedApp]:
    if module_settings is request.getfixturevalue("_default_settings"):
        yield request.getfixturevalue("_default_app")  # fresh() hands it over as new
        return
    shared = _build_shared_app(module_settings)
    yield shared
    shared.close()


@pytest.fixture
def shared_app_dashboard(shared_app: SharedApp, asgi_portal: BlockingPortal) -> LiveDashboard:
    """Like app_dashboard (in-process), but the module's one app, handed over as new."""
    return LiveDashboard("http://testserver", shared_app.fresh(),
                         InProcessTransport(shared_app.app, asgi_portal))


@contextmanager
def _serving(shared: SharedApp) -> Iterator[str]:
    port = shared.services.settings.port
    server, thread = run_uvicorn(shared.app, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def _default_server(_default_app: SharedApp) -> Iterator[str]:
    with _serving(_default_app) as url:
        yield url


@pytest.fixture(scope="module")
def _shared_server(shared_app: SharedApp, request: pytest.FixtureRequest) -> Iterator[str]:
    # The session's default app is served once: its Gradio queue starts and stops with it.
    if shared_app.services.settings is request.getfixturevalue("_default_settings"):
        yield request.getfixturevalue("_default_server")
        return
    with _serving(shared_app) as url:
        yield url


@pytest.fixture
def shared_live_dashboard(shared_app: SharedApp, _shared_server: str) -> LiveDashboard:
    """Like live_dashboard (a real socket, for gradio_client), but the module's one app,
    handed over as new."""
    return LiveDashboard(_shared_server, shared_app.fresh())


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()

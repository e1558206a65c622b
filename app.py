"""MLX Model Manager: wiring only.

settings -> services -> FastAPI (login pages, gate) -> Gradio mounted at / -> uvicorn.
Run `python app.py --help` (or `mlx-manager --help`).
"""

from __future__ import annotations

import gc
import logging
import secrets
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from manager.cli.instance import (
    control_path,
    hold_data_dir,
    remove_control,
    write_control,
)
from manager.cli.main import build_parser, run_command, settings_from_args
from manager.cli.serving import configure_logging
from manager.errors import ManagerError
from manager.net import port_is_free
from manager.settings import Settings

if TYPE_CHECKING:  # a command other than serve (or --help) loads no services and no UI
    from fastapi import FastAPI

    from manager.services import Services

log = logging.getLogger("mlx_manager")

# Chat attachments (videos) are the largest uploads; the chat tab checks finer limits.
MAX_UPLOAD = "512mb"


def create_app(services: Services, control_token: str | None = None) -> FastAPI:
    """The whole HTTP app. Routes must be added before Gradio is mounted at '/'.
    `control_token`: opens the local control API the CLI uses (none without it)."""
    # Imported here so `mlx-manager users ...` answers without loading Gradio (~3 s).
    from components.gradio_startup import skip_stub_regeneration

    skip_stub_regeneration()  # before Gradio's first import
    import gradio as gr
    from fastapi import Request
    from starlette.middleware.cors import CORSMiddleware

    from components.dashboard import build_dashboard
    from components.gradio_queue import QueueVisits, quiet_queue
    from components.theme import THEME_CSS, dashboard_theme
    from components.views import DASHBOARD_CSS
    from manager.api.control import build_control_router, control_auth, first_claim
    from manager.api.gateway_front import DashboardApp, GatewayFront
    from manager.api.gateway_routes import build_gateway_routes
    from manager.api.key_auth import gateway_auth
    from manager.api.login import build_auth_router, font_paths
    from manager.api.session_gate import PUBLIC_PATHS, SessionGate, current_user

    app = DashboardApp(title="MLX Model Manager")
    dashboard = build_dashboard(services)
    # The sign-in pages wear the dashboard's theme (its CSS is ready once mounted).
    app.include_router(
        build_auth_router(services.auth, secure_cookies=services.settings.secure_cookies,
                          codes=services.login_codes,
                          theme_css=lambda: dashboard.theme_css)
    )
    # OpenAI/Anthropic endpoint (/v1/*, /metrics): API keys, never the session cookie.
    gateway = build_gateway_routes(services)
    app.include_router(gateway.router)
    if control_token is not None:
        # `mlx-manager start|stop|run|pull|rm|ps` while this dashboard runs.
        app.include_router(build_control_router(services))

    def gradio_user(request: Request) -> str | None:
        user = current_user(request)
        return user.email if user is not None else None

    settings = services.settings
    app = gr.mount_gradio_app(
        app,
        dashboard,
        path="/",
        auth_dependency=gradio_user,
        css=DASHBOARD_CSS + THEME_CSS,
        theme=dashboard_theme(),
        max_file_size=MAX_UPLOAD,
        allowed_paths=[str(settings.uploads_dir)],
        blocked_paths=[str(settings.db_path), f"{settings.db_path}-wal",
                       f"{settings.db_path}-shm", str(settings.secret_path),
                       str(settings.logs_dir), str(control_path(settings.data_dir))],
        footer_links=[],
    )
    # Gradio checks the files a request names (uploads only, symlinks resolved) and the
    # files it serves (allowed/blocked paths) only after launch(), which a mounted app
    # never runs (RECIPES.md section 6); without this any path a client posts is copied.
    dashboard.has_launched = True
    pace = quiet_queue(dashboard)
    if pace is not None:
        # Requests wake Gradio's queue from its slow idle poll (inside the gate: a
        # refused request wakes nothing).
        app.add_middleware(QueueVisits, pace=pace)
    gateway_claim = gateway_auth(services)
    claims = gateway_claim
    if control_token is not None:
        claims = first_claim(control_auth(control_token), claims)
    app.add_middleware(SessionGate, auth=services.auth, extra_auth=claims,
                       public_paths=PUBLIC_PATHS | font_paths(dashboard.theme_css))
    # Outermost, so a preflight from a listed origin is answered before the gate. Gradio
    # adds its own CORS (every localhost origin, or any origin when reached by a LAN
    # address) unless the parent app has a CORSMiddleware: with no origins listed this
    # one allows none.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(services.settings.cors_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        allow_credentials=False,
    )
    # In front of it all: API requests (no Origin header) go straight to the gateway,
    # past the stack above, which costs time to first token and CPU per streamed token.
    app.front = GatewayFront(gateway.router, gateway_claim, gateway.direct)
    return app


def start_share_link(settings: Settings) -> None:
    """Ask Gradio's tunnel for a public link in the background; offline it only warns."""

    def worker() -> None:
        from gradio import networking

        try:
            url = networking.setup_tunnel(
                "127.0.0.1", settings.port, secrets.token_urlsafe(32), None, None
            )
        except Exception as exc:  # noqa: BLE001 - any failure only means "no share link"
            log.warning(
                "Could not create a share link (%s). The dashboard keeps running at "
                "http://%s:%s", exc, settings.host, settings.port,
            )
            return
        log.info("Public share link: %s (anyone with it reaches the login page)", url)

    threading.Thread(target=worker, name="share-link", daemon=True).start()


def serve(settings: Settings, log_level: str = "info") -> int:
    if not port_is_free(settings.host, settings.port):
        log.error("Port %s on %s is already in use. Pick another with --port.",
                  settings.port, settings.host)
        return 1
    try:
        # One dashboard per data dir; `restore` takes the same lock.
        with hold_data_dir(settings.data_dir, f"a dashboard on port {settings.port}"):
            return _serve(settings, log_level)
    except ManagerError as exc:  # the data dir is taken or cannot be written, say
        log.error("%s", exc.message)
        return 1


def _serve(settings: Settings, log_level: str) -> int:
    url_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    if ":" in url_host:
        url_host = f"[{url_host}]"
    # Written first: a CLI command that finds the data dir held waits for it to listen.
    control = write_control(settings.data_dir, f"http://{url_host}:{settings.port}")
    try:
        return _serve_with(settings, log_level, control.token, url_host)
    finally:
        remove_control(settings.data_dir, control)


def _serve_with(settings: Settings, log_level: str, control_token: str, url_host: str
                ) -> int:
    import uvicorn

    from manager.cli.serving import DashboardServer, Shutdown
    from manager.servers.process import exit_on_signals, install_exit_hooks
    from manager.services import Services

    # A SIGTERM while Services.create auto-starts servers stops them, as Ctrl-C does.
    exit_on_signals()
    services = Services.create(settings)
    # By default the model servers stop with the dashboard; with --keep-servers (the
    # service mode) they outlive it and the next start adopts them.
    shutdown = Shutdown(services, keep_servers=settings.keep_servers)
    install_exit_hooks(shutdown)
    app = create_app(services, control_token)
    log.info("MLX Model Manager on http://%s:%s (data in %s)", url_host, settings.port,
             settings.data_dir)
    if settings.share:
        start_share_link(settings)
    # No log config or level: uvicorn's loggers use the dashboard's (configure_logging).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=None,
                            log_config=None, access_log=log_level == "debug",
                            timeout_graceful_shutdown=2)
    try:
        DashboardServer(config).run()
    except KeyboardInterrupt:
        # uvicorn handled Ctrl-C (a clean shutdown), then raises it again for the caller.
        log.debug("stopped by Ctrl-C")
    finally:
        shutdown()
    # Everything is closed: the interpreter's teardown would still garbage-collect
    # Gradio's whole object graph, seconds on a busy machine after the goodbye line.
    gc.freeze()
    return 0


def __getattr__(name: str) -> ModuleType:
    """`from app import notebook` in a notebook, loaded when asked for (the services with it)."""
    if name == "notebook":
        from manager.cli import notebook

        return notebook
    raise AttributeError(f"module 'app' has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    serving = args.command in (None, "serve")
    # Account commands print their own results; only problems should join them.
    level = getattr(args, "log_level", None) or ("info" if serving else "warning")
    configure_logging(level)
    try:
        settings = settings_from_args(args)
    except ManagerError as exc:  # a variable or flag out of range: say which, no traceback
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    if serving:
        return serve(settings, level)
    return run_command(args, settings)


if __name__ == "__main__":
    sys.exit(main())

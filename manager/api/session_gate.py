"""The gate in front of every route: a request needs a live session unless its path is public.

Gradio's own auth leaves many routes open (see RECIPES.md section 5), so a pure ASGI
middleware sits in front of the whole app and lets through only an explicit public list.
The session is re-checked on every request (AuthService.user_for_session): a signed-out,
revoked or disabled session is refused from the very next request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import quote

from anyio import to_thread
from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from manager.accounts.auth import AuthService, User

log = logging.getLogger(__name__)

SESSION_COOKIE = "mlxm_session"
#: The dashboard's theme as the sign-in pages load it (manager/api/login.py serves it).
THEME_PATH = "/login/theme.css"
#: The sign-in pages and what they load (their theme; app.py adds the theme's fonts).
#: "/login/code" takes a one-time sign-in link (GET); its POST checks the session itself.
PUBLIC_PATHS = frozenset({"/login", "/login/code", "/register", "/logout", "/favicon.ico",
                          THEME_PATH})

# Another authenticator (e.g. API keys for the gateway) can claim a request first.
ExtraAuth = Callable[[HTTPConnection], Awaitable[bool]]


class SessionGate:
    """ASGI middleware: every request needs a live session unless its path is public."""

    def __init__(
        self,
        app: ASGIApp,
        auth: AuthService,
        public_paths: Iterable[str] = PUBLIC_PATHS,
        extra_auth: ExtraAuth | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.public_paths = frozenset(public_paths)
        self.extra_auth = extra_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        if self.extra_auth is not None and await self.extra_auth(conn):
            await self.app(scope, receive, send)
            return
        token = conn.cookies.get(SESSION_COOKIE)
        user = await to_thread.run_sync(self.auth.user_for_session, token) if token else None
        if user is not None:
            scope.setdefault("state", {})["user"] = user
            await self.app(scope, receive, send)
            return
        await self._refuse(scope, conn, receive, send)

    async def _refuse(self, scope: Scope, conn: HTTPConnection, receive: Receive,
                      send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        method = scope.get("method", "GET")
        wants_page = "text/html" in conn.headers.get("accept", "")
        response: Response
        if method in ("GET", "HEAD") and wants_page:
            target = scope["path"] + (f"?{scope['query_string'].decode()}"
                                      if scope.get("query_string") else "")
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = JSONResponse({"detail": "Sign in first."}, status_code=401)
        await response(scope, receive, send)


def current_user(request: Request) -> User | None:
    """The user the gate attached to this request (None on public routes)."""
    return request.scope.get("state", {}).get("user")

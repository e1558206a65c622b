"""The HTTP side of accounts: login/register/logout pages and the gate in front of every route.

Gradio's own auth leaves many routes open (see RECIPES.md section 5), so a pure ASGI
middleware sits in front of the whole app and lets through only an explicit public list.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import quote, urlsplit

from anyio import to_thread
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from manager.accounts.auth import AuthService, User
from manager.errors import AccountNotActive, AuthenticationFailed, ManagerError, RateLimited

log = logging.getLogger(__name__)

SESSION_COOKIE = "mlxm_session"
PUBLIC_PATHS = frozenset({"/login", "/register", "/logout", "/favicon.ico"})

# Another authenticator (e.g. API keys for the gateway) can claim a request first.
ExtraAuth = Callable[[HTTPConnection], Awaitable[bool]]


def safe_next(target: str | None) -> str:
    """Only same-site paths: '/x' is fine, '//evil.com', '/\\evil.com' and 'http://...' are not."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


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


# --- pages -------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;background:#0f172a;color:#e2e8f0;
display:flex;min-height:100vh;align-items:center;justify-content:center;margin:0}
main{background:#1e293b;padding:2rem 2.25rem;border-radius:14px;width:min(380px,90vw);
box-shadow:0 10px 30px rgba(0,0,0,.35)}
h1{font-size:1.3rem;margin:0 0 .25rem}p.sub{margin:0 0 1.25rem;color:#94a3b8;font-size:.9rem}
label{display:block;font-size:.85rem;margin:.8rem 0 .3rem;color:#cbd5e1}
input{width:100%;box-sizing:border-box;padding:.6rem .7rem;border-radius:8px;border:1px solid #334155;
background:#0f172a;color:#e2e8f0;font-size:1rem}
button{margin-top:1.2rem;width:100%;padding:.65rem;border:0;border-radius:8px;background:#f97316;
color:#fff;font-weight:600;font-size:1rem;cursor:pointer}
.msg{padding:.6rem .75rem;border-radius:8px;font-size:.9rem;margin-bottom:.5rem}
.error{background:#7f1d1d;color:#fecaca}.info{background:#1e3a8a;color:#dbeafe}
a{color:#fdba74}.alt{margin-top:1rem;font-size:.9rem;color:#94a3b8;text-align:center}
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)} · MLX Model Manager</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers={"Cache-Control": "no-store"})


def _message(text: str | None, kind: str) -> str:
    return f"<div class='msg {kind}' role='alert'>{html.escape(text)}</div>" if text else ""


def login_page(next_path: str = "/", error: str | None = None, info: str | None = None,
               email: str = "", status: int = 200) -> HTMLResponse:
    body = (
        "<h1>MLX Model Manager</h1><p class='sub'>Sign in to manage your local models.</p>"
        f"{_message(error, 'error')}{_message(info, 'info')}"
        "<form method='post' action='/login'>"
        f"<input type='hidden' name='next' value='{html.escape(next_path)}'>"
        "<label for='email'>Email</label>"
        f"<input id='email' name='email' type='email' autocomplete='username' required "
        f"value='{html.escape(email)}'>"
        "<label for='password'>Password</label>"
        "<input id='password' name='password' type='password' autocomplete='current-password'"
        " required>"
        "<button type='submit'>Sign in</button></form>"
        "<p class='alt'>No account yet? <a href='/register'>Create one</a></p>"
    )
    return _page("Sign in", body, status)


def register_page(error: str | None = None, email: str = "", status: int = 200) -> HTMLResponse:
    body = (
        "<h1>Create an account</h1><p class='sub'>The first account becomes the administrator;"
        " later ones wait for approval.</p>"
        f"{_message(error, 'error')}"
        "<form method='post' action='/register'>"
        "<label for='email'>Email</label>"
        f"<input id='email' name='email' type='email' autocomplete='username' required "
        f"value='{html.escape(email)}'>"
        "<label for='password'>Password (8-128 characters)</label>"
        "<input id='password' name='password' type='password' autocomplete='new-password'"
        " minlength='8' maxlength='128' required>"
        "<label for='confirm'>Repeat password</label>"
        "<input id='confirm' name='confirm' type='password' autocomplete='new-password' required>"
        "<button type='submit'>Create account</button></form>"
        "<p class='alt'>Already registered? <a href='/login'>Sign in</a></p>"
    )
    return _page("Register", body, status)


def pending_page() -> HTMLResponse:
    body = (
        "<h1>Almost there</h1>"
        "<div class='msg info' role='status'>Your account was created and is waiting for an "
        "administrator's approval. You can sign in once it is approved.</div>"
        "<p class='alt'><a href='/login'>Back to sign in</a></p>"
    )
    return _page("Waiting for approval", body)


def _same_origin(request: Request) -> bool:
    """Refuse cross-site form posts (login CSRF); browsers always send Origin on POST."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def build_auth_router(auth: AuthService, *, secure_cookies: bool = False) -> APIRouter:
    router = APIRouter()

    def set_session(response: Response, user: User) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            auth.issue_session(user),
            max_age=auth.session_seconds,
            httponly=True,
            samesite="lax",
            secure=secure_cookies,
            path="/",
        )

    @router.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002
        if current_user_from_cookie(auth, request) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return login_page(safe_next(next))

    @router.post("/login", include_in_schema=False)
    def login_submit(
        request: Request,
        email: str = Form(""),
        password: str = Form(""),
        next: str = Form("/"),  # noqa: A002
    ) -> Response:
        target = safe_next(next)
        if not _same_origin(request):
            return login_page(target, error="This form was sent from another site.", status=403)
        try:
            user = auth.authenticate(email, password, client_address(request))
        except RateLimited as exc:
            return login_page(target, error=exc.message, email=email, status=429)
        except AccountNotActive as exc:
            return login_page(target, info=exc.message, email=email, status=403)
        except AuthenticationFailed as exc:
            return login_page(target, error=exc.message, email=email, status=401)
        response = RedirectResponse(target, status_code=303)
        set_session(response, user)
        log.info("signed in: %s", user.email)
        return response

    @router.get("/register", include_in_schema=False)
    def register_form() -> Response:
        return register_page()

    @router.post("/register", include_in_schema=False)
    def register_submit(
        request: Request,
        email: str = Form(""),
        password: str = Form(""),
        confirm: str = Form(""),
    ) -> Response:
        if not _same_origin(request):
            return register_page("This form was sent from another site.", email, status=403)
        if password != confirm:
            return register_page("The two passwords differ.", email, status=400)
        try:
            user = auth.register(email, password)
        except ManagerError as exc:
            return register_page(exc.message, email, status=400)
        if not user.is_admin:
            return pending_page()
        response = RedirectResponse("/", status_code=303)
        set_session(response, user)
        return response

    def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    router.add_api_route("/logout", logout, methods=["GET", "POST"], include_in_schema=False)
    return router


def current_user_from_cookie(auth: AuthService, request: Request) -> User | None:
    return auth.user_for_session(request.cookies.get(SESSION_COOKIE))

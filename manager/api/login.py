"""The HTTP side of accounts: sign-in, registration and sign-out pages and their routes.

The gate that guards every other route is manager.api.session_gate.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from manager.accounts.auth import DEVICE_SECONDS, AuthService, User
from manager.accounts.login_codes import LoginCodes
from manager.api.session_gate import SESSION_COOKIE, THEME_PATH
from manager.errors import (
    AccountNotActive,
    AuthenticationFailed,
    Conflict,
    ManagerError,
    RateLimited,
    StorageFull,
)

log = logging.getLogger(__name__)

DEVICE_COOKIE = "mlxm_device"
CODE_PATH = "/login/code"
CODE_USED = ("This sign-in link was used already or has expired. Sign in below, or ask "
             "the notebook for a new one (run notebook.show() again).")
REGISTERED = ("If this address can be registered, your account now waits for an "
              "administrator's approval. You can sign in once it is approved.")


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


# --- pages -------------------------------------------------------------------------------

# The dashboard's own theme (Gradio's CSS variables for light and dark) is served to the
# sign-in pages at THEME_PATH so that both look alike; app.py hands it over.
_FONT_URL = re.compile(r"""url\((['"]?)static/(fonts/[^'")]+)\1\)""")

# Only the theme's variables: its light values, or its dark ones under `.dark`.
_STYLE = """
body{font-family:var(--font);background:var(--body-background-fill);
color:var(--body-text-color);display:flex;min-height:100vh;align-items:center;
justify-content:center;margin:0;font-size:16px}
main{background:var(--block-background-fill);border:1px solid var(--block-border-color);
padding:2rem 2.25rem;border-radius:var(--radius-lg);width:min(380px,90vw)}
h1{font-size:1.3rem;margin:0 0 .25rem}p.sub{margin:0 0 1.25rem;font-size:.9rem}
label{display:block;font-size:.9rem;margin:.8rem 0 .3rem;font-weight:600}
input{width:100%;box-sizing:border-box;padding:.6rem .7rem;border-radius:var(--input-radius);
border:1px solid var(--input-border-color);background:var(--input-background-fill);
color:var(--body-text-color);font:inherit}
input:focus{outline:2px solid var(--color-accent);outline-offset:1px}
button{margin-top:1.2rem;width:100%;padding:.65rem;border:0;border-radius:var(--radius-md);
background:var(--button-primary-background-fill);color:var(--button-primary-text-color);
font:inherit;font-weight:600;cursor:pointer}
button:hover{background:var(--button-primary-background-fill-hover)}
.msg{padding:.6rem .75rem;border-radius:var(--radius-md);font-size:.9rem;margin-bottom:.5rem}
.error{background:var(--error-background-fill);color:var(--error-text-color);
border:1px solid var(--error-border-color)}
.info{background:var(--background-fill-secondary);border:1px solid var(--border-color-primary)}
a{color:var(--link-text-color)}.alt{margin-top:1rem;font-size:.9rem;text-align:center}
"""
# Light or dark as the dashboard decides: its ?__theme= (here or in the page the person
# is sent back to), else the system's preference. Runs before the first paint.
_THEME_SCRIPT = """(function(){var q=new URLSearchParams(location.search),t=q.get('__theme');
if(!t){var m=/[?&]__theme=(dark|light)/.exec(q.get('next')||'');t=m&&m[1];}
if(t==='dark'||(t!=='light'&&matchMedia('(prefers-color-scheme: dark)').matches))
document.documentElement.classList.add('dark');})();"""


def theme_stylesheet(theme_css: str) -> str:
    """The dashboard's theme CSS as the sign-in pages load it (font URLs made absolute)."""
    return _FONT_URL.sub(lambda m: f"url('/static/{m.group(2)}')", theme_css)


def font_paths(theme_css: str) -> frozenset[str]:
    """The theme's font files: the sign-in pages need them before anyone is signed in."""
    return frozenset(f"/static/{m.group(2)}" for m in _FONT_URL.finditer(theme_css))


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<meta name='color-scheme' content='light dark'>"
        f"<title>{html.escape(title)} · MLX Model Manager</title>"
        f"<script>{_THEME_SCRIPT}</script>"
        f"<link rel='stylesheet' href='{THEME_PATH}'><style>{_STYLE}</style></head>"
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
    # The same answer whether or not the email was already taken: the page must not tell
    # a stranger which addresses have accounts.
    body = (
        "<h1>Almost there</h1>"
        f"<div class='msg info' role='status'>{html.escape(REGISTERED)}</div>"
        "<p class='alt'><a href='/login'>Back to sign in</a></p>"
    )
    return _page("Waiting for approval", body)


def logout_page(error: str | None = None, status: int = 200) -> HTMLResponse:
    """GET /logout only asks: signing out is a same-origin POST, so a link on another
    site cannot sign anyone out."""
    body = (
        "<h1>Sign out</h1>"
        f"{_message(error, 'error')}"
        "<form method='post' action='/logout'>"
        "<button type='submit' id='logout-confirm'>Sign out</button></form>"
        "<form method='post' action='/logout'>"
        "<input type='hidden' name='everywhere' value='1'>"
        "<button type='submit' id='logout-everywhere'>Sign out on every device</button></form>"
        "<p class='alt'><a href='/'>Back to the dashboard</a></p>"
    )
    return _page("Sign out", body, status)


def _same_origin(request: Request) -> bool:
    """Refuse cross-site form posts (login CSRF, forced sign-out); browsers send Origin
    on every POST, and Sec-Fetch-Site where they support it."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def build_auth_router(auth: AuthService, *, secure_cookies: bool = False,
                      codes: LoginCodes | None = None,
                      theme_css: Callable[[], str] = lambda: "") -> APIRouter:
    """The sign-in pages; with `codes`, also the one-time sign-in links a notebook hands
    its iframe (manager/accounts/login_codes.py). `theme_css` gives the dashboard's theme
    (read when asked: the app's theme is ready only once Gradio is mounted)."""
    router = APIRouter()

    @router.get(THEME_PATH, include_in_schema=False)
    def theme() -> Response:
        return Response(theme_stylesheet(theme_css()), media_type="text/css",
                        headers={"Cache-Control": "no-cache"})

    def set_cookies(response: Response, request: Request, user: User) -> None:
        token = auth.issue_session(user, user_agent=request.headers.get("user-agent", ""),
                                   address=client_address(request))
        response.set_cookie(SESSION_COOKIE, token, max_age=auth.session_seconds,
                            httponly=True, samesite="lax", secure=secure_cookies, path="/")
        # Marks this browser as one that knows the password (see LoginLimiter).
        response.set_cookie(DEVICE_COOKIE, auth.issue_device(user), max_age=DEVICE_SECONDS,
                            httponly=True, samesite="strict", secure=secure_cookies,
                            path="/login")

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
            user = auth.authenticate(email, password, client_address(request),
                                     device=request.cookies.get(DEVICE_COOKIE))
        except RateLimited as exc:
            page = login_page(target, error=exc.message, email=email, status=429)
            page.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return page
        except AccountNotActive as exc:
            return login_page(target, info=exc.message, email=email, status=403)
        except AuthenticationFailed as exc:
            return login_page(target, error=exc.message, email=email, status=401)
        except StorageFull as exc:  # a sign-in writes its session
            return login_page(target, error=exc.message, email=email, status=503)
        response = RedirectResponse(target, status_code=303)
        set_cookies(response, request, user)
        log.info("signed in: %s", user.email)
        return response

    if codes is not None:
        _add_code_routes(router, auth, codes, set_cookies)

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
            user = auth.register(email, password, client=client_address(request))
        except Conflict:
            # Taken: answered exactly like a new registration waiting for approval.
            return pending_page()
        except RateLimited as exc:
            page = register_page(exc.message, email, status=429)
            page.headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            return page
        except StorageFull as exc:
            return register_page(exc.message, email, status=503)
        except ManagerError as exc:
            return register_page(exc.message, email, status=400)
        if not user.is_admin:
            return pending_page()
        response = RedirectResponse("/", status_code=303)
        set_cookies(response, request, user)
        return response

    @router.get("/logout", include_in_schema=False)
    def logout_form() -> Response:
        return logout_page()

    @router.post("/logout", include_in_schema=False)
    def logout(request: Request, everywhere: str = Form("")) -> Response:
        if not _same_origin(request):
            return logout_page("This form was sent from another site.", status=403)
        token = request.cookies.get(SESSION_COOKIE)
        user = auth.user_for_session(token)
        if everywhere and user is not None:
            auth.sign_out_everywhere(user, user.id)
        else:
            auth.sign_out(token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router


def _add_code_routes(router: APIRouter, auth: AuthService, codes: LoginCodes,
                     set_cookies: Callable[[Response, Request, User], None]) -> None:
    @router.get(CODE_PATH, include_in_schema=False)
    def login_with_code(request: Request, code: str = "") -> Response:
        user_id = codes.redeem(code)
        user = auth.get(user_id) if user_id is not None else None
        if user is None or not user.is_active:
            log.info("a one-time sign-in link was refused (used, expired or unknown)")
            return login_page(error=CODE_USED, status=401)
        # The redirect takes the code out of the address bar; nothing is sent on with it.
        response = RedirectResponse("/", status_code=303,
                                    headers={"Referrer-Policy": "no-referrer",
                                             "Cache-Control": "no-store"})
        set_cookies(response, request, user)
        log.info("signed in with a one-time link: %s", user.email)
        return response

    @router.post(CODE_PATH, include_in_schema=False)
    def issue_code(request: Request) -> Response:
        """A one-time sign-in link for the signed-in caller (the gate lets this path
        through for the GET above, so the session is checked here)."""
        if not _same_origin(request):
            return JSONResponse({"detail": "This request came from another site."}, 403)
        user = current_user_from_cookie(auth, request)
        if user is None:
            return JSONResponse({"detail": "Sign in first."}, 401)
        path = f"{CODE_PATH}?code={codes.issue(user.id)}"
        return JSONResponse({"path": path}, headers={"Cache-Control": "no-store"})


def current_user_from_cookie(auth: AuthService, request: Request) -> User | None:
    return auth.user_for_session(request.cookies.get(SESSION_COOKIE))

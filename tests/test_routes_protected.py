"""Every route the app registers refuses a request without a session, except the public list.

The gateway's routes (/v1/*, /metrics) answer to API keys instead: without one they
refuse with 401 in their API's own error format, and a session cookie does not open them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Mount, Route, WebSocketRoute

from manager.api.control import is_control_path
from manager.api.gateway_routes import SERVED
from manager.api.login import CODE_PATH, CODE_USED
from manager.api.session_gate import PUBLIC_PATHS, SESSION_COOKIE
from manager.api.wire import ApiFormat, api_format, is_gateway_path
from tests.conftest import LiveDashboard, SharedApp


@pytest.fixture
def dashboard(shared_app_dashboard: LiveDashboard) -> LiveDashboard:
    """These routes need no socket: the module's one app, in-process (httpx.ASGITransport),
    handed to each test as new."""
    return shared_app_dashboard


@pytest.fixture
def anonymous(shared_app_dashboard: LiveDashboard) -> LiveDashboard:
    """The same app, for the tests that only knock without a session."""
    return shared_app_dashboard


PARAM = re.compile(r"\{[^}]+\}")
# Exactly these answer to API keys; anything else under /v1 would be a gap.
GATEWAY_ROUTES = {
    "/v1", "/v1/{rest:path}", "/v1/models", "/v1/models/{name:path}", "/v1/chat/completions",
    "/v1/completions", "/v1/messages", "/v1/messages/count_tokens", "/metrics",
    # The Responses API
    "/v1/responses", "/v1/responses/{response_id}", "/v1/responses/{response_id}/input_items",
    # Ollama's API
    "/api", "/api/{rest:path}", "/api/version", "/api/tags", "/api/ps", "/api/show",
    "/api/chat", "/api/generate", "/api/pull", "/api/push", "/api/create", "/api/copy",
    "/api/delete", "/api/blobs/{digest:path}",
}


def walk(routes: list, prefix: str = "") -> Iterator[tuple[str, frozenset[str]]]:
    """(path, methods) for every route, mounted sub-apps (Gradio) included."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            # FastAPI keeps include_router() results as lazy branches with their own prefix.
            yield from walk(included.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            yield from walk(route.routes, prefix + route.path)
        elif isinstance(route, WebSocketRoute):
            yield prefix + route.path, frozenset({"WEBSOCKET"})
        elif isinstance(route, Route):
            yield prefix + route.path, frozenset(route.methods or {"GET"})


def concrete(path: str) -> str:
    return PARAM.sub("x", path) or "/"


@pytest.fixture(scope="module")
def app_routes(shared_app: SharedApp) -> list[tuple[str, frozenset[str]]]:
    routes = sorted(set(walk(shared_app.app.routes)))
    assert len(routes) > 40, "the walk should reach Gradio's own routes"
    assert any(path.startswith("/gradio_api/") for path, _ in routes)
    return routes


def assert_api_refusal(response: httpx.Response, url: str) -> None:
    """401 in the API's own format (what the openai / anthropic SDKs parse)."""
    assert response.status_code == 401, (url, response.status_code)
    body = response.json()
    if api_format(url) is ApiFormat.ANTHROPIC:
        assert body["type"] == "error", url
        assert body["error"]["type"] == "authentication_error", url
    elif api_format(url) is ApiFormat.OLLAMA:
        assert set(body) == {"error"} and "API key" in body["error"], url
    else:
        assert set(body["error"]) >= {"message", "type", "code"}, url
        assert body["error"]["code"] in ("missing_api_key", "invalid_api_key"), url


def test_the_gateway_routes_are_exactly_the_expected_ones(
    app_routes: list[tuple[str, frozenset[str]]]
) -> None:
    assert {path for path, _ in app_routes if is_gateway_path(concrete(path))} == GATEWAY_ROUTES


def test_no_route_answers_2xx_without_a_session(
    anonymous: LiveDashboard, app_routes: list[tuple[str, frozenset[str]]]
) -> None:
    checked = gateway_checked = control_checked = 0
    with anonymous.client(follow_redirects=False) as client:
        for path, methods in app_routes:
            url = concrete(path)
            for method in sorted(methods - {"HEAD", "OPTIONS", "WEBSOCKET"}):
                for accept in ("text/html", "application/json"):
                    response = client.request(method, url, headers={"Accept": accept})
                    checked += 1
                    if url in PUBLIC_PATHS:
                        continue
                    assert not response.is_success, (method, url, response.status_code)
                    if is_gateway_path(url):
                        assert_api_refusal(response, url)
                        gateway_checked += 1
                        continue
                    if is_control_path(url):  # the CLI's token only (test_cli_run.py)
                        assert response.status_code == 401, (method, url)
                        assert "error" in response.json()
                        control_checked += 1
                        continue
                    if method == "GET" and accept == "text/html":
                        assert response.status_code == 303, (url, response.status_code)
                        assert response.headers["location"].startswith("/login?next=")
                    else:
                        assert response.status_code == 401, (method, url)
                        assert response.json() == {"detail": "Sign in first."}
    assert checked > 80
    assert gateway_checked >= 2 * len(GATEWAY_ROUTES)
    assert control_checked >= 20


def test_a_session_does_not_open_the_gateway_and_a_key_does_not_open_the_dashboard(
    dashboard: LiveDashboard, app_routes: list[tuple[str, frozenset[str]]]
) -> None:
    dashboard.register("alice@example.com")
    alice = dashboard.services.auth.get_by_email("alice@example.com")
    key = dashboard.services.api_keys.create(alice, "walk").secret
    cookie = {SESSION_COOKIE: dashboard.session_cookie("alice@example.com")}
    with dashboard.client(follow_redirects=False, cookies=cookie) as client:
        for url in ("/v1/models", "/v1/messages", "/metrics", "/v1/x"):
            assert_api_refusal(client.get(url, headers={"Accept": "application/json"}), url)
    with dashboard.client(follow_redirects=False) as client:
        for header in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}):
            assert client.get("/v1/models", headers=header).status_code == 200
            for path, _ in app_routes:
                url = concrete(path)
                if is_gateway_path(url) or url in PUBLIC_PATHS:
                    continue
                response = client.get(url, headers={**header, "Accept": "application/json"})
                assert response.status_code == 401, (url, response.status_code)


@pytest.mark.parametrize(
    "path",
    ["/", "/config", "/gradio_api/info", "/gradio_api/user", "/gradio_api/token",
     "/gradio_api/app_id", "/gradio_api/startup-events", "/manifest.json", "/docs",
     "/openapi.json", "/gradio_api/upload", "/theme.css", "/gradio_api/queue/data",
     "/gradio_api/heartbeat/abc", "/does-not-exist", "/login/../config", "/LOGIN"],
)
def test_known_gradio_gaps_are_closed(anonymous: LiveDashboard, path: str) -> None:
    with anonymous.client(follow_redirects=False) as client:
        for method in ("GET", "POST"):
            response = client.request(method, path)
            assert response.status_code == 401, (method, path, response.status_code)


def test_the_public_list_is_small_and_explicit() -> None:
    # /login/code: a one-time sign-in link (GET); its POST checks the session itself.
    assert PUBLIC_PATHS == {"/login", "/login/code", "/register", "/logout", "/favicon.ico",
                            "/login/theme.css"}


def test_the_sign_in_page_gets_the_dashboards_theme_and_fonts_only(
        anonymous: LiveDashboard) -> None:
    """Issue 15: the sign-in pages wear the app's theme, so they load it signed out."""
    with anonymous.client(follow_redirects=False) as client:
        theme = client.get("/login/theme.css")
        assert theme.status_code == 200 and theme.headers["content-type"].startswith("text/css")
        assert "--body-background-fill" in theme.text and ":root.dark" in theme.text
        fonts = re.findall(r"url\('(/static/fonts/[^']+)'\)", theme.text)
        assert fonts and all(client.get(font).status_code == 200 for font in fonts)
        # Only the fonts: the rest of Gradio's static files still need a session.
        assert client.get("/static/img/logo.svg").status_code == 401


def test_with_a_session_the_same_routes_work(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    with dashboard.login("alice@example.com") as client:
        assert client.get("/config").status_code == 200
        assert client.get("/gradio_api/info").status_code == 200
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "gradio" in page.text.lower()


def test_the_dashboard_does_not_phone_home(dashboard: LiveDashboard) -> None:
    """Gradio's analytics are off: with them on, every app build also started a thread that
    asked the internet for Gradio's latest version."""
    dashboard.register("alice@example.com")
    with dashboard.login("alice@example.com") as client:
        assert client.get("/config").json()["analytics_enabled"] is False


def test_a_redirect_keeps_where_the_user_was_going(anonymous: LiveDashboard) -> None:
    with anonymous.client(follow_redirects=False) as client:
        response = client.get("/?tab=chat", headers={"Accept": "text/html"})
    assert response.headers["location"] == "/login?next=%2F%3Ftab%3Dchat"


def test_websocket_upgrade_without_a_session_is_refused(
        shared_live_dashboard: LiveDashboard) -> None:
    # A real socket: only uvicorn turns the upgrade into a websocket scope.
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    response = httpx.get(shared_live_dashboard.url + "/gradio_api/queue/join", headers=headers,
                         timeout=10)
    assert response.status_code in (401, 403)


def test_a_signed_in_caller_gets_a_link_that_signs_a_browser_in_once(
        dashboard: LiveDashboard) -> None:
    with dashboard.client(follow_redirects=False) as anonymous:
        refused = anonymous.post(CODE_PATH)
        assert (refused.status_code, refused.json()) == (401, {"detail": "Sign in first."})
    dashboard.register("ada@example.com")
    with dashboard.login("ada@example.com") as client:
        forged = client.post(CODE_PATH, headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403
        issued = client.post(CODE_PATH)
    assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
    path = issued.json()["path"]
    assert path.startswith(f"{CODE_PATH}?code=")

    with dashboard.client(follow_redirects=False) as browser:
        signed_in = browser.get(path)
        assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/")
        assert signed_in.headers["referrer-policy"] == "no-referrer"
        cookie = signed_in.cookies[SESSION_COOKIE]
    with dashboard.client(follow_redirects=False,
                          cookies={SESSION_COOKIE: cookie}) as browser:
        assert browser.get("/config").status_code == 200
    with dashboard.client(follow_redirects=False) as other:
        again = other.get(path)
        assert again.status_code == 401 and CODE_USED.split(".")[0] in again.text
        assert SESSION_COOKIE not in again.cookies


def test_the_posts_served_past_the_router_answer_as_the_router_does(
    dashboard: LiveDashboard,
) -> None:
    # A browser (Origin) takes the full stack and the router; an API client the direct
    # handlers (gateway_routes.SERVED): both answer alike, and other methods on those
    # paths still reach the router's Ollama- or OpenAI-shaped 405.
    dashboard.register("alice@example.com")
    alice = dashboard.services.auth.get_by_email("alice@example.com")
    key = dashboard.services.api_keys.create(alice, "direct").secret
    with dashboard.client(follow_redirects=False) as client:
        for path in SERVED:
            for headers in ({}, {"Authorization": "Bearer mlxm-wrong"},
                            {"Authorization": f"Bearer {key}"}):
                direct = client.post(path, headers=headers, content=b"{not json")
                routed = client.post(path, headers={**headers, "Origin": "http://x.test"},
                                     content=b"{not json")
                assert direct.status_code == routed.status_code, (path, headers)
                assert direct.json() == routed.json(), (path, headers)
            assert direct.status_code == 400, path  # the key is good, the body is not
            other = client.get(path, headers={"Authorization": f"Bearer {key}"})
            assert other.status_code == 405 and other.headers["allow"] == "POST", path
            assert f"GET is not served at {path}: use POST." in json.dumps(other.json())

"""Every route the app registers refuses a request without a session, except the public list."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Mount, Route, WebSocketRoute

from manager.web_auth import PUBLIC_PATHS
from tests.conftest import LiveDashboard

PARAM = re.compile(r"\{[^}]+\}")


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


@pytest.fixture
def app_routes(dashboard: LiveDashboard) -> list[tuple[str, frozenset[str]]]:
    from app import create_app

    # A second app object over the same services: its route table is what is served.
    routes = sorted(set(walk(create_app(dashboard.services).routes)))
    assert len(routes) > 40, "the walk should reach Gradio's own routes"
    assert any(path.startswith("/gradio_api/") for path, _ in routes)
    return routes


def test_no_route_answers_2xx_without_a_session(
    dashboard: LiveDashboard, app_routes: list[tuple[str, frozenset[str]]]
) -> None:
    checked = 0
    with dashboard.client(follow_redirects=False) as client:
        for path, methods in app_routes:
            url = concrete(path)
            for method in sorted(methods - {"HEAD", "OPTIONS", "WEBSOCKET"}):
                for accept in ("text/html", "application/json"):
                    response = client.request(method, url, headers={"Accept": accept})
                    checked += 1
                    if url in PUBLIC_PATHS:
                        continue
                    assert not response.is_success, (method, url, response.status_code)
                    if method == "GET" and accept == "text/html":
                        assert response.status_code == 303, (url, response.status_code)
                        assert response.headers["location"].startswith("/login?next=")
                    else:
                        assert response.status_code == 401, (method, url)
                        assert response.json() == {"detail": "Sign in first."}
    assert checked > 80


@pytest.mark.parametrize(
    "path",
    ["/", "/config", "/gradio_api/info", "/gradio_api/user", "/gradio_api/token",
     "/gradio_api/app_id", "/gradio_api/startup-events", "/manifest.json", "/docs",
     "/openapi.json", "/gradio_api/upload", "/theme.css", "/gradio_api/queue/data",
     "/gradio_api/heartbeat/abc", "/does-not-exist", "/login/../config", "/LOGIN"],
)
def test_known_gradio_gaps_are_closed(dashboard: LiveDashboard, path: str) -> None:
    with dashboard.client(follow_redirects=False) as client:
        for method in ("GET", "POST"):
            response = client.request(method, path)
            assert response.status_code == 401, (method, path, response.status_code)


def test_the_public_list_is_small_and_explicit() -> None:
    assert PUBLIC_PATHS == {"/login", "/register", "/logout", "/favicon.ico"}


def test_with_a_session_the_same_routes_work(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    with dashboard.login("alice@example.com") as client:
        assert client.get("/config").status_code == 200
        assert client.get("/gradio_api/info").status_code == 200
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "gradio" in page.text.lower()


def test_a_redirect_keeps_where_the_user_was_going(dashboard: LiveDashboard) -> None:
    with dashboard.client(follow_redirects=False) as client:
        response = client.get("/?tab=chat", headers={"Accept": "text/html"})
    assert response.headers["location"] == "/login?next=%2F%3Ftab%3Dchat"


def test_websocket_upgrade_without_a_session_is_refused(dashboard: LiveDashboard) -> None:
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    response = httpx.get(dashboard.url + "/gradio_api/queue/join", headers=headers, timeout=10)
    assert response.status_code in (401, 403)

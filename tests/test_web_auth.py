"""Login, registration and logout through the real HTTP app."""

from __future__ import annotations

import pytest

from manager.api.login import SESSION_COOKIE, safe_next
from tests.conftest import PASSWORD, LiveDashboard


@pytest.fixture
def dashboard(shared_app_dashboard: LiveDashboard) -> LiveDashboard:
    """These routes need no socket: the real app, in-process (httpx.ASGITransport), one
    for the module, handed to each test as new."""
    return shared_app_dashboard


def _set_cookie(response) -> str:  # noqa: ANN001 - an httpx.Response
    return response.headers.get("set-cookie", "")


def test_first_registration_signs_in_as_admin(dashboard: LiveDashboard) -> None:
    response = dashboard.register("alice@example.com")
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = _set_cookie(response)
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Max-Age=604800" in cookie
    user = dashboard.services.auth.get_by_email("alice@example.com")
    assert user is not None and user.is_admin


def test_later_registrations_wait_for_approval(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    response = dashboard.register("bob@example.com")
    assert response.status_code == 200
    assert "your account now waits for an administrator&#x27;s approval" in response.text
    assert SESSION_COOKIE not in _set_cookie(response)
    with dashboard.client() as client:
        login = client.post("/login", data={"email": "bob@example.com", "password": PASSWORD})
    assert login.status_code == 403
    assert "waiting for an administrator&#x27;s approval" in login.text
    assert SESSION_COOKIE not in login.cookies


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"email": "nope", "password": PASSWORD, "confirm": PASSWORD}, "not a valid email"),
        ({"email": "a@example.com", "password": "short", "confirm": "short"}, "8 to 128"),
        ({"email": "a@example.com", "password": PASSWORD, "confirm": "different"}, "differ"),
    ],
)
def test_registration_errors_are_shown_on_the_form(
    dashboard: LiveDashboard, form: dict[str, str], message: str
) -> None:
    with dashboard.client() as client:
        response = client.post("/register", data=form)
    assert response.status_code == 400
    assert message in response.text
    assert dashboard.services.auth.all_users() == []


def test_wrong_password_and_unknown_email_look_the_same(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    with dashboard.client() as client:
        wrong = client.post("/login", data={"email": "alice@example.com", "password": "x" * 9})
        unknown = client.post("/login", data={"email": "zed@example.com", "password": "x" * 9})
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong email or password." in wrong.text
    assert wrong.text.replace("alice", "zed") == unknown.text


def test_login_redirects_to_next_and_logout_clears_the_cookie(
    dashboard: LiveDashboard,
) -> None:
    dashboard.register("alice@example.com")
    with dashboard.client() as client:
        response = client.post(
            "/login",
            data={"email": "alice@example.com", "password": PASSWORD, "next": "/?tab=chat"},
        )
        assert response.status_code == 303 and response.headers["location"] == "/?tab=chat"
        assert client.get("/config").status_code == 200
        out = client.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert f'{SESSION_COOKIE}=""' in _set_cookie(out) or "Max-Age=0" in _set_cookie(out)
        assert client.get("/config").status_code == 401


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", "/"),
        ("/?tab=chat", "/?tab=chat"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_next_cannot_leave_the_site(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_login_with_an_offsite_next_lands_home(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    with dashboard.client() as client:
        response = client.post(
            "/login",
            data={"email": "alice@example.com", "password": PASSWORD,
                  "next": "//evil.example/"},
        )
    assert response.headers["location"] == "/"


def test_cross_site_form_posts_are_refused(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    with dashboard.client() as client:
        response = client.post(
            "/login",
            data={"email": "alice@example.com", "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.cookies


def test_a_signed_in_user_visiting_login_goes_home(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    with dashboard.login("alice@example.com") as client:
        response = client.get("/login", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_disabling_a_user_ends_their_open_session(dashboard: LiveDashboard) -> None:
    auth = dashboard.services.auth
    dashboard.register("alice@example.com")
    dashboard.register("bob@example.com")
    admin = auth.get_by_email("alice@example.com")
    bob = auth.get_by_email("bob@example.com")
    auth.approve(admin, bob.id)
    with dashboard.login("bob@example.com") as client:
        assert client.get("/config").status_code == 200
        auth.disable(admin, bob.id)
        assert client.get("/config").status_code == 401

"""Server-side sessions: records, sign-out that ends the cookie, sign out everywhere, admins."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from manager.accounts.auth import AuthService, User
from manager.api.login import SESSION_COOKIE
from manager.errors import NotFound, PermissionDenied
from manager.store import Store
from tests.conftest import PASSWORD, TEST_HASHER, Clock, LiveDashboard
from tests.gradio_clients import gradio_client

PW = "correct horse battery"


@pytest.fixture
def auth(tmp_path: Path, clock: Clock) -> AuthService:
    return AuthService(Store(tmp_path / "manager.db"), b"k" * 32, clock=clock,
                       hasher=TEST_HASHER)


@pytest.fixture
def people(auth: AuthService) -> tuple[User, User]:
    alice = auth.register("alice@example.com", PW)
    bob = auth.approve(alice, auth.register("bob@example.com", PW).id)
    return alice, bob


# --- the domain ----------------------------------------------------------------------------

def test_a_session_is_recorded_and_ends_when_signed_out(
    auth: AuthService, people: tuple[User, User], clock: Clock
) -> None:
    _, bob = people
    token = auth.issue_session(bob, user_agent="Firefox/140", address="10.0.0.7")
    [record] = auth.list_sessions(bob)
    assert (record.email, record.user_agent, record.address) == (
        "bob@example.com", "Firefox/140", "10.0.0.7")
    assert record.created_at == record.last_seen_at == "2027-01-15T08:00:00+00:00"
    clock.now += 120
    assert auth.user_for_session(token) == bob
    assert auth.list_sessions(bob)[0].last_seen_at == "2027-01-15T08:02:00+00:00"
    auth.sign_out(token)
    assert auth.user_for_session(token) is None
    assert auth.list_sessions(bob) == []


def test_sign_out_everywhere_ends_only_that_users_sessions(
    auth: AuthService, people: tuple[User, User]
) -> None:
    alice, bob = people
    bobs = [auth.issue_session(bob) for _ in range(3)]
    alices = auth.issue_session(alice)
    assert auth.sign_out_everywhere(bob, bob.id) == 3
    assert [auth.user_for_session(t) for t in bobs] == [None] * 3
    assert auth.user_for_session(alices) == alice
    # A new sign-in afterwards works as usual.
    assert auth.user_for_session(auth.issue_session(bob)) == bob


def test_admins_see_and_end_anyones_sessions_users_only_their_own(
    auth: AuthService, people: tuple[User, User]
) -> None:
    alice, bob = people
    alices = auth.issue_session(alice, address="10.0.0.1")
    bobs = auth.issue_session(bob, address="10.0.0.2")
    assert {r.email for r in auth.list_sessions(alice, everyone=True)} == {
        "alice@example.com", "bob@example.com"}
    assert [r.email for r in auth.list_sessions(bob)] == ["bob@example.com"]
    with pytest.raises(PermissionDenied):
        auth.list_sessions(bob, everyone=True)
    alices_id = auth.list_sessions(alice)[0].id
    with pytest.raises(PermissionDenied):
        auth.revoke_session(bob, alices_id)
    with pytest.raises(PermissionDenied):
        auth.sign_out_everywhere(bob, alice.id)
    assert auth.user_for_session(alices) == alice
    auth.revoke_session(alice, auth.list_sessions(bob)[0].id)
    assert auth.user_for_session(bobs) is None
    auth.issue_session(bob)
    assert auth.sign_out_everywhere(alice, bob.id) == 1
    with pytest.raises(NotFound):
        auth.revoke_session(alice, "no-such-session")


def test_a_session_cookie_is_bound_to_its_user(auth: AuthService,
                                               people: tuple[User, User]) -> None:
    """A record of one user does not keep a token claiming another user alive."""
    alice, bob = people
    token = auth.issue_session(bob)
    claims = jwt.decode(token, b"k" * 32, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert auth.user_for_session(token) == bob
    swapped = jwt.encode({**claims, "sub": str(alice.id), "ver": alice.token_version},
                         b"k" * 32, algorithm="HS256")
    assert auth.user_for_session(swapped) is None


# --- through HTTP --------------------------------------------------------------------------

@pytest.fixture
def dashboard(shared_live_dashboard: LiveDashboard) -> LiveDashboard:
    """The module's one app on a socket (gradio_client needs one), handed over as new."""
    return shared_live_dashboard


def _signed_in(dashboard: LiveDashboard) -> str:
    dashboard.register("alice@example.com")
    return dashboard.session_cookie("alice@example.com")


def test_the_old_cookie_stops_working_after_sign_out(dashboard: LiveDashboard) -> None:
    cookie = _signed_in(dashboard)
    with dashboard.client(cookies={SESSION_COOKIE: cookie}) as browser:
        assert browser.get("/config").status_code == 200
        out = browser.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
    # Someone who copied the cookie before the sign-out gets nothing with it.
    with dashboard.client(cookies={SESSION_COOKIE: cookie}) as copy:
        assert copy.get("/config").status_code == 401


def test_get_logout_only_asks_and_signs_nobody_out(dashboard: LiveDashboard) -> None:
    cookie = _signed_in(dashboard)
    with dashboard.client(cookies={SESSION_COOKIE: cookie}) as browser:
        page = browser.get("/logout")
        assert page.status_code == 200
        assert "method='post' action='/logout'" in page.text
        assert "set-cookie" not in page.headers
        assert browser.get("/config").status_code == 200


def test_a_cross_site_sign_out_is_refused(dashboard: LiveDashboard) -> None:
    cookie = _signed_in(dashboard)
    with dashboard.client(cookies={SESSION_COOKIE: cookie}) as browser:
        for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            refused = browser.post("/logout", headers=headers)
            assert refused.status_code == 403
            assert "set-cookie" not in refused.headers
        assert browser.get("/config").status_code == 200


def test_sign_out_everywhere_through_the_form(dashboard: LiveDashboard) -> None:
    auth = dashboard.services.auth
    dashboard.register("alice@example.com")
    dashboard.register("bob@example.com")
    auth.approve(auth.get_by_email("alice@example.com"),
                 auth.get_by_email("bob@example.com").id)
    laptop, phone = (dashboard.session_cookie("alice@example.com") for _ in range(2))
    bobs = dashboard.session_cookie("bob@example.com", PASSWORD)
    with dashboard.client(cookies={SESSION_COOKIE: laptop}) as browser:
        assert browser.post("/logout", data={"everywhere": "1"}).status_code == 303
    for cookie, status in ((laptop, 401), (phone, 401), (bobs, 200)):
        with dashboard.client(cookies={SESSION_COOKIE: cookie}) as client:
            assert client.get("/config").status_code == status


def test_the_admin_tab_lists_and_ends_sessions(dashboard: LiveDashboard) -> None:
    auth = dashboard.services.auth
    dashboard.register("alice@example.com")
    dashboard.register("bob@example.com")
    auth.approve(auth.get_by_email("alice@example.com"),
                 auth.get_by_email("bob@example.com").id)
    bobs = dashboard.session_cookie("bob@example.com")
    admin = gradio_client(dashboard.url,
                          cookie=dashboard.session_cookie("alice@example.com"))
    rows, _ = admin.predict(api_name="/admin_sessions")
    # Alice has two: registering signed her in, and so did the login above.
    assert sorted(row[0] for row in rows["data"]) == [
        "alice@example.com", "alice@example.com", "bob@example.com"]
    assert {row[3] for row in rows["data"]} == {"127.0.0.1"}
    # A user calling the admin endpoint directly sees nothing and ends nothing.
    bob = gradio_client(dashboard.url, cookie=bobs)
    assert bob.predict(api_name="/admin_sessions")[0]["data"] == []
    alices_id = auth.list_sessions(auth.get_by_email("alice@example.com"))[0].id
    with pytest.raises(Exception, match="administrator"):
        bob.predict(alices_id, api_name="/admin_end_session")
    bobs_id = auth.list_sessions(auth.get_by_email("bob@example.com"))[0].id
    rows, _, message = admin.predict(bobs_id, api_name="/admin_end_session")
    assert message == "Session ended."
    assert {row[0] for row in rows["data"]} == {"alice@example.com"}
    with dashboard.client(cookies={SESSION_COOKIE: bobs}) as client:
        assert client.get("/config").status_code == 401

"""The API keys tab through gradio_client with real session cookies, and the keys it makes
against the live gateway. Hiding the "everyone" switch is not the check: these calls go
straight to the tab's API, as a curious colleague could."""

from __future__ import annotations

import pytest
from gradio_client import Client

from manager.api.login import SESSION_COOKIE
from tests.conftest import LiveDashboard
from tests.gradio_clients import gradio_client

TABLE_HAS = "text => document.querySelector('#keys-table').textContent.includes(text)"


def client_for(dashboard: LiveDashboard, email: str) -> Client:
    cookie = dashboard.session_cookie(email)
    return gradio_client(dashboard.url, cookie=cookie)


def models_status(dashboard: LiveDashboard, key: str) -> int:
    with dashboard.client() as client:
        return client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def value(output: object) -> object:
    """A component update (value + visibility) arrives as a dict through the client."""
    return output.get("value") if isinstance(output, dict) else output


def cells(table: dict) -> str:
    return " ".join(str(cell) for row in table["data"] for cell in row)


@pytest.fixture
def dashboard(shared_live_dashboard: LiveDashboard) -> LiveDashboard:
    """The module's one app on a socket (gradio_client needs one), handed over as new."""
    return shared_live_dashboard


@pytest.fixture
def people(dashboard: LiveDashboard) -> None:
    auth = dashboard.services.auth
    for email in ("alice@example.com", "bob@example.com"):
        dashboard.register(email)
    admin = auth.get_by_email("alice@example.com")
    auth.approve(admin, auth.get_by_email("bob@example.com").id)


def test_a_new_key_is_shown_once_and_works_until_revoked(dashboard: LiveDashboard,
                                                         people: None) -> None:
    bob = client_for(dashboard, "bob@example.com")
    shown, table, _, message, name = bob.predict("laptop", False, api_name="/keys_create")
    secret = value(shown)
    assert shown["visible"] is True
    assert secret.startswith("mlxm-") and len(secret) > 40
    assert "laptop" in message and name == ""
    assert "laptop" in cells(table) and secret not in cells(table)
    assert secret[:11] in cells(table)  # the hint people recognise keys by
    assert models_status(dashboard, secret) == 200
    # Any later view clears the secret: it is never shown again.
    table, _, cleared = bob.predict(False, api_name="/keys_list")
    assert value(cleared) == "" and cleared["visible"] is False
    assert secret not in cells(table)
    key_id = table["data"][0][0]
    table, _, message, cleared = bob.predict(key_id, False, api_name="/keys_revoke")
    assert "revoked" in message and value(cleared) == ""
    assert "revoked" in cells(table)
    assert models_status(dashboard, secret) == 401


def test_only_admins_see_and_revoke_other_peoples_keys(dashboard: LiveDashboard,
                                                       people: None) -> None:
    alice, bob = client_for(dashboard, "alice@example.com"), client_for(dashboard,
                                                                          "bob@example.com")
    alice_secret = value(alice.predict("admin scripts", False, api_name="/keys_create")[0])
    bob_secret = value(bob.predict("bob's", False, api_name="/keys_create")[0])
    alice_key = dashboard.services.api_keys.authenticate(alice_secret)
    assert alice_key is not None
    keys = dashboard.services.api_keys
    alice_id = keys.list_for(alice_key)[0].id
    bob_user = dashboard.services.auth.get_by_email("bob@example.com")
    bob_id = keys.list_for(bob_user)[0].id
    # Bob sees only his own keys, and asking for everyone's is refused by the server.
    table, _, _ = bob.predict(False, api_name="/keys_list")
    assert "bob's" in cells(table) and "admin scripts" not in cells(table)
    with pytest.raises(Exception, match="Only an administrator"):
        bob.predict(True, api_name="/keys_list")
    with pytest.raises(Exception, match="Only its owner or an administrator"):
        bob.predict(alice_id, False, api_name="/keys_revoke")
    assert models_status(dashboard, alice_secret) == 200
    # Alice, an admin, lists everyone's keys and revokes Bob's.
    table, _, _ = alice.predict(True, api_name="/keys_list")
    assert "bob@example.com" in cells(table) and "alice@example.com" in cells(table)
    _, _, message, _ = alice.predict(bob_id, True, api_name="/keys_revoke")
    assert "bob@example.com" in message
    assert models_status(dashboard, bob_secret) == 401
    assert models_status(dashboard, alice_secret) == 200
    with pytest.raises(Exception, match="Pick a key"):
        alice.predict(None, True, api_name="/keys_revoke")


@pytest.mark.slow
@pytest.mark.browser
def test_the_tab_in_a_browser_shows_the_address_snippets_and_the_secret_once(
        dashboard: LiveDashboard, people: None, browser) -> None:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_cookies([{"name": SESSION_COOKIE, "url": dashboard.url,
                          "value": dashboard.session_cookie("bob@example.com")}])
    page = context.new_page()
    try:
        page.goto(dashboard.url + "/")
        page.get_by_role("tab", name="API keys").click()
        base = page.locator("#keys-base-url textarea, #keys-base-url input").first
        page.wait_for_function("el => el.value.startsWith('http://')", arg=base.element_handle(),
                               timeout=20_000)
        assert base.input_value() == dashboard.url
        snippets = page.inner_text("#keys-snippets")
        assert f'base_url="{dashboard.url}/v1"' in snippets
        assert f'base_url="{dashboard.url}"' in snippets
        assert not page.is_visible("#keys-secret")
        assert not page.is_visible("#keys-everyone")  # bob is not an admin
        page.fill("#keys-name textarea, #keys-name input", "browser key")
        page.click("#keys-create")
        secret_box = page.locator("#keys-secret textarea, #keys-secret input").first
        secret_box.wait_for(timeout=20_000)
        page.wait_for_function("el => el.value.startsWith('mlxm-')",
                               arg=secret_box.element_handle(), timeout=20_000)
        secret = secret_box.input_value()
        assert models_status(dashboard, secret) == 200
        page.wait_for_function(TABLE_HAS, arg="browser key", timeout=20_000)
        assert secret not in page.inner_text("#keys-table")
        page.reload()
        page.get_by_role("tab", name="API keys").click()
        page.wait_for_function(TABLE_HAS, arg="browser key", timeout=20_000)
        assert secret not in page.content()
    finally:
        context.close()

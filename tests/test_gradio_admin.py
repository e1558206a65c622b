"""The Admin tab's actions through gradio_client with a real session cookie.

The buttons are hidden from non-admins, but hiding is not the check: these calls go
straight to the API, as a curious colleague could.
"""

from __future__ import annotations

import pytest
from gradio_client import Client

from manager.accounts.auth import Role, Status
from manager.net import free_port
from manager.settings import Settings
from tests.conftest import LiveDashboard
from tests.gradio_clients import gradio_client


def client_for(dashboard: LiveDashboard, email: str) -> Client:
    cookie = dashboard.session_cookie(email)
    return gradio_client(dashboard.url, cookie=cookie)


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The warm spare left to its default (on, no flag): the Admin tab's switch is tested here.
    No model server starts in this module, so no spare does either."""
    return Settings(data_dir=tmp_path_factory.mktemp("admin") / "data", port=free_port())


@pytest.fixture
def dashboard(shared_live_dashboard: LiveDashboard) -> LiveDashboard:
    """The module's one app on a socket (gradio_client needs one), handed over as new."""
    return shared_live_dashboard


@pytest.fixture
def people(dashboard: LiveDashboard) -> dict[str, int]:
    auth = dashboard.services.auth
    for email in ("alice@example.com", "bob@example.com", "carol@example.com"):
        dashboard.register(email)
    admin = auth.get_by_email("alice@example.com")
    bob = auth.get_by_email("bob@example.com")
    auth.approve(admin, bob.id)
    return {u.email.split("@")[0]: u.id for u in auth.all_users()}


def test_admin_approves_and_demotes_through_the_api(
    dashboard: LiveDashboard, people: dict[str, int]
) -> None:
    auth = dashboard.services.auth
    client = client_for(dashboard, "alice@example.com")
    rows, _, message, _ = client.predict(people["carol"], "", api_name="/admin_approve")
    assert message == "Approved carol@example.com."
    assert auth.get(people["carol"]).status is Status.ACTIVE
    statuses = {row[1]: row[3] for row in rows["data"]}
    assert statuses["carol@example.com"] == "active"
    client.predict(people["bob"], "", api_name="/admin_promote")
    assert auth.get(people["bob"]).role is Role.ADMIN
    client.predict(people["bob"], "", api_name="/admin_demote")
    assert auth.get(people["bob"]).role is Role.USER


def test_a_non_admin_calling_admin_endpoints_is_refused(
    dashboard: LiveDashboard, people: dict[str, int]
) -> None:
    auth = dashboard.services.auth
    client = client_for(dashboard, "bob@example.com")
    for api, target in (("/admin_approve", "carol"), ("/admin_promote", "bob"),
                        ("/admin_disable", "alice"), ("/admin_delete", "carol")):
        with pytest.raises(Exception, match="Only an administrator may manage accounts"):
            client.predict(people[target], "", api_name=api)
    assert auth.get(people["carol"]).status is Status.PENDING
    assert auth.get(people["bob"]).role is Role.USER
    assert auth.get(people["alice"]).status is Status.ACTIVE
    # The list endpoint answers a non-admin with nothing rather than the accounts.
    rows, _ = client.predict(api_name="/admin_users")
    assert not any("@" in str(cell) for row in rows["data"] for cell in row)


def test_last_admin_protection_reaches_the_user_as_a_message(
    dashboard: LiveDashboard, people: dict[str, int]
) -> None:
    client = client_for(dashboard, "alice@example.com")
    with pytest.raises(Exception, match="last active administrator"):
        client.predict(people["alice"], "", api_name="/admin_disable")


def test_reset_password_needs_a_valid_temporary_password(
    dashboard: LiveDashboard, people: dict[str, int]
) -> None:
    client = client_for(dashboard, "alice@example.com")
    with pytest.raises(Exception, match="8 to 128 characters"):
        client.predict(people["bob"], "short", api_name="/admin_reset")
    _, _, message, cleared = client.predict(people["bob"], "temporary-pass-9",
                                            api_name="/admin_reset")
    assert "New temporary password set for bob@example.com" in message
    assert cleared == ""
    assert dashboard.services.auth.authenticate("bob@example.com", "temporary-pass-9",
                                                "127.0.0.1").id == people["bob"]


def test_a_disabled_users_client_stops_working(
    dashboard: LiveDashboard, people: dict[str, int]
) -> None:
    bob = client_for(dashboard, "bob@example.com")
    admin = client_for(dashboard, "alice@example.com")
    admin.predict(people["bob"], "", api_name="/admin_disable")
    with pytest.raises(Exception):  # noqa: B017 - the gate answers 401, the client raises
        bob.predict(api_name="/admin_users")


def test_mcp_servers_are_managed_in_the_admin_tab_by_admins_only(
    dashboard: LiveDashboard, people: dict[str, int]
) -> None:
    admin = client_for(dashboard, "alice@example.com")
    rows, _pick, _ = admin.predict(api_name="/mcp_servers")
    builtin = next(r for r in rows["data"] if r[1] == "builtin")
    assert "get_weather" in builtin[5] and "calculator" in builtin[5]
    rows, _pick, message = admin.predict("nowhere", "http", "", "", "http://127.0.0.1:9/mcp",
                                         api_name="/mcp_add")
    assert message == "Added the MCP server **nowhere**."
    added = next(r for r in rows["data"] if r[1] == "nowhere")
    assert added[4] == "yes" and "Could not connect" in added[5]
    rows, _pick, message = admin.predict(added[0], api_name="/mcp_disable")
    assert message == "**nowhere** is off."
    bob = client_for(dashboard, "bob@example.com")
    for endpoint, args in (("/mcp_servers", ()), ("/mcp_enable", (added[0],)),
                           ("/mcp_remove", (added[0],)),
                           ("/mcp_add", ("mine", "stdio", "python", "-V", ""))):
        with pytest.raises(Exception, match="Only an administrator may manage MCP servers"):
            bob.predict(*args, api_name=endpoint)
    admin.predict(added[0], api_name="/mcp_remove")
    alice = dashboard.services.auth.get_by_email("alice@example.com")
    assert [c.name for c in dashboard.services.tools.servers(alice)] == ["builtin"]
    listed = bob.predict(api_name="/chat_tools")
    assert "**get_weather** (builtin)" in listed and "**calculator** (builtin)" in listed


def test_the_warm_spare_setting_is_an_admins_and_is_saved(
    dashboard: LiveDashboard, people: dict[str, int]
) -> None:
    from manager.saved_settings import SavedSettings
    from manager.services import WARM_SPARE

    spares = dashboard.services.supervisor.spares
    assert spares.enabled
    with pytest.raises(Exception, match="Only an administrator may change settings"):
        client_for(dashboard, "bob@example.com").predict(False, api_name="/admin_warm_spare")
    assert spares.enabled
    _, message = client_for(dashboard, "alice@example.com").predict(
        False, api_name="/admin_warm_spare")
    assert message == "Warm spare interpreter is off."
    assert not spares.enabled
    assert SavedSettings(dashboard.services.store).get_bool(WARM_SPARE) is False

"""The Servers tab asks the domain: rights (issue 11: "any user can stop or restart
anyone's server") and the memory budget apply to what a person does there."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client

from components.servers_tab import render_tiles
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.servers.supervisor import ServerState
from tests.conftest import LiveDashboard
from tests.gradio_clients import gradio_client
from tests.waits import wait_for

pytestmark = [pytest.mark.slow]


def _client(dashboard: LiveDashboard, email: str) -> Client:
    return gradio_client(dashboard.url, cookie=dashboard.session_cookie(email))


def test_only_the_owner_and_admins_stop_or_restart_a_server_from_the_tab(
        dashboard: LiveDashboard, tiny_models: dict[str, Path], hf_home: Path) -> None:
    services, auth = dashboard.services, dashboard.services.auth
    for email in ("admin@example.com", "bob@example.com", "carol@example.com"):
        dashboard.register(email)
    admin = auth.get_by_email("admin@example.com")
    bob = auth.approve(admin, auth.get_by_email("bob@example.com").id)
    carol = auth.approve(admin, auth.get_by_email("carol@example.com").id)
    profile = services.profiles.create(carol, ProfileSpec(
        name="Carol's tiny", model=str(tiny_models["text"]), port=free_port()))
    as_carol, as_bob = _client(dashboard, "carol@example.com"), _client(dashboard,
                                                                         "bob@example.com")

    def ready() -> bool:
        return services.supervisor.snapshot(profile.id).state is ServerState.READY

    assert "Starting Carol's tiny" in as_carol.predict(
        "start", "Carol's tiny", api_name="/server_action")[0]
    assert wait_for(ready, 90)
    with pytest.raises(Exception, match="owner or an administrator may stop"):
        as_bob.predict("stop", "Carol's tiny", api_name="/server_action")
    with pytest.raises(Exception, match="owner or an administrator may restart"):
        as_bob.predict("restart", "Carol's tiny", api_name="/server_action")
    assert ready(), "a refused stop leaves the server running"
    # The tile shows Stop and Restart only to those who may use them.
    assert "data-action='stop'" not in render_tiles(services, bob)
    assert "data-action='stop'" in render_tiles(services, carol)
    assert "data-action='restart'" in render_tiles(services, admin)
    assert "Restarting Carol's tiny" in as_carol.predict(
        "restart", "Carol's tiny", api_name="/server_action")[0]
    assert wait_for(ready, 90)
    as_admin = _client(dashboard, "admin@example.com")
    assert as_admin.predict("stop", "Carol's tiny", 2.0,
                            api_name="/server_action")[0] == "Carol's tiny stopped."


def test_a_start_from_the_tab_respects_the_memory_budget(
        dashboard: LiveDashboard, tiny_models: dict[str, Path], hf_home: Path) -> None:
    services = dashboard.services
    dashboard.register("admin@example.com")
    profile = services.profiles.create(None, ProfileSpec(
        name="Big one", model=str(tiny_models["text"]), port=free_port()))
    need = services.placement.need_bytes(profile)
    assert need is not None
    services.placement.set_budget(need - 1)
    client = _client(dashboard, "admin@example.com")
    with pytest.raises(Exception, match="Big one needs about .* more than the whole budget"):
        client.predict("start", "Big one", api_name="/server_action")
    assert services.supervisor.snapshot(profile.id) is None, "nothing was spawned"

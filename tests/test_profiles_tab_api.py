"""The Profiles tab through gradio_client with real session cookies: a rejected field comes
back on that field, a refusal comes back as the domain's message, and a renamed profile
keeps its chats in the Chat tab's list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from manager.api.login import SESSION_COOKIE
from manager.servers.profiles import ProfileSpec
from tests.conftest import LiveDashboard

ALICE, BOB = "alice@example.com", "bob@example.com"


def client_for(dashboard: LiveDashboard, email: str) -> Client:
    cookie = dashboard.session_cookie(email)
    return Client(dashboard.url, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
                  verbose=False)


def form(selected: str, name: str, model: Path, port: Any = None,
         distributed: tuple = ("", "ring", "tensor", None)) -> tuple:
    """The Save inputs: pick, then the fields in the tab's order (the Distributed section's
    hosts, link backend, parallel mode and base port last)."""
    return (selected, name, "", str(model), "auto", "127.0.0.1", port, None, None, None,
            None, "default", "", False, False, None, *distributed)


@pytest.fixture
def dashboard(shared_live_dashboard: LiveDashboard) -> LiveDashboard:
    """The module's one app on a socket (gradio_client needs one), handed over as new."""
    return shared_live_dashboard


@pytest.fixture
def people(dashboard: LiveDashboard) -> None:
    auth = dashboard.services.auth
    for email in (ALICE, BOB):
        dashboard.register(email)
    admin = auth.get_by_email(ALICE)
    auth.approve(admin, auth.get_by_email(BOB).id)


def test_a_bad_field_is_shown_on_it_and_a_refusal_keeps_its_message(
        dashboard: LiveDashboard, people: None, tiny_models: dict[str, Path]) -> None:
    bob = client_for(dashboard, BOB)
    out = bob.predict(*form("new", "tiny", tiny_models["text"], port=80),
                      api_name="/profile_save")
    status, port_field = out[2], out[3 + 5]
    assert status.startswith("⚠ Port must be between")
    assert "Port must be between" in port_field["info"]
    assert dashboard.services.profiles.list() == []
    alice = dashboard.services.auth.get_by_email(ALICE)
    mine = dashboard.services.profiles.create(alice, ProfileSpec(
        name="alices", model=str(tiny_models["text"])))
    with pytest.raises(Exception, match="alices"):
        bob.predict(str(mine.id), api_name="/profile_delete")
    assert [p.name for p in dashboard.services.profiles.list()] == ["alices"]


def test_a_renamed_profile_keeps_its_chats_in_the_chat_list(
        dashboard: LiveDashboard, people: None, tiny_models: dict[str, Path]) -> None:
    services = dashboard.services
    alice = services.auth.get_by_email(ALICE)
    profile = services.profiles.create(alice, ProfileSpec(name="qwen",
                                                          model=str(tiny_models["text"])))
    chat = services.chat_engine.start_chat(alice, profile)
    services.chats.rename(alice, chat.id, "Llama facts")
    client = client_for(dashboard, ALICE)
    assert "Llama facts" in client.predict(profile.id, "", api_name="/chat_list")
    saved = client.predict(*form(str(profile.id), "Qwen tiny", tiny_models["text"],
                                 port=profile.port), api_name="/profile_save")
    assert saved[2] == "Saved **Qwen tiny**."
    sidebar = client.predict(profile.id, "", api_name="/chat_list")
    assert "Llama facts" in sidebar and "No chats with" not in sidebar


def test_preflight_shows_one_line_per_host_of_a_distributed_profile(
        dashboard: LiveDashboard, people: None, tiny_models: dict[str, Path]) -> None:
    from manager.net import free_port
    from manager.servers.distributed.spec import DistributedSpec, RankHost

    services = dashboard.services
    alice = services.auth.get_by_email(ALICE)
    # Both ranks on this machine: the real probe runs twice, no ssh needed for the page.
    spec = DistributedSpec.checked([RankHost("local", f"127.0.0.1:{free_port()}"),
                                    RankHost("local", f"127.0.0.1:{free_port()}")])
    pair = services.profiles.create(alice, ProfileSpec(name="pair", model=str(
        tiny_models["text"]), distributed=spec))
    single = services.profiles.create(alice, ProfileSpec(name="single", model=str(
        tiny_models["text"])))
    client = client_for(dashboard, ALICE)
    page = client.predict(str(pair.id), api_name="/profile_preflight")
    assert "Every host is ready." in page and page.count('data-verdict="ok"') == 2
    assert "rank 0 this machine: OK: this machine; Python " in page
    assert "rank 1 this machine: OK: " in page and "ring: 127.0.0.1:" in page
    with pytest.raises(Exception, match="runs on one machine"):
        client.predict(str(single.id), api_name="/profile_preflight")


def test_the_distributed_section_saves_hosts_and_shows_a_bad_line_on_its_box(
        dashboard: LiveDashboard, people: None, tiny_models: dict[str, Path]) -> None:
    alice = client_for(dashboard, ALICE)
    hosts_box = 3 + 15  # status, then the fields: the hosts box follows the idle timeout
    bad = alice.predict(*form("new", "spread", tiny_models["text"], distributed=(
        "local 127.0.0.1\nmac2 mac2.lan", "ring", "tensor", None)), api_name="/profile_save")
    assert "is not an IP address" in bad[2] and "is not an IP address" in bad[hosts_box]["info"]
    saved = alice.predict(*form("new", "spread", tiny_models["text"], distributed=(
        "local 127.0.0.1\nmac2 192.168.1.11 /models/qwen", "ring", "pipeline", 40000)),
        api_name="/profile_save")
    assert saved[2].startswith("Created **spread**")
    dist = dashboard.services.profiles.get_by_name("spread").distributed
    assert dist is not None and dist.parallel.value == "pipeline" and dist.base_port == 40000
    assert dist.hosts[1].model_path == "/models/qwen"
    assert saved[hosts_box]["value"] == dist.hosts_text()

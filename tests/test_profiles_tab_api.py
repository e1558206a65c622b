"""The Profiles tab through gradio_client with real session cookies: a rejected field comes
back on that field, a refusal comes back as the domain's message, and a renamed profile
keeps its chats in the Chat tab's list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.settings import Settings
from tests.conftest import LiveDashboard
from tests.fixtures.sshd import SshServer
from tests.gradio_clients import gradio_client

ALICE, BOB = "alice@example.com", "bob@example.com"


def client_for(dashboard: LiveDashboard, email: str) -> Client:
    cookie = dashboard.session_cookie(email)
    return gradio_client(dashboard.url, cookie=cookie)


def form(selected: str, name: str, model: Path, port: Any = None,
         distributed: tuple = ("", "ring", "tensor", None)) -> tuple:
    """The Save inputs: pick, then the fields in the tab's order (the Distributed section's
    hosts, link backend, parallel mode and base port last)."""
    return (selected, name, "", str(model), "auto", "127.0.0.1", port, None, None, None,
            None, "default", "", False, False, None, *distributed)


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory, sshd: SshServer) -> Settings:
    """The shared app reaches the real loopback sshd's hosts (distributed preflight)."""
    return Settings(data_dir=tmp_path_factory.mktemp("shared") / "data", port=free_port(),
                    ssh_config=sshd.client_config)


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


def test_preflight_shows_one_line_per_host_and_copies_a_missing_model(
        dashboard: LiveDashboard, people: None, tiny_models: dict[str, Path], sshd: SshServer,
        tmp_path: Path) -> None:
    import sys

    from manager.servers.distributed.spec import DistributedSpec, RankHost

    services = dashboard.services
    alice = services.auth.get_by_email(ALICE)
    # Rank 1 through the real sshd (the module's settings point at its ssh config), with
    # its model at a path where there is none yet.
    absent = tmp_path / "rank1" / "tiny"
    spec = DistributedSpec.checked([
        RankHost("local", f"127.0.0.1:{free_port()}"),
        RankHost(sshd.alias, f"127.0.0.1:{free_port()}", str(absent), python=sys.executable)])
    pair = services.profiles.create(alice, ProfileSpec(name="pair", model=str(
        tiny_models["text"]), distributed=spec))
    single = services.profiles.create(alice, ProfileSpec(name="single", model=str(
        tiny_models["text"])))
    client = client_for(dashboard, ALICE)
    page = client.predict(str(pair.id), api_name="/profile_preflight")
    assert "Some hosts are not ready" in page and 'data-verdict="fail"' in page
    assert "rank 0 this machine: OK: this machine; Python " in page
    assert f"rank 1 {sshd.alias}: FAIL: no model at {absent}" in page
    job = client.submit(str(pair.id), api_name="/profile_preflight_copy")
    job.result()
    steps = job.outputs()
    assert any(f"Copying the model to {sshd.alias}:{absent}" in step for step in steps)
    assert "Every host is ready." in steps[-1] and steps[-1].count('data-verdict="ok"') == 2
    assert (absent / "config.json").is_file()
    with pytest.raises(Exception, match="runs on one machine"):
        client.predict(str(single.id), api_name="/profile_preflight")
    # Logging in to other machines with the dashboard's keys is an admin's call.
    with pytest.raises(Exception, match="Only an admin"):
        client_for(dashboard, BOB).predict(str(pair.id), api_name="/profile_preflight")


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


def test_a_typed_profile_name_is_found_and_anything_else_is_said_plainly(
        dashboard: LiveDashboard, people: None, tiny_models: dict[str, Path]) -> None:
    """The picker takes typed text: "zz" got Python's "invalid literal for int() with
    base 10" on Pick, Duplicate and Delete."""
    bob = client_for(dashboard, BOB)
    made = dashboard.services.profiles.create(
        dashboard.services.auth.get_by_email(BOB),
        ProfileSpec(name="typed", model=str(tiny_models["text"])))
    for api in ("/profile_pick", "/profile_duplicate", "/profile_delete"):
        for typed in ("zz", "²"):  # (a digit to str.isdigit, not to int())
            with pytest.raises(AppError, match=f"No profile named '{typed}'"):
                bob.predict(typed, api_name=api)
    picked = bob.predict("Typed", api_name="/profile_pick")
    assert picked[0]["value"] == str(made.id)
    assert [p.name for p in dashboard.services.profiles.list()] == ["typed"]

"""The Models tab's endpoints through gradio_client with real session cookies: every
action is checked on the server, whatever the page shows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from manager.errors import PermissionDenied
from manager.models.download_types import DownloadStatus
from manager.net import free_port
from manager.settings import Settings
from tests.conftest import LiveDashboard
from tests.fixtures.local_hub import LocalHub
from tests.gradio_clients import close_without_waiting, gradio_client


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory, local_hub: LocalHub) -> Settings:
    """The module's one app downloads from the local hub into its own cache."""
    root = tmp_path_factory.mktemp("models_tab")
    return Settings(data_dir=root / "data", port=free_port(), hf_endpoint=local_hub.url,
                    hf_cache_dir=root / "hf" / "hub", warm_spare=False)


@pytest.fixture
def dashboard(shared_live_dashboard: LiveDashboard, hub: LocalHub,
              hf_home: Path) -> LiveDashboard:
    """The module's one app on a socket (gradio_client needs one), handed over as new, with
    the hub reset and a throwaway HF_HOME."""
    return shared_live_dashboard


@pytest.fixture(scope="module")
def _clients() -> Iterator[list[Client]]:
    """Every gradio client the module's tests made, closed at the module's end (an open
    client's heartbeat stream would hold up the server's stop)."""
    made: list[Client] = []
    yield made
    close_without_waiting(made)


@pytest.fixture
def people(dashboard: LiveDashboard, _clients: list[Client]) -> Callable[[str], Client]:
    """Alice (admin), Bob and Carol (approved); email -> a signed-in Client."""
    auth = dashboard.services.auth
    for email in ("alice@example.com", "bob@example.com", "carol@example.com"):
        dashboard.register(email)
    admin = auth.get_by_email("alice@example.com")
    for email in ("bob@example.com", "carol@example.com"):
        auth.approve(admin, auth.get_by_email(email).id)

    def client_for(email: str) -> Client:
        cookie = dashboard.session_cookie(email)
        _clients.append(gradio_client(dashboard.url, cookie=cookie))
        return _clients[-1]

    return client_for


def test_download_control_and_delete_are_checked_per_user(
        dashboard: LiveDashboard, people: Callable[[str], Client], hub: LocalHub,
        hub_repos: dict[str, str]) -> None:
    services = dashboard.services
    bob, carol = people("bob@example.com"), people("carol@example.com")
    repo = hub_repos["text_4bit"]
    hub.throttle_bytes_per_sec = 50_000
    assert bob.predict("download", repo, api_name="/models_action") == f"Downloading {repo}."
    [view] = services.downloads.snapshot()
    assert view.created_by == services.auth.get_by_email("bob@example.com").id
    # Paused, it stays in the list however fast the transfer would have been.
    assert bob.predict("pause", str(view.id), api_name="/models_action").endswith(
        "pause requested.")
    assert services.downloads.wait(view.id, 30).status is DownloadStatus.PAUSED
    carol_user = services.auth.get_by_email("carol@example.com")
    for action in ("resume", "cancel"):
        with pytest.raises(Exception, match="Only its owner or an administrator may control"):
            carol.predict(action, str(view.id), api_name="/models_action")
        # The domain refuses on its own, whatever page or client asks.
        with pytest.raises(PermissionDenied):
            getattr(services.downloads, action)(carol_user, view.id)
    assert services.downloads.get(view.id).status is DownloadStatus.PAUSED
    with pytest.raises(Exception, match="already in the download list"):
        carol.predict("download", repo, api_name="/models_action")
    hub.throttle_bytes_per_sec = None
    bob.predict("resume", str(view.id), api_name="/models_action")
    assert services.downloads.wait(view.id, 30).status is DownloadStatus.DONE

    [model] = services.library.scan()
    with pytest.raises(Exception, match="Only its owner or an administrator may delete"):
        carol.predict("delete", str(model.path), api_name="/models_action")
    with pytest.raises(PermissionDenied):
        services.library.delete(carol_user, str(model.path))
    assert model.path.exists()
    # Whoever downloaded it may delete it.
    assert bob.predict("delete", str(model.path), api_name="/models_action") == \
        f"Deleted {repo}."
    assert services.library.scan() == []
    with pytest.raises(Exception, match="not a repo id"):
        bob.predict("download", "no-slash", api_name="/models_action")


def test_only_an_admin_adds_model_folders(dashboard: LiveDashboard, people: Callable[[str], Client],
                                          tmp_path: Path) -> None:
    folder = tmp_path / "lmstudio"
    folder.mkdir()
    with pytest.raises(Exception, match="Only an administrator may manage model folders"):
        people("bob@example.com").predict(str(folder),
                                                         api_name="/models_add_folder")
    assert dashboard.services.library.folders() == []
    alice = people("alice@example.com")
    lines, _, _, message = alice.predict(str(folder), api_name="/models_add_folder")
    assert message == f"Added {folder.resolve()}." and str(folder.resolve()) in lines
    assert [f.path for f in dashboard.services.library.folders()] == [folder.resolve()]


def test_search_endpoint_returns_tiles(dashboard: LiveDashboard, people: Callable[[str], Client]) -> None:
    bob = people("bob@example.com")
    result = bob.predict("Hugging Face", "qwen3-4bit", "mlx-community", "downloads", True,
                         api_name="/models_search")
    tiles = result[1]
    assert "mlx-community/tiny-qwen3-4bit" in tiles and "4-bit" in tiles
    assert "tiny-qwen2-vl" not in tiles
    assert "mm-progress" not in tiles


def test_a_typed_author_is_searched(dashboard: LiveDashboard,
                                    people: Callable[[str], Client]) -> None:
    """Issue 15 item 7: the Author box took only its three choices; a typed one is used."""
    bob = people("bob@example.com")
    tiles = bob.predict("Hugging Face", "tiny", " acme ", "downloads", False,
                        api_name="/models_search")[1]
    assert "acme/tiny-pytorch-only" in tiles
    assert "mlx-community/" not in tiles

""""Try a tool-use model" (issue 15, first-run path): which model is suggested, and the
flow against the local hub with a real model server: download (the Models tab's jobs),
profile, start, chat; a second run reuses all of it; each step's failure in words."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.accounts.auth import User
from manager.chat.first_run import (
    FirstRunFailed,
    FlowUpdate,
    Step,
    TryToolModel,
    progress_line,
    unique_name,
)
from manager.models.download_types import DownloadStatus, DownloadView
from manager.models.recommended import TOOL_USE_MODELS, Suggestion, find, suggest
from manager.net import free_port
from manager.servers.states import ServerState
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, TEST_HASHER
from tests.fixtures.local_hub import LocalHub

GB = 1024 ** 3
SMALLEST = TOOL_USE_MODELS[-1]


@pytest.mark.parametrize(("budget_gb", "expected"), [
    (64.0, "mlx-community/Qwen3-8B-4bit"),
    (7.7, "mlx-community/Qwen3-8B-4bit"),  # 6,100 MB is within 80 % of 7.7 GB
    (7.4, "mlx-community/Qwen3-4B-4bit"),
    (2.5, "mlx-community/Qwen3-1.7B-4bit"),
    (1.4, "mlx-community/Qwen3-0.6B-4bit"),  # only "tight": the smallest that fits
    (1.0, None),
    (0.0, None),
])
def test_the_suggestion_is_the_largest_listed_model_that_fits_comfortably(
        budget_gb: float, expected: str | None) -> None:
    picked = suggest(int(budget_gb * GB))
    assert (picked.repo_id if picked else None) == expected
    if picked is not None:
        assert find(picked.repo_id) == picked
    assert find("someone/else") is None


def test_names_and_progress_lines_read_well() -> None:
    assert unique_name("Qwen3-0.6B-4bit", set()) == "Qwen3-0.6B-4bit"
    assert unique_name("Qwen3-0.6B-4bit", {"qwen3-0.6b-4bit", "qwen3-0.6b-4bit (2)"}) \
        == "Qwen3-0.6B-4bit (3)"
    mb = 1024 ** 2
    view = DownloadView(1, "a/b", DownloadStatus.RUNNING, 12 * mb, 968 * mb,
                        speed_bps=4 * mb, eta_seconds=239)
    line = progress_line(view)
    assert line.startswith("Downloading: 12.0 MB of 968.0 MB (1 %) · 4.0 MB/s · about ")
    unknown = progress_line(DownloadView(1, "a/b", DownloadStatus.QUEUED, 0, None))
    assert unknown == "Downloading: 0 B (queued)"


@pytest.fixture
def world(tmp_path: Path, hub: LocalHub) -> Iterator[tuple[Services, User, TryToolModel]]:
    """Light services pointed at the local hub, an admin, and the flow."""
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), hf_endpoint=hub.url,
                        hf_cache_dir=tmp_path / "hf" / "hub")
    services = Services.create(settings, run_servers=False, hasher=TEST_HASHER)
    user = services.auth.add_user("ada@example.com", PASSWORD, admin=True)
    flow = TryToolModel(downloads=services.downloads, profiles=services.profiles,
                        placement=services.placement, supervisor=services.supervisor,
                        chats=services.chats, engine=services.chat_engine,
                        progress_every=0.2, ready_timeout=120)
    yield services, user, flow
    services.close()


def texts(updates: list[FlowUpdate], step: Step) -> list[str]:
    return [u.text for u in updates if u.step is step]


def resolve_requests(hub: LocalHub) -> int:
    return sum(1 for r in hub.requests if "/resolve/" in r.path)


@pytest.mark.slow  # a real model server
def run_at_once(flow: TryToolModel, user: User, suggestion: Suggestion, n: int
                ) -> list[list[FlowUpdate]]:
    """`n` runs of the flow started together (two clicks, two tabs)."""
    barrier = threading.Barrier(n)
    results: list[list[FlowUpdate] | BaseException] = [[] for _ in range(n)]

    def one(index: int) -> None:
        barrier.wait()
        try:
            results[index] = list(flow.run(user, suggestion))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if not isinstance(r, BaseException)]


@pytest.mark.slow  # a real model server
def test_one_click_downloads_makes_a_profile_starts_it_and_opens_a_chat_then_reuses_them(
        world: tuple[Services, User, TryToolModel], hub: LocalHub,
        tiny_models: dict[str, Path]) -> None:
    services, user, flow = world
    hub.add_repo(SMALLEST.repo_id, tiny_models["tools"])

    # Two clicks at once share one download, one profile and one server.
    runs = run_at_once(flow, user, SMALLEST, 2)
    assert all(run[0].step is Step.DOWNLOAD and run[-1].done for run in runs)
    lines = [line for run in runs for line in texts(run, Step.DOWNLOAD)]
    assert any(line.startswith(f"Downloading {SMALLEST.label}") for line in lines)
    assert any(line.startswith(f"Downloaded {SMALLEST.label} (") for line in lines)
    # The same download job the Models tab and `mlx-manager pull` show.
    with sqlite3.connect(services.settings.db_path) as db:
        jobs = db.execute("SELECT repo_id, status, created_by FROM downloads").fetchall()
    assert jobs == [(SMALLEST.repo_id, "done", user.id)]
    (profile,) = services.profiles.list()
    assert (profile.name, profile.model, profile.owner_id) == (
        "Qwen3-0.6B-4bit", SMALLEST.repo_id, user.id)
    assert f"{profile.name} is ready on port {profile.port}." in [
        line for run in runs for line in texts(run, Step.START)]
    assert services.supervisor.snapshot(profile.id).state is ServerState.READY
    for run in runs:
        done = run[-1]
        assert (done.step, done.profile_id) == (Step.CHAT, profile.id)
        assert "with tools on" in done.text
        chat = services.chats.get(user, done.chat_id)
        assert chat.summary.profile_id == profile.id and chat.messages == ()
    opened = {c.id for c in services.chats.list(user)}

    fetched = resolve_requests(hub)
    again = list(flow.run(user, SMALLEST))
    assert texts(again, Step.DOWNLOAD) == [f"{SMALLEST.label} is already on this machine."]
    assert resolve_requests(hub) == fetched  # nothing downloaded again
    assert [p.id for p in services.profiles.list()] == [profile.id]
    assert texts(again, Step.START) == [f"{profile.name} is already running."]
    assert again[-1].chat_id in opened  # an empty chat is reused
    assert {c.id for c in services.chats.list(user)} == opened


def test_a_repo_the_hub_does_not_have_fails_at_the_download_step_in_words(
        world: tuple[Services, User, TryToolModel]) -> None:
    services, user, flow = world
    missing = Suggestion("mlx-community/not-there-4bit", "Not there", 1, 1)
    with pytest.raises(FirstRunFailed) as failed:
        list(flow.run(user, missing))
    assert failed.value.step is Step.DOWNLOAD
    assert failed.value.message.startswith("Could not download Not there: ")
    assert "not-there" in failed.value.message
    assert services.profiles.list() == []


@pytest.mark.slow  # a model server that fails to load
def test_a_model_that_does_not_load_fails_at_the_start_step_in_words(
        world: tuple[Services, User, TryToolModel], hub: LocalHub,
        tiny_models: dict[str, Path]) -> None:
    services, user, flow = world
    broken = Suggestion("mlx-community/broken-qwen3-4bit", "Broken Qwen3", 1, 1)
    # Real weights whose shapes the config contradicts: the hub serves it, mlx_lm cannot
    # load it.
    files = {p.name: p.read_bytes() for p in tiny_models["text"].iterdir() if p.is_file()}
    config = json.loads(files["config.json"])
    files["config.json"] = json.dumps({**config, "hidden_size": 128}).encode()
    hub.add_repo(broken.repo_id, files)
    with pytest.raises(FirstRunFailed) as failed:
        list(flow.run(user, broken))
    assert failed.value.step is Step.START
    assert failed.value.message.startswith("broken-qwen3-4bit did not start: The model did "
                                           "not load: ")
    assert failed.value.message.endswith(". Its log is on the Servers tab. Press Try again "
                                         "to start it again.")
    # The model and the profile stay for the next try.
    assert [p.model for p in services.profiles.list()] == [broken.repo_id]


def test_empty_tabs_say_what_to_do_next_and_the_banner_keeps_one_progress_line() -> None:
    from components.first_run import progress_markdown
    from components.models_tab import LOCAL, empty_list_text
    from components.profiles_tab import first_step_hint
    from components.views import server_tiles_html

    assert "No models on this machine yet" in empty_list_text(LOCAL, 0, nothing_local=True)
    assert "Try a tool-use model" in empty_list_text(LOCAL, 0, nothing_local=True)
    assert "no downloaded models" in first_step_hint([], [])
    assert "pick a downloaded model" in first_step_hint([], [SMALLEST.repo_id])
    assert "No profiles yet" in server_tiles_html([], has_profiles=False)
    assert "Pick a profile above" in server_tiles_html([], has_profiles=True)
    lines = [FlowUpdate(Step.DOWNLOAD, "Downloading Qwen3 0.6B (4-bit)…"),
             FlowUpdate(Step.DOWNLOAD, "Downloading: 1.0 MB of 9.0 MB (11 %)"),
             FlowUpdate(Step.DOWNLOAD, "Downloading: 2.0 MB of 9.0 MB (22 %)")]
    assert progress_markdown(lines, "Lost the <connection>.") == (
        "- Downloading Qwen3 0.6B (4-bit)…\n- Downloading: 2.0 MB of 9.0 MB (22 %)\n"
        "- ⚠ Lost the &lt;connection&gt;.")

"""Downloads through the real huggingface_hub against the local hub: progress, pause,
resume (Range), cancel, restart, dropped connections, gated repos, disk space."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from huggingface_hub import scan_cache_dir, snapshot_download

from manager.accounts.auth import AuthService
from manager.errors import Conflict, PermissionDenied
from manager.models.download_types import DiskFull, DownloadStatus, DownloadView
from manager.models.downloads import DownloadManager
from manager.models.hub import GatedRepo, HubClient, HubConfig, NoMLXWeights, RepoNotFound
from manager.models.transfer import RETRIES, RETRY_WAIT_S
from manager.net import free_port
from manager.services import Services
from manager.settings import Settings
from manager.store import Store
from tests.conftest import PASSWORD, TEST_HASHER
from tests.fixtures.local_hub import DEFAULT_TOKEN, NO_ACCESS_TOKEN, LocalHub
from tests.waits import wait_for

BIG = "mlx-community/big-qwen3"
WEIGHTS = "model.safetensors"
WEIGHTS_SIZE = 1_500_000


def fake_safetensors(padding: int) -> bytes:
    header = json.dumps({"__metadata__": {"format": "mlx"}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(range(256)) * (padding // 256)


@pytest.fixture
def big_repo(hub: LocalHub, tiny_models: dict[str, Path]) -> str:
    """A qwen3 repo whose weights file is big enough to stop in the middle."""
    text = tiny_models["text"]
    files = {p.name: p.read_bytes() for p in text.iterdir() if p.is_file()}
    files[WEIGHTS] = fake_safetensors(WEIGHTS_SIZE)
    files["README.md"] = b"# not needed by MLX"
    hub.add_repo(BIG, files)
    return BIG


def make_manager(store_dir: Path, hub: LocalHub, cache: Path, *, token: str | None = None,
                 free_space: Callable[[Path], int] | None = None,
                 retry_wait_s: float = RETRY_WAIT_S) -> DownloadManager:
    store = Store(store_dir / "manager.db")
    client = HubClient(HubConfig(endpoint=hub.url, token=token, cache_dir=cache))
    kwargs = {"free_space": free_space} if free_space else {}
    manager = DownloadManager(store, client, cache_dir=cache, max_concurrent=2,
                              retry_wait_s=retry_wait_s, **kwargs)
    manager.start_workers()
    return manager


@pytest.fixture
def cache(hf_home: Path) -> Path:
    return hf_home / "hub"


@pytest.fixture
def manager(tmp_path: Path, hub: LocalHub, cache: Path) -> Iterator[DownloadManager]:
    # Lost connections are retried at once: no test here needs the real pause between tries.
    made = make_manager(tmp_path, hub, cache, retry_wait_s=0.01)
    yield made
    made.close()


def wait_bytes(manager: DownloadManager, job_id: int, at_least: int) -> DownloadView:
    return manager.wait(job_id, 30, until=lambda v: v.bytes_done >= at_least
                        or not v.status.active)


def storage(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def partials(cache: Path, repo_id: str) -> list[Path]:
    return sorted((storage(cache, repo_id) / "blobs").glob("*.incomplete"))


def test_download_lands_in_the_hf_cache_where_other_tools_see_it(
        manager: DownloadManager, hub: LocalHub, cache: Path, big_repo: str) -> None:
    alice = AuthService(manager.store, b"k" * 32, hasher=TEST_HASHER).add_user("alice@example.com", PASSWORD)
    view = manager.start(alice, big_repo)
    assert view.status is DownloadStatus.QUEUED and view.created_by == alice.id
    done = manager.wait(view.id, 30)
    assert done.status is DownloadStatus.DONE, done.error
    assert done.bytes_done == done.bytes_total
    repo = hub.repo(big_repo)
    snapshot = storage(cache, big_repo) / "snapshots" / repo.sha
    assert (snapshot / WEIGHTS).read_bytes() == repo.files[WEIGHTS].data
    assert not (snapshot / "README.md").exists()  # only what MLX needs
    assert (storage(cache, big_repo) / "refs" / "main").read_text() == repo.sha
    # huggingface_hub itself finds it, offline.
    assert snapshot_download(big_repo, cache_dir=cache, local_files_only=True,
                             allow_patterns=["*.json", "*.safetensors"]) == str(snapshot)
    assert big_repo in {r.repo_id for r in scan_cache_dir(cache).repos}
    assert manager.snapshot() == []  # finished downloads leave the list
    assert manager.downloaded_by(big_repo) == {alice.id}


def test_only_the_downloader_and_admins_control_a_download(
        manager: DownloadManager, hub: LocalHub, big_repo: str) -> None:
    auth = AuthService(manager.store, b"k" * 32, hasher=TEST_HASHER)
    admin = auth.add_user("admin@example.com", PASSWORD, admin=True)
    alice = auth.add_user("alice@example.com", PASSWORD)
    bob = auth.add_user("bob@example.com", PASSWORD)
    pending = auth.register("pending@example.com", PASSWORD)
    with pytest.raises(PermissionDenied, match="not active"):
        manager.start(pending, big_repo)
    hub.throttle_bytes_per_sec = 400_000
    view = manager.start(alice, big_repo)
    for control in (manager.pause, manager.resume, manager.cancel):
        with pytest.raises(PermissionDenied, match="Only its owner or an administrator"):
            control(bob, view.id)
    assert manager.get(view.id).status is not DownloadStatus.CANCELLED  # bob changed nothing
    manager.pause(admin, view.id)
    assert manager.wait(view.id, 30).status is DownloadStatus.PAUSED
    with pytest.raises(PermissionDenied):
        manager.resume(bob, view.id)
    manager.resume(alice, view.id)
    manager.cancel(alice, view.id)
    assert manager.wait(view.id, 30).status is DownloadStatus.CANCELLED


def test_progress_is_reported_per_chunk_with_speed_and_eta(
        manager: DownloadManager, hub: LocalHub, big_repo: str) -> None:
    hub.throttle_bytes_per_sec = 1_500_000
    view = manager.start(None, big_repo)
    seen: list[DownloadView] = []

    def finished() -> bool:
        seen.append(manager.get(view.id))
        return not seen[-1].status.active

    wait_for(finished, 60, "the download to finish")
    current = seen[-1]
    assert current.status is DownloadStatus.DONE
    done_values = [v.bytes_done for v in seen]
    assert done_values == sorted(done_values)
    partway = {v.bytes_done for v in seen if 0 < v.bytes_done < v.bytes_total}
    assert len(partway) >= 3, "progress should move in several steps"
    assert any(v.speed_bps and v.eta_seconds is not None for v in seen)
    assert all(v.speed_bps is None for v in seen if v.status is not DownloadStatus.RUNNING)


def test_pause_keeps_the_partial_file_and_resume_sends_a_range_request(
        manager: DownloadManager, hub: LocalHub, cache: Path, big_repo: str) -> None:
    hub.throttle_bytes_per_sec = 400_000
    view = manager.start(None, big_repo)
    wait_bytes(manager, view.id, 200_000)
    manager.pause(None, view.id)
    paused = manager.wait(view.id, 30)
    assert paused.status is DownloadStatus.PAUSED
    [partial] = partials(cache, big_repo)
    kept = partial.stat().st_size
    assert 0 < kept < WEIGHTS_SIZE
    assert not (storage(cache, big_repo) / "snapshots").exists()  # no half model visible
    hub.throttle_bytes_per_sec = None
    hub.clear_requests()
    manager.resume(None, view.id)
    done = manager.wait(view.id, 30)
    assert done.status is DownloadStatus.DONE, done.error
    ranges = [r.range for r in hub.requests if r.path.endswith("/" + WEIGHTS)]
    assert ranges == [f"bytes={kept}-"]
    snapshot = storage(cache, big_repo) / "snapshots" / hub.repo(big_repo).sha
    assert (snapshot / WEIGHTS).read_bytes() == hub.repo(big_repo).files[WEIGHTS].data
    assert partials(cache, big_repo) == []


SMALL = "mlx-community/small-qwen3"


def test_a_small_file_shows_progress_and_speed_from_the_first_update(
        manager: DownloadManager, hub: LocalHub, tiny_models: dict[str, Path]) -> None:
    """Issue 15 item 2: a 500 KB model used to sit at 0 % and jump to 100 % (one 10 MiB
    read), showing "n/a" for speed and ETA."""
    files = {p.name: p.read_bytes() for p in tiny_models["text"].iterdir() if p.is_file()}
    files[WEIGHTS] = fake_safetensors(500_000)
    hub.add_repo(SMALL, files)
    hub.throttle_bytes_per_sec = 300_000
    view = manager.start(None, SMALL)
    seen: list[DownloadView] = []

    def record(current: DownloadView) -> bool:  # runs on every progress notification
        seen.append(current)
        return not current.status.active

    assert manager.wait(view.id, 60, until=record).status is DownloadStatus.DONE
    moving = [v for v in seen if v.status is DownloadStatus.RUNNING and v.bytes_done > 0]
    partway = {v.bytes_done for v in moving if v.bytes_done < v.bytes_total}
    assert len(partway) >= 5, f"progress should move in small steps: {sorted(partway)}"
    assert min(partway) <= 256 * 1024
    # Speed and time left from the first figure on, never "n/a" while bytes arrive.
    assert all(v.speed_bps and v.eta_seconds is not None for v in moving)


def test_pause_keeps_every_byte_received_and_resume_asks_only_for_the_rest(
        manager: DownloadManager, hub: LocalHub, cache: Path, big_repo: str) -> None:
    hub.throttle_bytes_per_sec = 300_000
    view = manager.start(None, big_repo)
    before_pause = wait_bytes(manager, view.id, 100_000)
    manager.pause(None, view.id)
    paused = manager.wait(view.id, 30)
    assert paused.status is DownloadStatus.PAUSED
    weights_blob = next(p for p in partials(cache, big_repo)
                        if p.stat().st_size > 100_000)
    kept = weights_blob.stat().st_size
    # Everything counted before the pause is on disk (nothing thrown away) ...
    assert before_pause.bytes_done <= paused.bytes_done
    on_disk = sum(p.stat().st_size for p in partials(cache, big_repo)) + sum(
        p.stat().st_size for p in (storage(cache, big_repo) / "blobs").iterdir()
        if not p.name.endswith(".incomplete"))
    assert paused.bytes_done == on_disk
    # ... and the resume asks the hub for exactly the bytes not on disk.
    hub.throttle_bytes_per_sec = None
    hub.clear_requests()
    manager.resume(None, view.id)
    assert manager.wait(view.id, 30).status is DownloadStatus.DONE
    ranges = [r.range for r in hub.requests
              if r.method == "GET" and r.path.endswith("/" + WEIGHTS)]
    assert ranges == [f"bytes={kept}-"]


def test_cancel_removes_the_partial_files(manager: DownloadManager, hub: LocalHub,
                                          cache: Path, big_repo: str) -> None:
    hub.throttle_bytes_per_sec = 400_000
    view = manager.start(None, big_repo)
    wait_bytes(manager, view.id, 100_000)
    assert partials(cache, big_repo)
    manager.cancel(None, view.id)
    cancelled = manager.wait(view.id, 30)
    assert cancelled.status is DownloadStatus.CANCELLED
    assert not storage(cache, big_repo).exists()
    assert manager.snapshot() == []
    # Cancelling a paused download cleans up at once, too.
    again = manager.start(None, big_repo)
    wait_bytes(manager, again.id, 100_000)
    manager.pause(None, again.id)
    manager.wait(again.id, 30)
    assert partials(cache, big_repo)
    assert manager.cancel(None, again.id).status is DownloadStatus.CANCELLED
    assert not storage(cache, big_repo).exists()


def test_an_unfinished_download_resumes_after_a_restart(
        tmp_path: Path, hub: LocalHub, cache: Path, big_repo: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), hf_endpoint=hub.url,
                        warm_spare=False,
                        hf_cache_dir=cache)
    hub.throttle_bytes_per_sec = 400_000
    first = Services.create(settings, hasher=TEST_HASHER)
    view = first.downloads.start(None, big_repo)
    wait_bytes(first.downloads, view.id, 150_000)
    first.close()  # the dashboard stops mid-transfer
    [partial] = partials(cache, big_repo)
    kept = partial.stat().st_size
    assert kept > 0
    hub.throttle_bytes_per_sec = None
    hub.clear_requests()
    second = Services.create(settings, hasher=TEST_HASHER)  # same data dir: picks the download up by itself
    try:
        done = second.downloads.wait(view.id, 30)
        assert done.status is DownloadStatus.DONE, done.error
        ranges = [r.range for r in hub.requests if r.path.endswith("/" + WEIGHTS)]
        assert ranges == [f"bytes={kept}-"]
        [model] = [m for m in second.library.scan() if m.name == big_repo]
        assert model.complete
    finally:
        second.close()


def test_a_connection_dropped_mid_file_is_resumed_with_a_range_request(
        manager: DownloadManager, hub: LocalHub, cache: Path, big_repo: str) -> None:
    # The transfer retries by itself from the bytes on disk.
    hub.drop_after_bytes(big_repo, WEIGHTS, 300_000)
    done = manager.wait(manager.start(None, big_repo).id, 60)
    assert done.status is DownloadStatus.DONE, done.error
    ranges = [r.range for r in hub.requests if r.path.endswith("/" + WEIGHTS)]
    assert ranges[0] is None and ranges[-1] is not None
    assert int(ranges[-1].removeprefix("bytes=").rstrip("-")) > 0
    snapshot = storage(cache, big_repo) / "snapshots" / hub.repo(big_repo).sha
    assert (snapshot / WEIGHTS).read_bytes() == hub.repo(big_repo).files[WEIGHTS].data


def test_a_lost_connection_fails_clearly_and_resumes_later(
        manager: DownloadManager, hub: LocalHub, cache: Path, big_repo: str) -> None:
    """Every attempt is cut: after the retries FAILED with a message, partial kept, Resume
    finishes."""
    hub.throttle_bytes_per_sec = 600_000
    view = manager.start(None, big_repo)
    wait_bytes(manager, view.id, 100_000)
    hub.drop_after_bytes(big_repo, WEIGHTS, 0, times=None)
    # Pause ends the running transfer; from the resume on, every attempt is cut.
    manager.pause(None, view.id)
    manager.wait(view.id, 30)
    hub.clear_requests()
    manager.resume(None, view.id)
    failed = manager.wait(view.id, 60)
    assert failed.status is DownloadStatus.FAILED
    assert "Lost the connection" in failed.error and "Resume" in failed.error
    attempts = [r for r in hub.requests if r.method == "GET" and r.path.endswith("/" + WEIGHTS)]
    assert len(attempts) == RETRIES + 1  # the first attempt and every retry, each cut
    [partial] = partials(cache, big_repo)
    assert partial.stat().st_size > 0
    assert not (storage(cache, big_repo) / "snapshots").exists()
    hub.stop_dropping(big_repo, WEIGHTS)
    hub.throttle_bytes_per_sec = None
    hub.clear_requests()
    manager.resume(None, view.id)
    done = manager.wait(view.id, 30)
    assert done.status is DownloadStatus.DONE, done.error
    assert any(r.range for r in hub.requests if r.path.endswith("/" + WEIGHTS))


def test_the_retry_wait_cannot_be_negative(tmp_path: Path, hub: LocalHub, cache: Path) -> None:
    with pytest.raises(ValueError, match="retry_wait_s"):
        make_manager(tmp_path, hub, cache, retry_wait_s=-1)


def test_free_disk_space_is_checked_before_starting(tmp_path: Path, hub: LocalHub,
                                                    cache: Path, big_repo: str) -> None:
    tight = make_manager(tmp_path, hub, cache, free_space=lambda _: 1_000_000)
    try:
        with pytest.raises(DiskFull, match="needs 1.4 MB more, 976.6 KB is free"):
            tight.start(None, big_repo)
        assert tight.snapshot() == []
        assert not storage(cache, big_repo).exists()
    finally:
        tight.close()


def test_a_disk_filling_up_before_a_resume_fails_resumable(
        manager: DownloadManager, hub: LocalHub, cache: Path, big_repo: str) -> None:
    hub.throttle_bytes_per_sec = 600_000
    view = manager.start(None, big_repo)
    wait_bytes(manager, view.id, 100_000)
    manager.pause(None, view.id)
    manager.wait(view.id, 30)
    manager.cache.free_space = lambda _: 50_000  # another program filled the disk meanwhile
    manager.resume(None, view.id)
    failed = manager.wait(view.id, 30)
    assert failed.status is DownloadStatus.FAILED and failed.status.resumable
    assert "Not enough disk space" in failed.error
    assert partials(cache, big_repo) and not (storage(cache, big_repo) / "snapshots").exists()


def test_bad_requests_get_clear_errors(manager: DownloadManager, hub_repos: dict[str, str],
                                       big_repo: str, hub: LocalHub) -> None:
    with pytest.raises(RepoNotFound, match="not found"):
        manager.start(None, "acme/does-not-exist")
    with pytest.raises(NoMLXWeights):
        manager.start(None, hub_repos["no_mlx"])
    with pytest.raises(GatedRepo, match="gated"):
        manager.start(None, hub_repos["gated"])
    hub.throttle_bytes_per_sec = 200_000
    view = manager.start(None, big_repo)
    with pytest.raises(Conflict, match="already in the download list"):
        manager.start(None, big_repo)
    manager.cancel(None, view.id)
    manager.wait(view.id, 30)


def test_gated_repo_with_a_token(tmp_path: Path, hub: LocalHub, cache: Path,
                                 hub_repos: dict[str, str]) -> None:
    outsider = make_manager(tmp_path / "a", hub, cache, token=NO_ACCESS_TOKEN)
    try:
        failed = outsider.wait(outsider.start(None, hub_repos["gated"]).id, 30)
        assert failed.status is DownloadStatus.FAILED
        assert "gated and the token has no access" in failed.error
    finally:
        outsider.close()
    member = make_manager(tmp_path / "b", hub, cache, token=DEFAULT_TOKEN)
    try:
        done = member.wait(member.start(None, hub_repos["gated"]).id, 30)
        assert done.status is DownloadStatus.DONE, done.error
    finally:
        member.close()


def test_several_downloads_run_at_once_within_the_limit(
        manager: DownloadManager, hub: LocalHub, hub_repos: dict[str, str]) -> None:
    hub.throttle_bytes_per_sec = 1_000_000
    views = [manager.start(None, hub_repos[n])
             for n in ("text", "thinking", "tools", "vision")]
    peaks = [0]

    def all_finished() -> bool:
        statuses = [manager.get(v.id).status for v in views]
        peaks.append(sum(s is DownloadStatus.RUNNING for s in statuses))
        return not any(s.active for s in statuses)

    wait_for(all_finished, 120, "the four downloads to finish")
    peak = max(peaks)
    assert peak == 2  # max_concurrent
    assert all(manager.get(v.id).status is DownloadStatus.DONE for v in views)

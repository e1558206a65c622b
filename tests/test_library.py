"""Local models: HF cache scan (real downloads of the tiny models), extra folders,
last use, delete rules, and the parse cache keyed by modification times."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.accounts.auth import AuthService, User
from manager.accounts.permissions import Action, allowed
from manager.errors import Conflict, PermissionDenied, ValidationError
from manager.models import library as library_module
from manager.models.download_types import DownloadStatus
from manager.models.downloads import DownloadManager
from manager.models.hub import HubClient, HubConfig
from manager.models.library import Library
from manager.store import Store
from tests.conftest import PASSWORD, TEST_HASHER
from tests.fixtures.local_hub import LocalHub

TINY = ("text", "text_4bit", "thinking", "tools", "vision")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "manager.db")


@pytest.fixture
def people(store: Store, tmp_path: Path) -> dict[str, User]:
    auth = AuthService(store, b"k" * 32, hasher=TEST_HASHER)
    admin = auth.register("admin@example.com", PASSWORD)
    bob = auth.register("bob@example.com", PASSWORD)
    auth.approve(admin, bob.id)
    carol = auth.add_user("carol@example.com", PASSWORD)
    return {"admin": auth.get(admin.id), "bob": auth.get(bob.id), "carol": carol}


@pytest.fixture
def downloaded(store: Store, hub: LocalHub, hf_home: Path, hub_repos: dict[str, str],
               people: dict[str, User]) -> Iterator[Path]:
    """The tiny models fetched through the download manager into a fresh HF cache
    (the tools model by bob, the others by the manager itself)."""
    cache = hf_home / "hub"
    manager = DownloadManager(store, HubClient(HubConfig(hub.url, None, cache)),
                              cache_dir=cache, max_concurrent=3)
    manager.start_workers()
    try:
        views = [manager.start(people["bob"] if name == "tools" else None, hub_repos[name])
                 for name in TINY]
        for view in views:
            assert manager.wait(view.id, 60).status is DownloadStatus.DONE
    finally:
        manager.close()
    yield cache


def test_scan_lists_downloads_with_correct_badges(store: Store, downloaded: Path,
                                                  hub_repos: dict[str, str]) -> None:
    models = {m.name: m for m in Library(store, downloaded).scan()}
    assert set(models) == {hub_repos[n] for n in TINY}
    text = models[hub_repos["text"]].caps
    assert text.architecture == "qwen3" and not text.quantized and text.context_length == 4096
    assert not (text.multimodal or text.video or text.guessed)
    assert models[hub_repos["text_4bit"]].caps.quant_bits == 4
    assert models[hub_repos["thinking"]].caps.thinking
    assert models[hub_repos["tools"]].caps.tool_use
    vision = models[hub_repos["vision"]].caps
    assert vision.multimodal and vision.architecture == "qwen2_vl"
    for model in models.values():
        assert model.complete and model.source == "hf_cache"
        assert model.size_bytes and model.size_bytes >= (model.caps.weights_bytes or 0)
        assert model.path.parent.name == "snapshots"
        assert model.last_used is None


def test_a_snapshot_missing_a_shard_is_incomplete(store: Store, downloaded: Path,
                                                  hub_repos: dict[str, str]) -> None:
    library = Library(store, downloaded)
    [model] = [m for m in library.scan() if m.name == hub_repos["text"]]
    (model.path / "model.safetensors").unlink()
    [model] = [m for m in library.scan() if m.name == hub_repos["text"]]
    assert not model.complete


def test_touch_records_last_use_by_path_or_repo_id(store: Store, downloaded: Path,
                                                   hub_repos: dict[str, str]) -> None:
    library = Library(store, downloaded)
    by_name = {m.name: m for m in library.scan()}
    library.touch(by_name[hub_repos["text"]].path)
    library.touch(hub_repos["vision"])
    after = {m.name: m for m in library.scan()}
    assert after[hub_repos["text"]].last_used and after[hub_repos["vision"]].last_used
    assert after[hub_repos["tools"]].last_used is None


def test_delete_rules(store: Store, downloaded: Path, hub: LocalHub,
                      hub_repos: dict[str, str], people: dict[str, User]) -> None:
    running: set[str] = set()
    downloads = DownloadManager(store, HubClient(HubConfig(hub.url, None, downloaded)),
                                cache_dir=downloaded)
    library = Library(store, downloaded, is_in_use=lambda p: p in running,
                      downloaded_by=downloads.downloaded_by)
    models = {m.name: m for m in library.scan()}
    tools, text = models[hub_repos["tools"]], models[hub_repos["text"]]
    # The library decides from who downloaded the model, not from what the caller says.
    assert allowed(people["bob"], Action.MODEL_DELETE, library.owners(tools))
    assert not allowed(people["carol"], Action.MODEL_DELETE, library.owners(tools))
    with pytest.raises(PermissionDenied, match="Only its owner or an administrator"):
        library.delete(people["carol"], str(tools.path))
    with pytest.raises(PermissionDenied):
        library.delete(people["bob"], str(text.path))  # the manager downloaded that one
    assert tools.path.exists() and text.path.exists()
    running.add(str(tools.path))
    with pytest.raises(Conflict, match="used by a running server"):
        library.delete(people["bob"], str(tools.path))
    assert tools.path.exists()
    running.clear()
    library.delete(people["bob"], str(tools.path))
    assert not tools.path.parent.parent.exists()  # the whole models--org--name folder
    library.delete(people["admin"], str(text.path))
    assert {hub_repos["tools"], hub_repos["text"]}.isdisjoint(m.name for m in library.scan())


def test_extra_folders_in_lm_studio_layout(store: Store, tmp_path: Path,
                                           tiny_models: dict[str, Path],
                                           people: dict[str, User]) -> None:
    root = tmp_path / "lmstudio" / "models"
    shutil.copytree(tiny_models["text_4bit"], root / "lmstudio-community" / "tiny-4bit")
    shutil.copytree(tiny_models["thinking"], root / "solo-model")
    (root / "lmstudio-community" / "notes").mkdir()  # not a model: no config.json
    library = Library(store, tmp_path / "empty-cache")
    with pytest.raises(PermissionDenied):
        library.add_folder(people["bob"], str(root))
    with pytest.raises(ValidationError, match="absolute path"):
        library.add_folder(people["admin"], "relative/models")
    with pytest.raises(ValidationError, match="not a folder"):
        library.add_folder(people["admin"], str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="NUL character"):  # was "embedded null byte"
        library.add_folder(people["admin"], f"{root}\x00b")
    for whole_disk in ("/", "/.", "/tmp/.."):  # was taken: every top folder scanned as models
        with pytest.raises(ValidationError, match="^/ is the whole disk: add the folder"):
            library.add_folder(people["admin"], whole_disk)
    folder = library.add_folder(people["admin"], str(root))
    with pytest.raises(Conflict):
        library.add_folder(people["admin"], str(root))
    models = {m.name: m for m in library.scan()}
    assert set(models) == {"lmstudio-community/tiny-4bit", "solo-model"}
    assert models["lmstudio-community/tiny-4bit"].caps.quant_bits == 4
    assert models["solo-model"].caps.thinking
    assert models["solo-model"].source == str(root.resolve())
    with pytest.raises(PermissionDenied):
        library.remove_folder(people["bob"], folder.id)
    library.remove_folder(people["admin"], folder.id)
    assert library.scan() == []
    assert (root / "solo-model").exists()  # forgetting a folder never deletes files


def test_warm_scans_reuse_parsed_results_until_files_change(
        store: Store, tmp_path: Path, tiny_models: dict[str, Path], people: dict[str, User],
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "models"
    for name in ("text", "tools"):
        shutil.copytree(tiny_models[name], root / "org" / name)
    library = Library(store, tmp_path / "cache")
    library.add_folder(people["admin"], str(root))
    parsed: list[Path] = []
    real_detect = library_module.capabilities.detect

    def counting_detect(path: Path, *args: object, **kwargs: object) -> object:
        parsed.append(Path(path))
        return real_detect(path, *args, **kwargs)

    monkeypatch.setattr(library_module.capabilities, "detect", counting_detect)
    first = library.scan()
    assert len(parsed) == 2
    assert library.scan() == first and len(parsed) == 2  # warm: nothing parsed again
    config = root / "org" / "tools" / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    library.scan()
    assert parsed[2:] == [root.resolve() / "org" / "tools"]

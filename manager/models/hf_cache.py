"""The standard Hugging Face cache: where a download lives (blobs named by etag,
partial files that survive a pause, and a snapshot linked only once every file is
complete, so mlx_lm and `scan_cache_dir` never see half a model), and how a repo id
or a folder resolves to a model folder."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

from manager.errors import ValidationError
from manager.models.download_types import DiskFull
from manager.models.hub import DownloadPlan, PlannedFile
from manager.units import format_bytes

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".incomplete"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")


def default_free_space(path: Path) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


class CacheFolder:
    """One Hugging Face cache folder, as the downloads write it."""

    def __init__(self, cache_dir: Path, free_space: Callable[[Path], int] = default_free_space
                 ) -> None:
        self.cache_dir = Path(cache_dir)
        self.free_space = free_space

    def storage(self, repo_id: str) -> Path:
        return self.cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model")

    def blob(self, plan: DownloadPlan, planned: PlannedFile) -> Path:
        return self.storage(plan.repo_id) / "blobs" / planned.etag

    def bytes_on_disk(self, plan: DownloadPlan, partials: bool = True) -> int:
        total = 0
        for planned in plan.files:
            blob = self.blob(plan, planned)
            if blob.exists():
                total += planned.size
            elif partials:
                partial = blob.with_name(planned.etag + PARTIAL_SUFFIX)
                total += min(partial.stat().st_size, planned.size) if partial.exists() else 0
        return total

    def check_disk(self, plan: DownloadPlan) -> None:
        needed = plan.total_bytes - self.bytes_on_disk(plan)
        free = self.free_space(self.cache_dir)
        if needed > free:
            raise DiskFull(f"Not enough disk space for {plan.repo_id}: it needs "
                           f"{format_bytes(needed)} more, {format_bytes(free)} is free in "
                           f"{self.cache_dir}. Free some space and try again.")

    def link_snapshot(self, plan: DownloadPlan) -> None:
        """Make the snapshot visible only now that every file is complete."""
        storage = self.storage(plan.repo_id)
        snapshots = storage / "snapshots"
        final = snapshots / plan.revision
        building = final if final.exists() else snapshots / f".{plan.revision}.building"
        for planned in plan.files:
            link = building / planned.path
            link.parent.mkdir(parents=True, exist_ok=True)
            target = os.path.relpath(self.blob(plan, planned), link.parent)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            temp = link.with_name(f".{link.name}.link")
            temp.unlink(missing_ok=True)
            os.symlink(target, temp)
            os.replace(temp, link)
        if building != final:
            os.replace(building, final)
        refs = storage / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        temp_ref = refs / ".main.tmp"
        temp_ref.write_text(plan.revision)
        os.replace(temp_ref, refs / "main")

    def discard_partials(self, repo_id: str) -> None:
        """Remove our partial files and blobs no snapshot uses; the folder if left empty."""
        storage = self.storage(repo_id)
        blobs = storage / "blobs"
        if not blobs.is_dir():
            return
        used = {Path(os.path.realpath(p)).name for p in _links(storage / "snapshots")}
        for entry in blobs.iterdir():
            name = entry.name
            ours_partial = name.endswith(PARTIAL_SUFFIX) and name.count(".") == 1
            if ours_partial or (not name.endswith(PARTIAL_SUFFIX) and name not in used):
                entry.unlink(missing_ok=True)
        building = [p for p in (storage / "snapshots").glob(".*.building")] \
            if (storage / "snapshots").is_dir() else []
        for path in building:
            shutil.rmtree(path, ignore_errors=True)
        if not any(blobs.iterdir()) and not any(_links(storage / "snapshots")):
            shutil.rmtree(storage, ignore_errors=True)
            log.info("removed %s (nothing of it was complete)", storage)


def _links(snapshots: Path) -> list[Path]:
    if not snapshots.is_dir():
        return []
    return [p for p in snapshots.rglob("*") if p.is_symlink()]


# -- finding a downloaded model ---------------------------------------------------------


def cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The local snapshot folder of a downloaded repo (refs/main, else the newest)."""
    folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = folder / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text(encoding="utf-8").strip()
        if (candidate / "config.json").is_file():
            return candidate
    found = [p for p in snapshots.iterdir() if (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cached_repo_ids(cache_dir: Path) -> list[str]:
    """Repo ids of the models in the HF cache (Settings.hub_cache) with a usable snapshot."""
    root = cache_dir
    if not root.is_dir():
        return []
    repos = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("models--") and entry.is_dir():
            repo_id = entry.name.removeprefix("models--").replace("--", "/", 1)
            if cached_snapshot(repo_id, root) is not None:
                repos.append(repo_id)
    return repos


def resolve_model(model: str, cache_dir: Path) -> Path:
    """A model folder from a path or the repo id of a model downloaded to `cache_dir`
    (the HF hub cache: Settings.hub_cache)."""
    text = (model or "").strip()
    if not text:
        raise ValidationError("Pick a model: a folder path or a downloaded repo id.", "model")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValidationError(
                f"{text} has no config.json: it does not look like a model folder.", "model")
        return path.resolve()
    if _REPO_ID.fullmatch(text) and not text.startswith((".", "/", "~")):
        snapshot = cached_snapshot(text, cache_dir)
        if snapshot is not None:
            return snapshot
        raise ValidationError(
            f"{text} is not downloaded. Download it on the Models tab, or give a folder path.",
            "model")
    raise ValidationError(f"No model folder at {text}.", "model")

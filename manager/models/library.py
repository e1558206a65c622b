"""Models on this machine: the Hugging Face cache plus model folders an admin added.

A scan lists every model with its size on disk, capabilities and last use. Parsing a
model's files is the slow part, so results are cached in memory keyed by the path and
the modification times that change when its files do (warm scans only stat folders).
HF cache blobs are content-addressed and never edited in place, so the snapshot and
blobs folder mtimes are enough there; a plain folder also watches its config files.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, require
from manager.clock import utc_now
from manager.errors import Conflict, NotFound, ValidationError
from manager.models import capabilities
from manager.models.capabilities import Capabilities
from manager.store import Store, inserted_id

log = logging.getLogger(__name__)

#: Parsed models kept in memory; far more than any one machine holds.
CACHE_LIMIT = 20_000
_WATCHED_FILES = ("config.json", "tokenizer_config.json", "chat_template.jinja")

#: `is_in_use(path) -> bool`: is a running server using this model folder (or repo id)?
InUseCheck = Callable[[str], bool]
#: `downloaded_by(repo_id) -> user ids`: who downloaded this repo through the dashboard.
DownloadersLookup = Callable[[str], set[int]]


def _never_in_use(_: str) -> bool:
    return False


def _nobody(_: str) -> set[int]:
    return set()


@dataclass(frozen=True)
class LocalModel:
    """One model on disk. `path` is what a server loads (a snapshot or a plain folder)."""

    name: str  # repo id (org/name) for the HF cache, org/name or folder name otherwise
    path: Path
    source: str  # "hf_cache" or the extra folder it was found in
    size_bytes: int | None
    caps: Capabilities
    complete: bool  # weights all present; an incomplete model is never offered to servers
    modified: float
    last_used: str | None = None
    revision: str | None = None

    @property
    def key(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class ModelFolder:
    id: int
    path: Path
    added_at: str


@dataclass(frozen=True)
class _Parsed:
    signature: tuple
    path: Path
    caps: Capabilities
    size_bytes: int | None


class Library:
    """Scans, caches, records last use, deletes (never a model a running server uses)."""

    def __init__(self, store: Store, cache_dir: Path,
                 is_in_use: InUseCheck = _never_in_use,
                 downloaded_by: DownloadersLookup = _nobody) -> None:
        self.store = store
        # Resolved once so paths handed out match the keys `touch()` records.
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        self._is_in_use = is_in_use
        self._downloaded_by = downloaded_by
        self._lock = threading.Lock()
        self._parsed: dict[str, _Parsed] = {}

    def set_in_use_check(self, check: InUseCheck) -> None:
        """Wire the servers' "is this model running?" question (set once at startup)."""
        with self._lock:
            self._is_in_use = check

    # -- scanning ---------------------------------------------------------------------
    def scan(self) -> list[LocalModel]:
        """Every local model, newest first. Folders that vanished are skipped quietly."""
        usage = self._usage()
        found: list[LocalModel] = []
        for repo_dir in _subdirs(self.cache_dir):
            if repo_dir.name.startswith("models--"):
                model = self._hf_model(repo_dir, usage)
                if model is not None:
                    found.append(model)
        for folder in self.folders():
            for model_dir in _model_dirs(folder.path):
                model = self._folder_model(model_dir, folder.path, usage)
                if model is not None:
                    found.append(model)
        found.sort(key=lambda m: (-(m.modified or 0), m.name))
        return found

    def _hf_model(self, repo_dir: Path, usage: dict[str, str]) -> LocalModel | None:
        # Plain os.path strings: a warm scan is a few stats per model, and pathlib's
        # object churn would cost more than the stats themselves.
        root = str(repo_dir)
        revision = _read_ref(os.path.join(root, "refs", "main"))
        snapshot = os.path.join(root, "snapshots", revision) if revision else ""
        try:
            snap_mtime = os.stat(snapshot).st_mtime_ns if snapshot else None
        except FileNotFoundError:
            snap_mtime = None
        try:
            if snap_mtime is None:
                candidates = [p for p in _subdirs(repo_dir / "snapshots")
                              if not p.name.startswith(".")]
                if not candidates:
                    return None
                newest = max(candidates, key=_mtime)
                snapshot, revision = str(newest), newest.name
                snap_mtime = os.stat(snapshot).st_mtime_ns
            signature = (snap_mtime, os.stat(os.path.join(root, "blobs")).st_mtime_ns)
        except OSError as exc:
            log.debug("skipping %s: %s", repo_dir, exc)
            return None
        name = repo_dir.name.removeprefix("models--").replace("--", "/")
        parsed = self._parse(snapshot, signature, name,
                             size=lambda: _dir_size(repo_dir / "blobs"))
        return LocalModel(name, parsed.path, "hf_cache", parsed.size_bytes, parsed.caps,
                          _complete(parsed.caps), signature[0] / 1e9,
                          _last_used(usage, snapshot, name), revision)

    def _folder_model(self, model_dir: Path, root: Path,
                      usage: dict[str, str]) -> LocalModel | None:
        try:
            stamps = [model_dir.stat().st_mtime_ns]
            for file_name in _WATCHED_FILES:
                path = model_dir / file_name
                stamps.append(path.stat().st_mtime_ns if path.exists() else 0)
        except OSError as exc:
            log.debug("skipping %s: %s", model_dir, exc)
            return None
        name = model_dir.relative_to(root).as_posix()
        parsed = self._parse(str(model_dir), tuple(stamps), name,
                             size=lambda: _dir_size(model_dir))
        return LocalModel(name, parsed.path, str(root), parsed.size_bytes, parsed.caps,
                          _complete(parsed.caps), stamps[0] / 1e9,
                          _last_used(usage, str(model_dir), name))

    def _parse(self, key: str, signature: tuple, name: str,
               size: Callable[[], int | None]) -> _Parsed:
        with self._lock:
            cached = self._parsed.get(key)
        if cached is not None and cached.signature == signature:
            return cached
        path = Path(key)
        parsed = _Parsed(signature, path, capabilities.detect(path, repo_id=name), size())
        with self._lock:
            if len(self._parsed) >= CACHE_LIMIT:
                self._parsed.clear()
            self._parsed[key] = parsed
        return parsed

    def invalidate(self, _: str = "") -> None:
        """Forget parsed results (after a download lands or a delete)."""
        with self._lock:
            self._parsed.clear()

    def find(self, path: str) -> LocalModel:
        for model in self.scan():
            if str(model.path) == str(path):
                return model
        raise NotFound("That model is no longer on this machine.")

    # -- last use ------------------------------------------------------------------------
    def touch(self, model: str | Path) -> None:
        """Record that a server started this model (a folder path or a repo id)."""
        key = _usage_key(model)
        now = utc_now()
        with self.store.connect() as db:
            db.execute("INSERT INTO model_usage (model, last_used_at) VALUES (?, ?) "
                       "ON CONFLICT(model) DO UPDATE SET last_used_at = excluded.last_used_at",
                       [key, now])

    def _usage(self) -> dict[str, str]:
        with self.store.reading() as db:
            return {r["model"]: r["last_used_at"]
                    for r in db.query("SELECT model, last_used_at FROM model_usage")}

    # -- delete ---------------------------------------------------------------------------
    def owners(self, model: LocalModel) -> Owned:
        """Who may delete a model besides admins: every user who downloaded it here.
        Models in an admin's extra folders were put there by hand, so only admins."""
        if model.source != "hf_cache":
            return Owned.by()
        return Owned.by_any(self._downloaded_by(model.name))

    def delete(self, actor: User | None, path: str) -> LocalModel:
        """Delete a model's files (admins and whoever downloaded it). Refused while a
        running server uses it."""
        model = self.find(path)
        require(actor, Action.MODEL_DELETE, self.owners(model))
        with self._lock:
            in_use = self._is_in_use
        if in_use(str(model.path)) or in_use(model.name):
            raise Conflict(f"{model.name} is used by a running server: stop the server first.")
        target = model.path
        if model.source == "hf_cache":
            # The whole repo folder: every revision and blob of it.
            target = model.path.parent.parent
            if target.parent.resolve() != self.cache_dir.resolve():
                raise ValidationError("That folder is not inside the Hugging Face cache.")
        log.info("%s deletes model %s at %s", actor.email if actor else "the manager",
                 model.name, target)
        shutil.rmtree(target)
        with self.store.connect() as db:
            db.execute("DELETE FROM model_usage WHERE model IN (?, ?)",
                       [_usage_key(model.path), model.name])
        with self._lock:
            self._parsed.pop(str(model.path), None)
        return model

    # -- extra folders (admin) ---------------------------------------------------------------
    def folders(self) -> list[ModelFolder]:
        with self.store.reading() as db:
            rows = list(db.query("SELECT id, path, added_at FROM model_folders ORDER BY id"))
        return [ModelFolder(r["id"], Path(r["path"]), r["added_at"]) for r in rows]

    def add_folder(self, actor: User, path: str) -> ModelFolder:
        require(actor, Action.MANAGE_FOLDERS)
        text = (path or "").strip()
        if not text:
            raise ValidationError("Type the path of a folder that holds models.", field="path")
        if "\x00" in text:  # no path holds one (os calls raise "embedded null byte")
            raise ValidationError("That path has a NUL character in it: type it again.",
                                  field="path")
        folder = Path(text).expanduser()
        if not folder.is_absolute():
            raise ValidationError("Use an absolute path (like /Users/me/.lmstudio/models).",
                                  field="path")
        folder = folder.resolve()
        if not folder.is_dir():
            raise ValidationError(f"{folder} is not a folder on this machine.", field="path")
        if folder == Path(folder.anchor):
            # Every top folder would be read as a model's or an organisation's.
            raise ValidationError(f"{folder} is the whole disk: add the folder that holds "
                                  "your models (like /Users/me/.lmstudio/models).", field="path")
        now = utc_now()
        with self.store.connect(immediate=True) as db:
            if list(db.query("SELECT id FROM model_folders WHERE path = ?", [str(folder)])):
                raise Conflict(f"{folder} is already in the list.")
            cursor = db.execute("INSERT INTO model_folders (path, added_by, added_at) "
                                "VALUES (?, ?, ?)", [str(folder), actor.id, now])
            folder_id = inserted_id(cursor)
        log.info("%s added model folder %s", actor.email, folder)
        return ModelFolder(folder_id, folder, now)

    def remove_folder(self, actor: User, folder_id: int) -> None:
        """Forget a folder (its files stay where they are)."""
        require(actor, Action.MANAGE_FOLDERS)
        with self.store.connect() as db:
            cursor = db.execute("DELETE FROM model_folders WHERE id = ?", [int(folder_id)])
            if cursor.rowcount == 0:
                raise NotFound("That folder is not in the list.")
        log.info("%s removed model folder %s", actor.email, folder_id)


# --- helpers ------------------------------------------------------------------------------


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError as exc:
        log.debug("cannot list %s: %s", path, exc)
        return []


def _model_dirs(root: Path) -> list[Path]:
    """root/name/config.json or root/org/name/config.json (LM Studio's layout)."""
    found = []
    for child in _subdirs(root):
        if child.name.startswith("."):
            continue
        if (child / "config.json").exists():
            found.append(child)
            continue
        found.extend(g for g in _subdirs(child) if (g / "config.json").exists())
    return found


def _read_ref(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        log.debug("no ref at %s: %s", path, exc)
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError as exc:
        log.debug("cannot stat %s: %s", path, exc)
        return 0.0


def _dir_size(path: Path) -> int | None:
    """Bytes of the files below `path`, symlinks not followed (blobs are counted once)."""
    total = 0
    try:
        for root, _dirs, files in os.walk(path):
            for name in files:
                if name.endswith(".incomplete"):
                    continue
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError as exc:
                    log.debug("cannot stat %s/%s: %s", root, name, exc)
    except OSError as exc:
        log.warning("cannot measure %s: %s", path, exc)
        return None
    return total


def _complete(caps: Capabilities) -> bool:
    return not caps.guessed and caps.weights_bytes is not None


def _usage_key(model: str | Path) -> str:
    text = str(model)
    path = Path(text).expanduser()
    return str(path.resolve()) if path.is_absolute() else text


def _last_used(usage: dict[str, str], path: str, name: str) -> str | None:
    if not usage:
        return None
    stamps = [s for s in (usage.get(path), usage.get(name)) if s]
    return max(stamps) if stamps else None

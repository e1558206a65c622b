"""Hugging Face search and model details through `huggingface_hub.HfApi`.

The endpoint, token and cache come from Settings, else from HF_ENDPOINT / HF_TOKEN /
HF_HUB_CACHE (HF_HOME) and huggingface_hub's defaults, so other tools see the same
cache. Tiles get their badges from config.json and tokenizer_config.json only, fetched
lazily (for the tiles shown) straight over HTTP, never into the cache (a cache folder
holding only configs would look like a half-downloaded model), and kept in a bounded
in-memory cache.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants, get_token, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from manager.errors import ManagerError, NotFound, PermissionDenied, ValidationError
from manager.models import capabilities
from manager.models.capabilities import Capabilities
from manager.settings import Settings

log = logging.getLogger(__name__)

#: Authors offered in the search bar; "" means any author.
KNOWN_AUTHORS = ("mlx-community", "lmstudio-community")
SORTS = {"downloads": "downloads", "likes": "likes", "recent": "last_modified"}
PAGE_SIZE = 24
#: One search walks at most this many results ("load more" stops there; refine instead).
RESULT_CAP = 600
DETAILS_CACHE_SIZE = 512
DETAILS_WORKERS = 8
_MAX_CONFIG_BYTES = 8 * 1024 * 1024
#: What a dropped or refused connection raises (huggingface_hub speaks httpx2).
NETWORK_ERRORS: tuple[type[Exception], ...] = (OSError, httpx2.TransportError)
_EXPAND = ["author", "downloads", "likes", "lastModified", "tags", "library_name",
           "pipeline_tag", "gated", "sha"]

#: What MLX needs from a repo: weights (+ index), configs, tokenizer, processor and
#: chat template files. README, PyTorch/GGUF weights and images stay on the hub.
MLX_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.jinja",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "merges.txt",
    "vocab.txt",
    "*.spm",
)


class RepoNotFound(NotFound):
    pass


class NoMLXWeights(ValidationError):
    pass


class GatedRepo(PermissionDenied):
    pass


class HubUnavailable(ManagerError):
    pass


@dataclass(frozen=True)
class HubConfig:
    """Where the hub is, who we are on it, and where downloads go."""

    endpoint: str
    token: str | None = field(default=None, repr=False)
    cache_dir: Path = Path(".")

    @classmethod
    def from_settings(cls, settings: Settings) -> HubConfig:
        endpoint = (settings.hf_endpoint or os.environ.get("HF_ENDPOINT")
                    or constants.ENDPOINT).rstrip("/")
        # get_token() reads HF_TOKEN and the token file `huggingface-cli login` writes.
        token = settings.hf_token or get_token()
        return cls(endpoint=endpoint, token=token or None, cache_dir=settings.hub_cache)


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    author: str = "mlx-community"  # "" = any author
    mlx_only: bool = True
    sort: str = "downloads"  # a key of SORTS


@dataclass(frozen=True)
class RemoteModel:
    """One search hit; unknown figures are None."""

    repo_id: str
    downloads: int | None = None
    likes: int | None = None
    last_modified: datetime | None = None
    tags: tuple[str, ...] = ()
    gated: bool = False
    sha: str | None = None
    library: str | None = None
    pipeline_tag: str | None = None


@dataclass(frozen=True)
class RemoteDetails:
    """What a tile needs beyond the search hit: sizes and badges, or why there are none."""

    repo_id: str
    caps: Capabilities
    total_bytes: int | None = None  # of the files MLX needs
    sha: str | None = None
    gated: bool = False
    problem: str | None = None  # shown on the tile
    downloadable: bool = True


@dataclass(frozen=True)
class PlannedFile:
    path: str
    size: int
    etag: str  # the blob name in the HF cache: LFS sha256, else the git blob id


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    revision: str  # a commit sha
    files: tuple[PlannedFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def mlx_files(names: Sequence[str]) -> list[str]:
    """The subset of repo files MLX needs (Mistral's duplicate consolidated weights left out)."""
    picked = [n for n in names if any(fnmatch.fnmatch(n, p) for p in MLX_PATTERNS)]
    weights = [n for n in picked if n.endswith(".safetensors")]
    if any(not n.split("/")[-1].startswith("consolidated") for n in weights):
        picked = [n for n in picked
                  if not (n.endswith(".safetensors")
                          and n.split("/")[-1].startswith("consolidated"))]
    return picked


def has_mlx_weights(names: Sequence[str]) -> bool:
    return any(n.endswith(".safetensors") for n in names)


class SearchSession:
    """One browser's search: keeps the hub's result iterator between "load more" clicks.

    Lives in that browser's gr.State, never in a global. Not thread-safe by design:
    Gradio runs one event per session at a time for the same State.
    """

    def __init__(self, query: SearchQuery, results: Iterator[Any]) -> None:
        self.query = query
        self._results = results
        self.exhausted = False
        self.fetched = 0

    def next_page(self, size: int = PAGE_SIZE) -> list[RemoteModel]:
        if self.exhausted:
            return []
        try:
            page = [_remote_model(info) for info in islice(self._results, size)]
        except HfHubHTTPError as exc:
            log.warning("search %s failed: %s", self.query, exc)
            raise HubUnavailable(f"Hugging Face search failed: {_short(exc)}") from exc
        except NETWORK_ERRORS as exc:
            log.warning("search %s could not reach the hub: %s", self.query, exc)
            raise HubUnavailable("Hugging Face cannot be reached. Check the network "
                                 "connection (or HF_ENDPOINT) and try again.") from exc
        self.fetched += len(page)
        if len(page) < size:
            self.exhausted = True
        return page

    def __deepcopy__(self, memo: dict) -> SearchSession:
        # Gradio copies State defaults; an iterator cannot be copied and need not be.
        return self


class HubClient:
    """Search, tile details and download plans against one hub endpoint."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.api = HfApi(endpoint=config.endpoint, token=config.token)
        self._lock = threading.Lock()
        self._details: OrderedDict[tuple[str, str | None], RemoteDetails] = OrderedDict()

    # -- search ------------------------------------------------------------------
    def search(self, query: SearchQuery) -> SearchSession:
        """Start a search; the first page is fetched by SearchSession.next_page()."""
        sort = SORTS.get(query.sort)
        if sort is None:
            raise ValidationError(f"Unknown sort order {query.sort!r}.", field="sort")
        results = self.api.list_models(
            search=query.text.strip() or None,
            author=query.author.strip() or None,
            filter="mlx" if query.mlx_only else None,
            sort=sort,  # type: ignore[arg-type]
            limit=RESULT_CAP,
            expand=_EXPAND,  # type: ignore[arg-type]
        )
        return SearchSession(query, iter(results))

    def lookup(self, repo_id: str) -> RemoteModel:
        """One repo by exact id (typed into the search box)."""
        info = self._model_info(repo_id, files=False)
        return _remote_model(info)

    # -- details for tiles ---------------------------------------------------------
    def details(self, model: RemoteModel) -> RemoteDetails:
        """Sizes and badges for one tile; never raises (problems go on the tile)."""
        key = (model.repo_id, model.sha)
        with self._lock:
            cached = self._details.get(key)
            if cached is not None:
                self._details.move_to_end(key)
                return cached
        details = self._fetch_details(model)
        with self._lock:
            self._details[key] = details
            while len(self._details) > DETAILS_CACHE_SIZE:
                self._details.popitem(last=False)
        return details

    def details_many(self, models: Sequence[RemoteModel]) -> list[RemoteDetails]:
        if not models:
            return []
        with ThreadPoolExecutor(max_workers=min(DETAILS_WORKERS, len(models)),
                                thread_name_prefix="hub-details") as pool:
            return list(pool.map(self.details, models))

    def _fetch_details(self, model: RemoteModel) -> RemoteDetails:
        guessed = capabilities.from_files(None, None, model.tags, (), repo_id=model.repo_id)
        try:
            info = self._model_info(model.repo_id, files=True)
        except ManagerError as exc:
            return RemoteDetails(model.repo_id, guessed, problem=exc.message, downloadable=False)
        sizes = {s.rfilename: s.size for s in (info.siblings or [])}
        names = list(sizes)
        wanted = mlx_files(names)
        total = _sum_or_none([sizes[n] for n in wanted])
        gated = bool(info.gated)
        tags = tuple(info.tags or model.tags)
        if not has_mlx_weights(names):
            # Not downloadable, but its config.json still says what it is (the tile's arch).
            config = (self._fetch_json(model.repo_id, info.sha, "config.json", [])
                      if "config.json" in sizes and not (gated and not self.config.token)
                      else None)
            caps = capabilities.from_files(config, None, tags, sizes, repo_id=model.repo_id)
            return RemoteDetails(model.repo_id, caps, total, info.sha, gated,
                                 problem="No MLX weights: this repo has no .safetensors files "
                                 "(PyTorch or GGUF only), so MLX cannot load it.",
                                 downloadable=False)
        problems: list[str] = []
        config = tok_config = None
        if gated and not self.config.token:
            problems.append("Gated model: accept its terms on Hugging Face and set a token "
                            "(HF_TOKEN) to download it.")
        else:
            if "config.json" in sizes:
                config = self._fetch_json(model.repo_id, info.sha, "config.json", problems)
            else:
                problems.append("config.json is missing; badges are guessed from the name.")
            if "tokenizer_config.json" in sizes:
                tok_config = self._fetch_json(model.repo_id, info.sha, "tokenizer_config.json",
                                              problems)
        caps = capabilities.from_files(config, tok_config, tags, sizes, repo_id=model.repo_id)
        return RemoteDetails(model.repo_id, caps, total, info.sha, gated,
                             problem=" ".join(problems) or None,
                             downloadable=not (gated and not self.config.token))

    def _fetch_json(self, repo_id: str, sha: str | None, filename: str,
                    problems: list[str]) -> dict | None:
        """A small JSON file over HTTP (not into the cache); problems are described."""
        url = hf_hub_url(repo_id, filename, revision=sha, endpoint=self.config.endpoint)
        try:
            response = get_session().get(url, headers=build_hf_headers(token=self.config.token),
                                         timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT)
            hf_raise_for_status(response)
            raw = response.content
        except GatedRepoError as exc:
            log.info("%s/%s is gated: %s", repo_id, filename, exc)
            problems.append("Gated model: your token has no access yet; ask for access on "
                            "Hugging Face.")
            return None
        except HfHubHTTPError as exc:
            log.warning("cannot fetch %s/%s: %s", repo_id, filename, exc)
            problems.append(f"{filename} could not be fetched ({_short(exc)}).")
            return None
        except NETWORK_ERRORS as exc:
            log.warning("cannot reach the hub for %s/%s: %s", repo_id, filename, exc)
            problems.append(f"{filename} could not be fetched (network error).")
            return None
        if len(raw) > _MAX_CONFIG_BYTES:
            problems.append(f"{filename} is too large to read.")
            return None
        return parse_json_file(filename, raw, problems)

    # -- downloads -------------------------------------------------------------------
    def plan(self, repo_id: str, revision: str | None = None) -> DownloadPlan:
        """Which files to fetch at which commit; raises a ManagerError a user can act on."""
        info = self._model_info(repo_id, files=True, revision=revision)
        siblings = {s.rfilename: s for s in (info.siblings or [])}
        if not has_mlx_weights(list(siblings)):
            raise NoMLXWeights(f"{repo_id} has no MLX weights (.safetensors files): it holds "
                               "PyTorch or GGUF weights only, which MLX cannot load.")
        if info.gated and not self.config.token:
            raise GatedRepo(f"{repo_id} is gated: accept its terms on Hugging Face, then set "
                            "HF_TOKEN (or the dashboard's token setting) and try again.")
        if not info.sha:
            raise HubUnavailable(f"The hub did not say which commit {repo_id} is at; try again.")
        files = []
        for name in mlx_files(list(siblings)):
            sibling = siblings[name]
            etag = (sibling.lfs.sha256 if sibling.lfs is not None else None) or sibling.blob_id
            if sibling.size is None or not etag:
                raise HubUnavailable(f"The hub gave no size or id for {repo_id}/{name}; "
                                     "try again later.")
            files.append(PlannedFile(name, int(sibling.size), etag))
        return DownloadPlan(repo_id, info.sha, tuple(files))

    # -- plumbing ----------------------------------------------------------------------
    def _model_info(self, repo_id: str, *, files: bool, revision: str | None = None) -> Any:
        repo_id = repo_id.strip()
        if repo_id.count("/") != 1 or any(not part for part in repo_id.split("/")):
            raise ValidationError(f"{repo_id!r} is not a repo id like org/name.", field="repo")
        try:
            return self.api.model_info(repo_id, revision=revision, files_metadata=files)
        except RepositoryNotFoundError as exc:
            log.info("repo %s not found: %s", repo_id, exc)
            raise RepoNotFound(f"Repository {repo_id} was not found on Hugging Face (check the "
                               "name; private repos need a token).") from exc
        except RevisionNotFoundError as exc:
            log.info("revision %s of %s not found: %s", revision, repo_id, exc)
            raise RepoNotFound(f"{repo_id} no longer has revision {revision}.") from exc
        except GatedRepoError as exc:
            log.info("repo %s is gated: %s", repo_id, exc)
            raise GatedRepo(f"{repo_id} is gated: set a token with access to it.") from exc
        except HfHubHTTPError as exc:
            log.warning("model info for %s failed: %s", repo_id, exc)
            raise HubUnavailable(f"Hugging Face answered with an error for {repo_id}: "
                                 f"{_short(exc)}") from exc
        except NETWORK_ERRORS as exc:
            log.warning("model info for %s: hub unreachable: %s", repo_id, exc)
            raise HubUnavailable("Hugging Face cannot be reached. Check the network "
                                 "connection (or HF_ENDPOINT) and try again.") from exc


def parse_json_file(filename: str, raw: bytes, problems: list[str]) -> dict | None:
    """Parse a config file's bytes; a non-UTF-8 or malformed file adds a clear problem."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        log.warning("%s is not UTF-8: %s", filename, exc)
        problems.append(f"{filename} is not UTF-8 text (bad byte at offset {exc.start}); "
                        "badges are guessed.")
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        log.warning("%s is not valid JSON: %s", filename, exc)
        problems.append(f"{filename} is malformed JSON ({exc.msg} at line {exc.lineno}); "
                        "badges are guessed.")
        return None
    if not isinstance(data, dict):
        problems.append(f"{filename} does not hold a JSON object; badges are guessed.")
        return None
    return data


def _remote_model(info: Any) -> RemoteModel:
    modified = getattr(info, "last_modified", None)
    return RemoteModel(
        repo_id=info.id,
        downloads=getattr(info, "downloads", None),
        likes=getattr(info, "likes", None),
        last_modified=modified if isinstance(modified, datetime) else None,
        tags=tuple(getattr(info, "tags", None) or ()),
        gated=bool(getattr(info, "gated", False)),
        sha=getattr(info, "sha", None),
        library=getattr(info, "library_name", None),
        pipeline_tag=getattr(info, "pipeline_tag", None),
    )


def _sum_or_none(sizes: Sequence[int | None]) -> int | None:
    if not sizes or any(s is None for s in sizes):
        return None
    return sum(s for s in sizes if s is not None)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__

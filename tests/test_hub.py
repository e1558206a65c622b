"""Hugging Face search, tile details and download plans against the local hub."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.models.hub import (
    GatedRepo,
    HubClient,
    HubConfig,
    NoMLXWeights,
    RemoteModel,
    RepoNotFound,
    SearchQuery,
    mlx_files,
)
from tests.fixtures.local_hub import DEFAULT_TOKEN, LocalHub

MLX_REPOS = {"mlx-community/tiny-qwen3", "mlx-community/tiny-qwen3-4bit",
             "mlx-community/tiny-qwen3-thinking", "mlx-community/tiny-qwen3-tools",
             "mlx-community/tiny-qwen3-tool-loop", "mlx-community/tiny-qwen2-vl"}


@pytest.fixture
def client(hub: LocalHub, hf_home: Path) -> Iterator[HubClient]:
    yield HubClient(HubConfig(endpoint=hub.url, token=None, cache_dir=hf_home / "hub"))


def fake_safetensors(padding: int = 64) -> bytes:
    """A valid safetensors file with no tensors (the hub reads its header)."""
    header = json.dumps({"__metadata__": {"format": "mlx"}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * padding


def ids(models: list[RemoteModel]) -> list[str]:
    return [m.repo_id for m in models]


def test_search_sorts_by_downloads_likes_and_recency(client: HubClient) -> None:
    by_downloads = client.search(SearchQuery(sort="downloads")).next_page(50)
    assert set(ids(by_downloads)) == MLX_REPOS
    downloads = [m.downloads for m in by_downloads]
    assert downloads == sorted(downloads, reverse=True)
    assert by_downloads[0].repo_id == "mlx-community/tiny-qwen3-4bit"
    by_likes = client.search(SearchQuery(sort="likes")).next_page(50)
    assert [m.likes for m in by_likes] == sorted((m.likes for m in by_likes), reverse=True)
    recent = client.search(SearchQuery(sort="recent")).next_page(50)
    dates = [m.last_modified for m in recent]
    assert dates == sorted(dates, reverse=True) and None not in dates


def test_search_filters_text_author_and_library(client: HubClient) -> None:
    assert ids(client.search(SearchQuery(text="vl")).next_page(50)) == [
        "mlx-community/tiny-qwen2-vl"]
    any_author = ids(client.search(SearchQuery(author="")).next_page(50))
    # The gated acme repo is MLX; the PyTorch-only one is not.
    assert "acme/tiny-gated-qwen3" in any_author
    assert "acme/tiny-pytorch-only" not in any_author
    everything = ids(client.search(SearchQuery(author="", mlx_only=False)).next_page(50))
    assert "acme/tiny-pytorch-only" in everything
    assert client.search(SearchQuery(author="lmstudio-community")).next_page(50) == []


def test_paging_follows_the_hub_cursor(client: HubClient, hub: LocalHub) -> None:
    hub.page_size = 2  # the hub now answers 2 per request with a Link to the next page
    session = client.search(SearchQuery())
    first = session.next_page(4)
    assert len(first) == 4 and not session.exhausted
    rest = session.next_page(4)
    assert len(rest) == 2 and session.exhausted
    assert set(ids(first + rest)) == MLX_REPOS
    assert session.next_page(4) == []
    cursors = [r for r in hub.requests if r.path == "/api/models" and "cursor" in r.query]
    assert len(cursors) >= 2


def test_details_fetch_only_the_two_configs_and_are_cached(client: HubClient,
                                                           hub: LocalHub) -> None:
    [model] = client.search(SearchQuery(text="tiny-qwen3-4bit")).next_page(5)
    hub.clear_requests()
    details = client.details(model)
    fetched = sorted(r.path.rsplit("/", 1)[-1] for r in hub.requests if "/resolve/" in r.path)
    assert fetched == ["config.json", "tokenizer_config.json"]
    assert details.caps.quant_bits == 4 and details.caps.architecture == "qwen3"
    assert not details.caps.guessed and details.problem is None
    served = hub.repo(model.repo_id).files
    assert details.total_bytes == sum(served[n].size for n in mlx_files(list(served)))
    hub.clear_requests()
    assert client.details(model) == details
    assert hub.requests == []


@pytest.mark.parametrize(("name", "check"), [
    ("text", lambda c: c.architecture == "qwen3" and not c.quantized and not c.multimodal),
    ("text_4bit", lambda c: c.quant_bits == 4),
    ("thinking", lambda c: c.thinking),
    ("tools", lambda c: c.tool_use),
    ("vision", lambda c: c.multimodal and c.video),
])
def test_remote_badges_of_the_tiny_models(client: HubClient, hub_repos: dict[str, str],
                                          name: str, check: object) -> None:
    details = client.details(client.lookup(hub_repos[name]))
    assert check(details.caps), details.caps  # type: ignore[operator]
    assert details.caps.context_length == 4096 or name == "vision"


def test_unknown_repo_has_a_clear_message(client: HubClient) -> None:
    with pytest.raises(RepoNotFound, match="acme/nope was not found"):
        client.lookup("acme/nope")
    with pytest.raises(RepoNotFound):
        client.plan("acme/nope")
    details = client.details(RemoteModel("acme/nope"))
    assert "was not found" in details.problem and not details.downloadable


def test_repo_without_mlx_weights(client: HubClient, hub_repos: dict[str, str]) -> None:
    details = client.details(client.lookup(hub_repos["no_mlx"]))
    assert details.problem.startswith("No MLX weights") and not details.downloadable
    # Its config.json still names the architecture (issue 15: the tile said "arch n/a").
    assert details.caps.architecture == "qwen3"
    with pytest.raises(NoMLXWeights, match="no MLX weights"):
        client.plan(hub_repos["no_mlx"])


def test_gated_repo_without_and_with_a_token(hub: LocalHub, hf_home: Path,
                                             hub_repos: dict[str, str],
                                             client: HubClient) -> None:
    details = client.details(client.lookup(hub_repos["gated"]))
    assert "Gated model" in details.problem and not details.downloadable
    assert details.caps.guessed
    with pytest.raises(GatedRepo, match="set\\s+HF_TOKEN"):
        client.plan(hub_repos["gated"])
    with_token = HubClient(HubConfig(endpoint=hub.url, token=DEFAULT_TOKEN,
                                     cache_dir=hf_home / "hub"))
    details = with_token.details(with_token.lookup(hub_repos["gated"]))
    assert details.problem is None and details.caps.architecture == "qwen3"
    assert with_token.plan(hub_repos["gated"]).files


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"model_type": "qwen3", ', "malformed JSON"),
    ("{\"model_type\": \"qw\u00e9n\"}".encode("latin-1"), "not UTF-8"),
    (b"[1, 2]", "does not hold a JSON object"),
])
def test_bad_config_is_explained_and_badges_are_guessed(client: HubClient, hub: LocalHub,
                                                        raw: bytes, message: str) -> None:
    hub.add_repo("mlx-community/broken-7B-4bit",
                 {"config.json": raw, "model.safetensors": fake_safetensors()})
    details = client.details(client.lookup("mlx-community/broken-7B-4bit"))
    assert message in details.problem
    assert details.caps.guessed and details.caps.quant_bits == 4
    assert details.downloadable


def test_missing_config_gives_guessed_badges(client: HubClient, hub: LocalHub) -> None:
    hub.add_repo("mlx-community/Qwen2.5-VL-3B-Instruct-8bit",
                 {"model.safetensors": fake_safetensors()}, tags=["image-text-to-text"])
    details = client.details(client.lookup("mlx-community/Qwen2.5-VL-3B-Instruct-8bit"))
    assert details.caps.guessed and details.caps.multimodal and details.caps.quant_bits == 8
    assert "config.json is missing" in details.problem


def test_plan_keeps_only_what_mlx_needs(client: HubClient, hub: LocalHub,
                                        tiny_models: dict[str, Path]) -> None:
    files = {p.name: p.read_bytes() for p in tiny_models["text"].iterdir() if p.is_file()}
    files |= {"README.md": b"# hi", "pytorch_model.bin": b"x" * 10, "model.gguf": b"g",
              "consolidated.safetensors": fake_safetensors(10), "chat_template.jinja": b"{{ x }}",
              "images/a.png": b"png"}
    hub.add_repo("mlx-community/mixed", files)
    plan = client.plan("mlx-community/mixed")
    names = {f.path for f in plan.files}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors",
            "chat_template.jinja"} <= names
    assert not names & {"README.md", "pytorch_model.bin", "model.gguf",
                        "consolidated.safetensors", "images/a.png"}
    assert plan.revision == hub.repo("mlx-community/mixed").sha
    assert mlx_files(["consolidated.safetensors"]) == ["consolidated.safetensors"]
    assert json.loads(files["config.json"])["model_type"] == "qwen3"

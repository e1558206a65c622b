"""Download through the manager vs a bare `snapshot_download` of the same repo.

Both fetch the same files (the MLX patterns) from the same local hub
(tests.fixtures.local_hub.LocalHub) into fresh caches, alternating, unthrottled and
throttled to a fixed rate per connection. Ratio = bare time / manager time (> 1:
the manager is faster). Goal: >= 0.95.

Run: .venv/bin/python -m bench.download [--shards 4] [--shard-mb 24] [--repeat 3]
"""

from __future__ import annotations

import os

# huggingface_hub reads these at import.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from huggingface_hub import snapshot_download  # noqa: E402

from manager.models.download_types import DownloadStatus
from manager.models.downloads import DownloadManager  # noqa: E402
from manager.models.hub import MLX_PATTERNS, HubClient, HubConfig  # noqa: E402
from manager.store import Store  # noqa: E402
from tests.fixtures.local_hub import LocalHub  # noqa: E402

REPO = "mlx-community/bench-model-4bit"


def build_repo(root: Path, shards: int, shard_mb: int) -> Path:
    """Config, tokenizer files and `shards` safetensors files of random bytes."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "hidden_size": 2048, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 40960,
        "quantization": {"bits": 4, "group_size": 64}}))
    (repo / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    (repo / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {}}}))
    (repo / "README.md").write_text("# not fetched by either side\n")
    header = json.dumps({"__metadata__": {"format": "mlx"}}).encode()
    for i in range(shards):
        with open(repo / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as fh:
            fh.write(struct.pack("<Q", len(header)) + header)
            fh.write(os.urandom(shard_mb * 1024 * 1024))
    return repo


def bare(hub: LocalHub, cache: Path) -> float:
    started = time.perf_counter()
    snapshot_download(REPO, cache_dir=cache, endpoint=hub.url, allow_patterns=list(MLX_PATTERNS))
    return time.perf_counter() - started


def managed(hub: LocalHub, cache: Path, db: Path) -> float:
    manager = DownloadManager(Store(db), HubClient(HubConfig(hub.url, None, cache)),
                              cache_dir=cache, max_concurrent=1)
    manager.start_workers()
    try:
        started = time.perf_counter()
        view = manager.start(None, REPO)
        done = manager.wait(view.id, timeout=600)
        elapsed = time.perf_counter() - started
    finally:
        manager.close()
    if done.status is not DownloadStatus.DONE:
        raise SystemExit(f"manager download ended {done.status.value}: {done.error}")
    return elapsed


def measure(hub: LocalHub, work: Path, repeat: int) -> tuple[float, float]:
    bares, manageds = [], []
    for i in range(repeat):
        for label, runs in (("bare", bares), ("manager", manageds)):
            cache = work / f"{label}-{i}"
            if label == "bare":
                runs.append(bare(hub, cache))
            else:
                runs.append(managed(hub, cache, work / f"{label}-{i}.db"))
            shutil.rmtree(cache, ignore_errors=True)
    return statistics.median(bares), statistics.median(manageds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mb", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--throttle-mb", type=float, default=16.0,
                        help="per-connection rate of the throttled run, MB/s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        source = build_repo(work, args.shards, args.shard_mb)
        size_mb = args.shards * args.shard_mb
        with LocalHub() as hub:
            hub.add_repo(REPO, source)
            print(f"download of {REPO}: {args.shards} x {args.shard_mb} MB "
                  f"(median of {args.repeat}, alternating)")
            for label, rate in (("unthrottled", None),
                                (f"throttled {args.throttle_mb:g} MB/s/conn",
                                 args.throttle_mb * 1024 * 1024)):
                hub.throttle_bytes_per_sec = rate
                base, ours = measure(hub, work, args.repeat)
                ratio = base / ours
                print(f"  {label:28s} bare {base:6.2f} s ({size_mb / base:7.1f} MB/s)   "
                      f"manager {ours:6.2f} s ({size_mb / ours:7.1f} MB/s)   "
                      f"ratio {ratio:.3f} (goal >= 0.95) {'OK' if ratio >= 0.95 else 'MISSED'}")


if __name__ == "__main__":
    main()

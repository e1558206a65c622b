"""Library scan of 500 synthetic models in HF cache layout: cold vs warm.

Run: .venv/bin/python -m bench.library_scan [--models 500] [--repeat 5]
Goal: warm (parsed results cached by path + mtimes) < 5 % of cold.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import struct
import tempfile
import time
from pathlib import Path

from manager.models.library import Library
from manager.store import Store

TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\n# Tools\\n' }}{%- for tool in tools %}"
    "{{ tool | tojson }}{%- endfor %}{{ '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.role == 'assistant' and enable_thinking %}{{ '<think>\\n' }}{%- endif %}"
    "{{ message.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
) * 4


def _blob(repo: Path, data: bytes) -> str:
    name = hashlib.sha1(data).hexdigest()
    (repo / "blobs" / name).write_bytes(data)
    return name


def make_model(cache: Path, index: int) -> None:
    repo = cache / f"models--bench-org--model-{index:04d}-4bit"
    sha = hashlib.sha1(str(index).encode()).hexdigest()
    snapshot = repo / "snapshots" / sha
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
              "hidden_size": 1024 + index % 8 * 128, "intermediate_size": 3072,
              "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
              "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
              "torch_dtype": "bfloat16", "tie_word_embeddings": True,
              "quantization": {"group_size": 64, "bits": 4}}
    vocab = {f"tok{i}": i for i in range(3000)}
    tokenizer = {"added_tokens": [{"id": 3000 + i, "content": c, "special": False}
                                  for i, c in enumerate(("<think>", "</think>", "<tool_call>",
                                                         "</tool_call>", "<|im_end|>"))],
                 "model": {"type": "BPE", "vocab": vocab, "merges": []}}
    header = json.dumps({"__metadata__": {"format": "mlx"}}).encode()
    files = {
        "config.json": json.dumps(config).encode(),
        "tokenizer_config.json": json.dumps({"chat_template": TEMPLATE,
                                             "eos_token": "<|im_end|>"}).encode(),
        "tokenizer.json": json.dumps(tokenizer).encode(),
        "model.safetensors": struct.pack("<Q", len(header)) + header + b"\0" * 4096,
    }
    for name, data in files.items():
        blob = _blob(repo, data)
        (snapshot / name).symlink_to(f"../../blobs/{blob}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-library-") as tmp:
        root = Path(tmp)
        cache = root / "hub"
        cache.mkdir()
        for i in range(args.models):
            make_model(cache, i)
        store = Store(root / "manager.db")
        colds, warms = [], []
        for _ in range(args.repeat):
            library = Library(store, cache)  # a fresh library: nothing parsed yet
            started = time.perf_counter()
            found = library.scan()
            colds.append(time.perf_counter() - started)
            if len(found) != args.models:
                raise SystemExit(f"expected {args.models} models, found {len(found)}")
            started = time.perf_counter()
            library.scan()
            warms.append(time.perf_counter() - started)
        cold, warm = statistics.median(colds), statistics.median(warms)
        print(f"library scan of {args.models} models (median of {args.repeat})")
        print(f"  cold: {cold * 1000:8.1f} ms")
        print(f"  warm: {warm * 1000:8.1f} ms")
        ratio = warm / cold
        print(f"  warm/cold ratio: {ratio:.4f} ({ratio * 100:.2f} %; goal < 5 %) "
              f"{'OK' if ratio < 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()

"""detect() on real folders: valid, broken, missing, HF cache symlinks (capabilities.files)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from manager.models.capabilities import FitLevel, detect, fit
from tests.capability_samples import (
    GPT_OSS_TEMPLATE,
    MISTRAL_SMALL_31,
    QWEN3_06B_4BIT,
    QWEN3_TEMPLATE,
)

GIB = 1024**3


# --- detect() on real folders ---------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def make_model(folder: Path, config: dict[str, Any] | None = QWEN3_06B_4BIT,
               weights: int = 4096) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        write_json(folder / "config.json", config)
    (folder / "model.safetensors").write_bytes(b"\0" * weights)
    return folder


def test_detect_valid_folder(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "Qwen3-0.6B-4bit")
    write_json(folder / "tokenizer_config.json",
               {"chat_template": QWEN3_TEMPLATE, "eos_token": "<|im_end|>"})
    write_json(folder / "tokenizer.json", {
        "added_tokens": [{"id": 1, "content": "<think>"}, {"id": 2, "content": "</think>"}],
        "model": {"type": "BPE", "vocab": {"a": 0, "<tool_call>": 3}},
    })
    caps = detect(folder)
    assert caps.guessed is False
    assert caps.architecture == "qwen3"
    assert caps.context_length == 40960
    assert caps.quantization_label == "4-bit"
    assert caps.weights_bytes == 4096
    assert caps.kv_bytes_per_token == 114688
    assert caps.tool_use and caps.thinking
    assert caps.notes == ()


def test_detect_reads_vocab_when_no_template(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    write_json(folder / "tokenizer.json", {
        "added_tokens": [{"content": "<think>"}, {"content": "</think>"}],
        "model": {"type": "Unigram", "vocab": [["<tool_call>", 0.0], ["a", -1.0]]},
    })
    caps = detect(folder)
    assert caps.tool_use and caps.thinking


def test_detect_added_tokens_json(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    write_json(folder / "added_tokens.json", {"<think>": 5, "</think>": 6})
    assert detect(folder).thinking


@pytest.mark.parametrize("filename", ["chat_template.jinja", "chat_template.json"])
def test_detect_template_in_separate_file(tmp_path: Path, filename: str) -> None:
    folder = make_model(tmp_path / "m")
    write_json(folder / "tokenizer_config.json", {"eos_token": "<|im_end|>"})
    if filename.endswith(".jinja"):
        (folder / filename).write_text(GPT_OSS_TEMPLATE, encoding="utf-8")
    else:
        write_json(folder / filename, {"chat_template": GPT_OSS_TEMPLATE})
    caps = detect(folder)
    assert caps.tool_use and caps.thinking


@pytest.mark.parametrize(
    ("content", "note"),
    [
        (b'{"model_type": "qwen2_5_vl", ', "config.json is not valid JSON"),
        (b'{"model_type": "caf\xe9"}', "config.json is not UTF-8"),
        (b"[1, 2, 3]", "config.json does not hold a JSON object"),
        (b"", "config.json is not valid JSON"),
    ],
)
def test_detect_bad_config_is_guessed_from_name(tmp_path: Path, content: bytes,
                                                note: str) -> None:
    folder = make_model(tmp_path / "Qwen2.5-VL-7B-Instruct-4bit", config=None)
    (folder / "config.json").write_bytes(content)
    caps = detect(folder)
    assert caps.guessed is True
    assert any(n.startswith(note) for n in caps.notes), caps.notes
    assert caps.multimodal and caps.video and caps.quant_bits == 4
    assert caps.weights_bytes == 4096
    assert caps.architecture is None


def test_detect_missing_config(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "DeepSeek-R1-Distill-Qwen-7B", config=None)
    caps = detect(folder)
    assert caps.guessed and caps.thinking
    assert caps.parameter_count is not None  # from the weights size, 16-bit assumed
    assert any("config.json not found" in n for n in caps.notes)


def test_detect_missing_folder(tmp_path: Path) -> None:
    caps = detect(tmp_path / "Qwen3-8B-4bit")
    assert caps.guessed and caps.quant_bits == 4 and caps.parameter_count == 8_000_000_000
    assert caps.weights_bytes is None
    assert any("not found" in n for n in caps.notes)


def test_detect_bad_tokenizer_config_keeps_config(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    (folder / "tokenizer_config.json").write_text("{oops", encoding="utf-8")
    caps = detect(folder)
    assert caps.guessed is False and caps.architecture == "qwen3"
    assert any(n.startswith("tokenizer_config.json is not valid JSON") for n in caps.notes)


def test_detect_hf_cache_snapshot_with_symlinks(tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--mlx-community--Qwen3-8B-4bit"
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (blobs / "aaa").write_bytes(b"\0" * 2048)
    os.symlink(blobs / "aaa", snapshot / "model.safetensors")
    caps = detect(snapshot, ["tool-use"])  # no config.json: guessed from the repo name
    assert caps.guessed and caps.tool_use
    assert caps.quant_bits == 4
    assert caps.weights_bytes == 2048  # the link is followed


def test_detect_missing_shard_makes_weights_unknown(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    write_json(folder / "model.safetensors.index.json", {
        "metadata": {"total_size": 8192},
        "weight_map": {"a": "model-00001-of-00002.safetensors",
                       "b": "model-00002-of-00002.safetensors"},
    })
    os.symlink(folder / "gone", folder / "model-00003-of-00003.safetensors")  # broken link
    caps = detect(folder)
    assert caps.weights_bytes is None
    assert any("2 weight file(s) missing" in n for n in caps.notes), caps.notes
    assert fit(caps, None, 10 * GIB).level is FitLevel.UNKNOWN


def test_detect_mistral_consolidated_not_double_counted(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", config=MISTRAL_SMALL_31, weights=1000)
    (folder / "consolidated.safetensors").write_bytes(b"\0" * 1000)
    caps = detect(folder)
    assert caps.weights_bytes == 1000
    assert caps.multimodal

"""Reading a model folder safely: size-capped JSON and templates, file sizes, weights.

Nothing here raises on a bad file: a problem becomes a note a person can read, and
the figure it would have given is None.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from manager.models.capabilities.templates import templates_from_tokenizer_config
from manager.models.capabilities.values import as_mapping
from manager.units import format_bytes

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024 * 1024  # config / tokenizer_config / chat_template.json

MAX_TOKENIZER_JSON_BYTES = 256 * 1024 * 1024  # tokenizer.json of 256K-token vocabularies

_MAX_TEMPLATE_BYTES = 4 * 1024 * 1024


def load_json(path: Path, max_bytes: int) -> tuple[Any, str | None]:
    """(object, None), (None, None) when the file is absent, or (None, problem note)."""
    label = path.name
    try:
        size = path.stat().st_size
        if size > max_bytes:
            log.warning("%s is %d bytes, over the %d limit; skipped", path, size, max_bytes)
            return None, f"{label} is too large to read ({format_bytes(size)})"
        raw = path.read_bytes()
    except FileNotFoundError:
        log.debug("%s is absent", path)
        return None, None
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None, f"{label} could not be read ({exc.strerror or exc})"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        log.warning("%s is not UTF-8: %s", path, exc)
        return None, f"{label} is not UTF-8 text (invalid byte at offset {exc.start})"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        log.warning("%s is not valid JSON: %s", path, exc)
        where = f"line {exc.lineno}, column {exc.colno}"
        return None, f"{label} is not valid JSON ({exc.msg} at {where})"
    except RecursionError as exc:
        log.warning("%s nests too deeply: %s", path, exc)
        return None, f"{label} is not valid JSON (nested too deeply)"
    if not isinstance(data, dict):
        log.warning("%s holds %s, not an object", path, type(data).__name__)
        return None, f"{label} does not hold a JSON object"
    return data, None


def read_text(path: Path, notes: list[str]) -> str | None:
    try:
        if path.stat().st_size > _MAX_TEMPLATE_BYTES:
            notes.append(f"{path.name} is too large to read")
            return None
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.debug("%s vanished while reading", path)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read chat template %s: %s", path, exc)
        notes.append(f"{path.name} could not be read as UTF-8 text")
        return None


def templates_from_dir(model_dir: Path, notes: list[str]) -> list[str]:
    """chat_template.jinja, other top-level *.jinja, additional_chat_templates/, .json."""
    templates: list[str] = []
    paths = [*sorted(model_dir.glob("*.jinja")),
             *sorted(model_dir.glob("additional_chat_templates/*.jinja"))]
    for path in paths:
        text = read_text(path, notes)
        if text and text.strip():
            templates.append(text)
    data, problem = load_json(model_dir / "chat_template.json", MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    if data is not None:
        templates.extend(templates_from_tokenizer_config(data))
    return templates


def list_files(model_dir: Path, notes: list[str]) -> dict[str, int | None]:
    """Top-level files and sizes (symlinks followed; None when a link is broken)."""
    files: dict[str, int | None] = {}
    try:
        entries = list(os.scandir(model_dir))
    except OSError as exc:
        log.warning("cannot list %s: %s", model_dir, exc)
        notes.append(f"the model folder could not be listed ({exc.strerror or exc})")
        return files
    for entry in entries:
        try:
            if entry.is_dir():
                continue
            files[entry.name] = entry.stat().st_size
        except OSError as exc:
            log.warning("cannot stat %s: %s", entry.path, exc)
            files[entry.name] = None
    return files


def _weight_files(names: Iterable[str], notes: list[str]) -> list[str]:
    """Top-level *.safetensors; Mistral's duplicate consolidated.safetensors is dropped."""
    weights = [n for n in names if n.endswith(".safetensors") and "/" not in n]
    hf = [n for n in weights if not n.startswith("consolidated")]
    if hf and len(hf) < len(weights):
        notes.append("consolidated*.safetensors (a duplicate Mistral-format copy) not counted")
        return hf
    return weights


def remote_weights_bytes(files: Mapping[str, int | None], notes: list[str]) -> int | None:
    """Sum of the weight files' sizes; None when there are none or a size is unknown."""
    sizes = [files[n] for n in _weight_files(files, notes)]
    if not sizes or any(s is None for s in sizes):
        return None
    return sum(s for s in sizes if s is not None)


def local_weights_bytes(
    model_dir: Path, files: Mapping[str, int | None], notes: list[str]
) -> int | None:
    """Sum of the weight files; None if a shard named by the index or a link is missing."""
    names = _weight_files(files, notes)
    broken = [n for n in names if files[n] is None]
    index, problem = load_json(model_dir / "model.safetensors.index.json", MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    expected = {v for v in as_mapping(as_mapping(index).get("weight_map")).values() if isinstance(v, str)}
    missing = sorted((expected - set(files)) | set(broken))
    if missing:
        log.warning("model %s lacks weight files: %s", model_dir, ", ".join(missing))
        notes.append(f"{len(missing)} weight file(s) missing (incomplete download?): "
                     f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        return None
    if not names:
        return None
    return sum(files[n] or 0 for n in names)


def name_from_path(model_dir: Path) -> str:
    """org/name from an HF cache snapshot path, else the folder name."""
    parts = model_dir.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return model_dir.name

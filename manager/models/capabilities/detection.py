"""Evidence to `Capabilities`: a local folder (`detect`) or hub metadata (`from_files`)."""

from __future__ import annotations

import logging
from collections import ChainMap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from manager.models.capabilities.config import (
    CONTEXT_KEYS,
    FAMILY_DEFAULTS,
    architecture_of,
    dtype_of,
    media_of,
    quantization_of,
    rope_note,
    text_config,
)
from manager.models.capabilities.estimates import (
    estimate_params,
    kv_bytes_per_token,
    params_from_weights,
)
from manager.models.capabilities.files import (
    MAX_JSON_BYTES,
    MAX_TOKENIZER_JSON_BYTES,
    list_files,
    load_json,
    local_weights_bytes,
    name_from_path,
    remote_weights_bytes,
    templates_from_dir,
)
from manager.models.capabilities.names import guess_from_name
from manager.models.capabilities.result import Capabilities
from manager.models.capabilities.templates import (
    has_thinking,
    has_tool_use,
    is_markup,
    markup_tokens_from_tokenizer_config,
    markup_tokens_from_tokenizer_json,
    templates_from_tokenizer_config,
)
from manager.models.capabilities.values import dedupe, first_int, nonempty_str

log = logging.getLogger(__name__)


def detect(model_dir: Path, tags: Sequence[str] = (), *, repo_id: str = "") -> Capabilities:
    """Capabilities of a local model folder. Never raises on bad files: notes say why.

    Reads config.json, tokenizer_config.json, chat_template.jinja/.json, tokenizer.json
    (added tokens and markup in the vocabulary), added_tokens.json and the sizes of
    the *.safetensors files (symlinks of the HF cache are followed). `repo_id` names
    the model for guesses; by default it comes from an HF cache path
    (models--org--name/snapshots/sha) or the folder name.
    """
    model_dir = Path(model_dir)
    notes: list[str] = []
    name = repo_id or name_from_path(model_dir)
    if not model_dir.is_dir():
        log.warning("model folder %s does not exist or is not a folder", model_dir)
        notes.append(f"folder {model_dir} not found; badges are guessed from its name")
        return _build(None, None, [], set(), tags, {}, None, name, notes)

    config, problem = load_json(model_dir / "config.json", MAX_JSON_BYTES)
    if problem:
        notes.append(f"{problem}; badges are guessed from the name")
    elif config is None:
        notes.append("config.json not found; badges are guessed from the name")

    tok_config, problem = load_json(model_dir / "tokenizer_config.json", MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    templates = templates_from_tokenizer_config(tok_config)
    templates += templates_from_dir(model_dir, notes)

    vocab = set(markup_tokens_from_tokenizer_config(tok_config))
    tokenizer_json, problem = load_json(model_dir / "tokenizer.json", MAX_TOKENIZER_JSON_BYTES)
    if problem:
        notes.append(problem)
    vocab.update(markup_tokens_from_tokenizer_json(tokenizer_json))
    added, problem = load_json(model_dir / "added_tokens.json", MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    if added:
        vocab.update(t for t in added if is_markup(t))

    files = list_files(model_dir, notes)
    weights = local_weights_bytes(model_dir, files, notes)
    return _build(config, tok_config, templates, vocab, tags, files, weights, name, notes)


def from_files(
    config: dict | None,
    tokenizer_config: dict | None,
    tags: Sequence[str] = (),
    files: Mapping[str, int] | Sequence[str] = (),
    *,
    repo_id: str = "",
    vocab_tokens: Iterable[str] = (),
    chat_template: str | None = None,
) -> Capabilities:
    """Capabilities of a remote model from its parsed config files and hub metadata.

    `files` maps file names (relative to the repo) to sizes in bytes, or lists names
    only (then weights_bytes is None). `vocab_tokens` are tokens known from the
    tokenizer (e.g. added tokens); `chat_template` is the text of a separate
    chat_template.jinja when the caller fetched it. With `config` None the result is
    guessed from `repo_id` and `tags`.
    """
    notes: list[str] = []
    if config is not None and not isinstance(config, Mapping):
        notes.append("config.json does not hold a JSON object; badges are guessed from the name")
        config = None
    elif config is None:
        notes.append("config.json not available; badges are guessed from the name and tags")
    if tokenizer_config is not None and not isinstance(tokenizer_config, Mapping):
        notes.append("tokenizer_config.json does not hold a JSON object")
        tokenizer_config = None
    templates = templates_from_tokenizer_config(tokenizer_config)
    if isinstance(chat_template, str) and chat_template:
        templates.append(chat_template)
    vocab = {t for t in vocab_tokens if isinstance(t, str)}
    vocab.update(markup_tokens_from_tokenizer_config(tokenizer_config))
    if isinstance(files, str):
        files = (files,)
    if isinstance(files, Mapping):
        sizes: dict[str, int | None] = {
            str(k): (v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None)
            for k, v in files.items()
        }
    else:
        sizes = {str(k): None for k in files}
    weights = remote_weights_bytes(sizes, notes)
    return _build(config, tokenizer_config, templates, vocab, tags, sizes, weights, repo_id, notes)



# --- the one place where evidence becomes Capabilities ------------------------------


def _build(
    config: Mapping[str, Any] | None,
    tok_config: Mapping[str, Any] | None,
    templates: list[str],
    vocab: set[str],
    tags: Sequence[str],
    files: Mapping[str, int | None],
    weights_bytes: int | None,
    name: str,
    notes: list[str],
) -> Capabilities:
    tag_set = {t.strip().lower() for t in tags if isinstance(t, str)}
    tool_use = has_tool_use(tok_config, templates, vocab, tag_set)
    thinking = has_thinking(templates, vocab, tag_set)
    video_files = "video_preprocessor_config.json" in files

    if config is None:
        guess = guess_from_name(name, tag_set)
        bits, group, method, dtype = guess.bits, guess.group_size, guess.method, guess.dtype
        params = params_from_weights(weights_bytes, bits, group, method, dtype, notes)
        if params is None and guess.params is not None:
            params = guess.params
            notes.append("parameter count read from the model name")
        return Capabilities(
            multimodal=guess.multimodal or video_files,
            video=guess.video or video_files,
            quant_bits=bits,
            quant_group_size=group,
            quant_method=method,
            dtype=dtype,
            parameter_count=params,
            weights_bytes=weights_bytes,
            tool_use=tool_use or guess.tool_use,
            thinking=thinking or guess.thinking,
            guessed=True,
            notes=dedupe(notes),
        )

    text = text_config(config)
    text_type = nonempty_str(text.get("model_type")) or nonempty_str(config.get("model_type")) or ""
    top_type = nonempty_str(config.get("model_type")) or ""
    defaults = FAMILY_DEFAULTS.get(text_type) or FAMILY_DEFAULTS.get(top_type) or {}
    chain: ChainMap[str, Any] = ChainMap(dict(text), dict(config), defaults)

    bits, group, method = quantization_of(config, text, notes)
    quantized = bits is not None or method is not None
    dtype = None if quantized else dtype_of(config, text)
    context = first_int(chain, CONTEXT_KEYS)
    rope_note(chain, context, notes)
    params = estimate_params(chain, config, text_type or top_type)
    if params is None:
        params = params_from_weights(weights_bytes, bits, group, method, dtype, notes)
    kv = kv_bytes_per_token(chain, dtype, text_type or top_type, notes)
    multimodal, video = media_of(config, top_type)
    return Capabilities(
        architecture=architecture_of(config),
        context_length=context,
        vocab_size=first_int(chain, ("vocab_size",)),
        multimodal=multimodal or video_files,
        video=video or video_files,
        quant_bits=bits,
        quant_group_size=group,
        quant_method=method,
        dtype=dtype,
        parameter_count=params,
        weights_bytes=weights_bytes,
        kv_bytes_per_token=kv,
        tool_use=tool_use,
        thinking=thinking,
        guessed=False,
        notes=dedupe(notes),
    )

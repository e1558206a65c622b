"""What a model can do, read from its files: pure functions, no gradio, no mlx.

`detect(model_dir)` reads a local model folder; `from_files(config, tokenizer_config,
...)` does the same for a remote model from what the hub tells (file names and sizes,
tags). Both return a frozen `Capabilities`. `fit()` then says whether the model fits
in the memory MLX can use (`memory_budget_bytes()`).

Evidence, strongest first:
- config.json decides architecture, context, vision/video, quantization, sizes.
  Without a readable config.json everything is guessed from the repo/folder name and
  the HF tags (`guessed=True`), and a note says why.
- A chat template decides tool use (it renders `tools`) and thinking (it has
  `<think>`-style markup or an `enable_thinking` / `reasoning_effort` switch). A
  template that ignores `tools` cannot show tool definitions to the model, so tool
  markup inherited in the vocabulary does not count then (DeepSeek-R1 distills keep
  Qwen's `<tool_call>` token, Qwen3 "Instruct-2507" keeps `<think>`). Only when no
  template is known does markup in the vocabulary decide.
- `tool_parser_type` in tokenizer_config.json and HF tags (tool-use, reasoning, ...)
  always count.

Unknown figures are None (shown "n/a"), never 0.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import platform
import re
from collections import ChainMap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import psutil

log = logging.getLogger(__name__)

# --- memory fit policy -------------------------------------------------------------
#: Context assumed by `fit()` when the caller gives none: the model's own context
#: length, capped here. 8K tokens is a long chat; sizing every model for its full
#: 128K (or 10M) window would mark nearly everything "too big".
DEFAULT_FIT_CONTEXT_TOKENS = 8192
#: Weights are multiplied by this (percent) for activations, buffers and the runtime.
WEIGHTS_OVERHEAD_PERCENT = 105
#: Amber band: needed above this percent of the budget (and up to 100 %) is TIGHT;
#: at or below it is FITS; above 100 % is TOO_BIG.
TIGHT_ABOVE_PERCENT = 80
#: Share of total RAM that MLX can wire on Apple Silicon (unified memory): macOS's
#: recommended GPU working set is about three quarters of RAM.
APPLE_SILICON_BUDGET_PERCENT = 75

# --- file reading limits -----------------------------------------------------------
_MAX_JSON_BYTES = 64 * 1024 * 1024  # config / tokenizer_config / chat_template.json
_MAX_TOKENIZER_JSON_BYTES = 256 * 1024 * 1024  # tokenizer.json of 256K-token vocabularies
_MAX_TEMPLATE_BYTES = 4 * 1024 * 1024
_MAX_MARKUP_TOKEN_CHARS = 64

# --- vocabulary of config files ----------------------------------------------------
_NESTED_TEXT_KEYS = ("text_config", "llm_config", "language_config", "text_model")
_CONTEXT_KEYS = (
    "max_position_embeddings",
    "max_sequence_length",
    "max_seq_len",
    "seq_length",
    "n_positions",
    "n_ctx",
)
_HIDDEN_KEYS = ("hidden_size", "d_model", "n_embd", "dim", "model_dim")
_LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers")
_HEAD_KEYS = ("num_attention_heads", "n_head", "n_heads", "num_heads")
_KV_HEAD_KEYS = (
    "num_key_value_heads",
    "num_kv_heads",
    "n_kv_heads",
    "n_head_kv",
    "multi_query_group_num",
)
_HEAD_DIM_KEYS = ("head_dim", "kv_channels", "attention_head_dim")
_VOCAB_KEYS = ("vocab_size", "padded_vocab_size", "n_vocab")
_INTERMEDIATE_KEYS = ("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim")
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_DTYPES = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
}
_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

#: Families whose MLP is up -> act -> down (two matrices); everything else is gated.
_NON_GATED_MLP = frozenset(
    {"gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "falcon", "opt", "bloom",
     "phi", "starcoder2", "mpt", "codegen", "bert"}
)
#: Families whose configs tie the output head to the embeddings unless they say otherwise.
_TIED_BY_DEFAULT = frozenset({"gpt2", "gpt_neo", "gpt_bigcode", "opt", "bloom", "falcon", "mpt"})
#: Defaults of configuration classes for fields that real config.json files omit
#: (Gemma 3's text_config states only what differs from these).
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {
        "vocab_size": 262208,
        "head_dim": 256,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
        "hidden_activation": "gelu_pytorch_tanh",
    },
}
_MULTIMODAL_TYPES = frozenset(
    {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_5_omni", "qwen3_omni_moe",
     "llava", "llava_next", "llava_onevision", "llava_next_video", "llava_qwen2",
     "idefics2", "idefics3", "smolvlm", "paligemma", "gemma3", "gemma3n", "mistral3",
     "pixtral", "llama4", "mllama", "internvl_chat", "internvl", "phi3_v", "phi4mm",
     "molmo", "kimi_vl", "glm4v", "glm4v_moe", "aya_vision", "florence2",
     "deepseek_vl_v2", "lfm2_vl", "multi_modality"}
)
_VIDEO_TYPES = frozenset(
    {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen2_5_omni", "qwen3_omni_moe",
     "llava_onevision", "llava_next_video", "glm4v", "glm4v_moe"}
)
_IMAGE_TOKEN_KEYS = ("image_token_id", "image_token_index", "image_token", "img_context_token_id")
_VIDEO_TOKEN_KEYS = ("video_token_id", "video_token_index", "video_token")
#: Microscaling formats: a label names the format, the scale is 8 bits per block.
_MICROSCALING = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}

# --- tool and thinking markup --------------------------------------------------------
_TOOL_MARKUP = (
    "<tool_call>",
    "[TOOL_CALLS]",
    "<|python_tag|>",
    "<|tool_call_begin|>",
    "<|tool_calls_section_begin|>",
    "<|tool_call_start|>",
    "<|tool_call|>",
    "<|tool_call>",
    "<minimax:tool_call>",
    "<start_function_call>",
    "<longcat_tool_call>",
    "<function_call>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁call▁begin｜>",
)
_THINK_PAIRS = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("[THINK]", "[/THINK]"),
    ("<seed:think>", "</seed:think>"),
    ("<longcat_think>", "</longcat_think>"),
    ("<|think:start|>", "<|think:end|>"),
    ("<|channel>", "<channel|>"),
)
_JINJA_CODE = re.compile(r"\{[{%](.*?)[%}]\}", re.S)
_TOOLS_VARIABLE = re.compile(r"(?<!\w)(?:custom_|builtin_)?tools(?!\w)")
_THINK_SWITCH = re.compile(
    r"(?<!\w)(?:enable_thinking|reasoning_effort|thinking_budget|thinking)(?!\w)"
)

# --- name and tag guesses --------------------------------------------------------------
_TOOL_TAGS = frozenset(
    {"tool-use", "tool_use", "tools", "tool-calling", "tool_calling", "function-calling",
     "function_calling", "function calling", "functions"}
)
_THINK_TAGS = frozenset({"reasoning", "thinking", "reasoner", "reasoning-model"})
_MULTIMODAL_TAGS = frozenset(
    {"image-text-to-text", "video-text-to-text", "visual-question-answering", "image-to-text",
     "any-to-any", "vision", "multimodal", "vlm"}
)
_VIDEO_TAGS = frozenset({"video-text-to-text", "video"})
_NAME_MULTIMODAL = re.compile(
    r"(?<![a-z0-9])(?:vl|vlm|vision|omni|multimodal)(?![a-z0-9])"
    r"|llava|pixtral|internvl|smolvlm|paligemma|idefics|molmo|florence"
)
_NAME_VIDEO = re.compile(r"(?<![a-z0-9])video(?![a-z0-9])|qwen[\d.]*-?vl|llava-onevision")
_NAME_THINKING = re.compile(
    r"(?<![a-z0-9])(?:r1|qwq|thinking|think|reasoning|reasoner|magistral)(?![a-z0-9])"
)
_NAME_BITS = re.compile(r"(?<![a-z0-9])([2-8])[-_ ]?bits?(?![a-z0-9])")
_NAME_DTYPE = re.compile(r"(?<![a-z0-9])(bf16|fp16|fp32|bfloat16|float16|float32)(?![a-z0-9])")
_NAME_MOE_SIZE = re.compile(r"(?<![\w.])(\d+)x(\d+(?:\.\d+)?)([bm])(?![a-z0-9])")
_NAME_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])")


class FitLevel(enum.Enum):
    """How a model fits in memory; `color` is the badge colour."""

    FITS = "fits"
    TIGHT = "tight"
    TOO_BIG = "too_big"
    UNKNOWN = "unknown"

    @property
    def color(self) -> str:
        return {"fits": "green", "tight": "amber", "too_big": "red"}.get(self.value, "grey")


@dataclass(frozen=True)
class Capabilities:
    """What a model can do and how big it is. None means unknown."""

    architecture: str | None = None
    context_length: int | None = None
    multimodal: bool = False
    video: bool = False
    quant_bits: int | None = None
    quant_group_size: int | None = None
    #: "affine" (mlx), "mxfp4", "gptq", "awq", "bitsandbytes", "fp8", ... or None.
    quant_method: str | None = None
    dtype: str | None = None
    parameter_count: int | None = None
    weights_bytes: int | None = None
    kv_bytes_per_token: int | None = None
    tool_use: bool = False
    thinking: bool = False
    guessed: bool = False
    notes: tuple[str, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.quant_bits is not None or self.quant_method is not None

    @property
    def quantization_label(self) -> str:
        """"4-bit", "8-bit", "MXFP4", "bf16", "fp16", "fp32", or "n/a"."""
        if self.quant_method in _MICROSCALING:
            return self.quant_method.upper()
        if self.quant_bits is not None:
            return f"{self.quant_bits}-bit"
        if self.quant_method:
            return self.quant_method.upper()
        return self.dtype or "n/a"


@dataclass(frozen=True)
class Fit:
    """Whether a model fits in the memory budget. needed_bytes is None when unknown."""

    level: FitLevel
    needed_bytes: int | None
    budget_bytes: int
    weights_bytes: int | None = None
    kv_bytes: int | None = None
    context_tokens: int | None = None

    @property
    def tooltip(self) -> str:
        budget = human_bytes(self.budget_bytes) if self.budget_bytes > 0 else "n/a"
        ctx = f"{self.context_tokens:,} tokens" if self.context_tokens is not None else "n/a"
        if self.weights_bytes is None:
            return f"Model size unknown: cannot tell whether it fits in {budget}."
        weights = human_bytes(self.weights_bytes)
        if self.budget_bytes <= 0:
            return f"Weights {weights}; memory budget unknown."
        if self.kv_bytes is None:
            if self.level is FitLevel.TOO_BIG:
                return (f"Needs more than {human_bytes(self.needed_bytes)} (weights {weights}, "
                        f"KV cache unknown): too big for {budget}.")
            return (f"Weights {weights}; KV cache size for {ctx} unknown: cannot tell "
                    f"whether it fits in {budget}.")
        verdict = {
            FitLevel.FITS: "fits",
            FitLevel.TIGHT: "tight fit",
            FitLevel.TOO_BIG: "too big",
        }.get(self.level, "unknown")
        return (f"Needs about {human_bytes(self.needed_bytes)} (weights {weights} + "
                f"{WEIGHTS_OVERHEAD_PERCENT - 100} % overhead, KV cache "
                f"{human_bytes(self.kv_bytes)} at {ctx}) of {budget} usable: {verdict}.")


# --- public functions ----------------------------------------------------------------


def human_bytes(n: int | None) -> str:
    """1024-based sizes labelled B/KB/MB/GB/TB (as macOS shows memory); "n/a" for None."""
    if n is None:
        return "n/a"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def is_apple_silicon() -> bool:
    """True on macOS on an arm64 Mac, where MLX uses unified memory and Metal."""
    return platform.system() == "Darwin" and platform.machine().startswith("arm64")


def memory_budget_bytes(
    total: int | None = None,
    available: int | None = None,
    *,
    apple_silicon: bool | None = None,
) -> int:
    """Bytes a model may use: 75 % of total RAM on Apple Silicon, available RAM elsewhere.

    On Apple Silicon the GPU shares RAM with the system and MLX may wire about three
    quarters of it, whatever other apps hold now (macOS pages them out). Elsewhere
    MLX runs on the CPU (or CUDA) and only the free RAM is safe. Missing figures are
    read from psutil, the platform from `platform`.
    """
    if apple_silicon is None:
        apple_silicon = is_apple_silicon()
    if apple_silicon:
        if total is None:
            total = int(psutil.virtual_memory().total)
        return max(0, total) * APPLE_SILICON_BUDGET_PERCENT // 100
    if available is None:
        available = int(psutil.virtual_memory().available)
    return max(0, available)


def fit(caps: Capabilities, context_tokens: int | None, budget_bytes: int) -> Fit:
    """Does the model fit? needed = weights x 1.05 + KV cache at `context_tokens`.

    `context_tokens` None means the model's context length capped at
    DEFAULT_FIT_CONTEXT_TOKENS. Levels: needed <= 80 % of the budget FITS, up to
    100 % TIGHT, above TOO_BIG; unknown weights, KV size or budget give UNKNOWN
    (except when the weights alone are already too big).
    """
    if context_tokens is None:
        known = caps.context_length
        ctx = min(known, DEFAULT_FIT_CONTEXT_TOKENS) if known else DEFAULT_FIT_CONTEXT_TOKENS
    else:
        ctx = max(0, context_tokens)
    weights = caps.weights_bytes
    if weights is None or budget_bytes <= 0:
        return Fit(FitLevel.UNKNOWN, None, budget_bytes, weights, None, ctx)
    weights_needed = -(-weights * WEIGHTS_OVERHEAD_PERCENT // 100)  # ceiling
    if ctx == 0:
        kv: int | None = 0
    elif caps.kv_bytes_per_token is None:
        kv = None
    else:
        kv = caps.kv_bytes_per_token * ctx
    if kv is None:
        if weights_needed > budget_bytes:
            return Fit(FitLevel.TOO_BIG, weights_needed, budget_bytes, weights, None, ctx)
        return Fit(FitLevel.UNKNOWN, None, budget_bytes, weights, None, ctx)
    needed = weights_needed + kv
    if needed * 100 <= budget_bytes * TIGHT_ABOVE_PERCENT:
        level = FitLevel.FITS
    elif needed <= budget_bytes:
        level = FitLevel.TIGHT
    else:
        level = FitLevel.TOO_BIG
    return Fit(level, needed, budget_bytes, weights, kv, ctx)


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
    name = repo_id or _name_from_path(model_dir)
    if not model_dir.is_dir():
        log.warning("model folder %s does not exist or is not a folder", model_dir)
        notes.append(f"folder {model_dir} not found; badges are guessed from its name")
        return _build(None, None, [], set(), tags, {}, None, name, notes)

    config, problem = _load_json(model_dir / "config.json", _MAX_JSON_BYTES)
    if problem:
        notes.append(f"{problem}; badges are guessed from the name")
    elif config is None:
        notes.append("config.json not found; badges are guessed from the name")

    tok_config, problem = _load_json(model_dir / "tokenizer_config.json", _MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    templates = _templates_from_tokenizer_config(tok_config)
    templates += _templates_from_dir(model_dir, notes)

    vocab = set(_markup_tokens_from_tokenizer_config(tok_config))
    tokenizer_json, problem = _load_json(model_dir / "tokenizer.json", _MAX_TOKENIZER_JSON_BYTES)
    if problem:
        notes.append(problem)
    vocab.update(_markup_tokens_from_tokenizer_json(tokenizer_json))
    added, problem = _load_json(model_dir / "added_tokens.json", _MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    if added:
        vocab.update(t for t in added if _is_markup(t))

    files = _list_files(model_dir, notes)
    weights = _local_weights_bytes(model_dir, files, notes)
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
    templates = _templates_from_tokenizer_config(tokenizer_config)
    if isinstance(chat_template, str) and chat_template:
        templates.append(chat_template)
    vocab = {t for t in vocab_tokens if isinstance(t, str)}
    vocab.update(_markup_tokens_from_tokenizer_config(tokenizer_config))
    if isinstance(files, str):
        files = (files,)
    if isinstance(files, Mapping):
        sizes: dict[str, int | None] = {
            str(k): (v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None)
            for k, v in files.items()
        }
    else:
        sizes = {str(k): None for k in files}
    weights = _remote_weights_bytes(sizes, notes)
    return _build(config, tokenizer_config, templates, vocab, tags, sizes, weights, repo_id, notes)


# --- the one place where evidence becomes Capabilities ----------------------------------


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
    tool_use = _tool_use(tok_config, templates, vocab, tag_set)
    thinking = _thinking(templates, vocab, tag_set)
    video_files = "video_preprocessor_config.json" in files

    if config is None:
        guess = _guess_from_name(name, tag_set)
        bits, group, method, dtype = guess.bits, guess.group_size, guess.method, guess.dtype
        params = _params_from_weights(weights_bytes, bits, group, method, dtype, notes)
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
            notes=_dedupe(notes),
        )

    text = _text_config(config)
    text_type = _str(text.get("model_type")) or _str(config.get("model_type")) or ""
    top_type = _str(config.get("model_type")) or ""
    defaults = _FAMILY_DEFAULTS.get(text_type) or _FAMILY_DEFAULTS.get(top_type) or {}
    chain: ChainMap[str, Any] = ChainMap(dict(text), dict(config), defaults)

    bits, group, method = _quantization(config, text, notes)
    quantized = bits is not None or method is not None
    dtype = None if quantized else _dtype(config, text)
    context = _first_int(chain, _CONTEXT_KEYS)
    _rope_note(chain, context, notes)
    params = _estimate_params(chain, config, text_type or top_type)
    if params is None:
        params = _params_from_weights(weights_bytes, bits, group, method, dtype, notes)
    kv = _kv_bytes_per_token(chain, dtype, text_type or top_type, notes)
    multimodal, video = _media(config, top_type)
    return Capabilities(
        architecture=_architecture(config),
        context_length=context,
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
        notes=_dedupe(notes),
    )


# --- small typed readers of untrusted JSON ---------------------------------------------


def _int(value: Any) -> int | None:
    """A positive int from JSON (integral floats accepted), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value > 0:
        return int(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _first_int(chain: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    for key in keys:
        value = _int(chain.get(key))
        if value is not None:
            return value
    return None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# --- config.json --------------------------------------------------------------------------


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in _NESTED_TEXT_KEYS:
        nested = config.get(key)
        if isinstance(nested, Mapping) and nested:
            return nested
    thinker = _dict(config.get("thinker_config"))  # Qwen Omni
    nested = thinker.get("text_config")
    return nested if isinstance(nested, Mapping) else {}


def _architecture(config: Mapping[str, Any]) -> str | None:
    model_type = _str(config.get("model_type"))
    if model_type:
        return model_type
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and _str(archs[0]):
        return archs[0]
    return None


def _dtype(config: Mapping[str, Any], text: Mapping[str, Any]) -> str | None:
    for source in (config, text):
        for key in ("torch_dtype", "dtype"):
            raw = _str(source.get(key))
            if raw:
                found = _DTYPES.get(raw.lower().removeprefix("torch."))
                if found:
                    return found
    return None


def _quantization(
    config: Mapping[str, Any], text: Mapping[str, Any], notes: list[str]
) -> tuple[int | None, int | None, str | None]:
    """(bits, group_size, method) from mlx `quantization` or HF `quantization_config`."""
    for source in (config, text):
        mlx = source.get("quantization")
        if isinstance(mlx, Mapping) and mlx:
            return _mlx_quantization(mlx, notes)
    for source in (config, text):
        hf = source.get("quantization_config")
        if isinstance(hf, Mapping) and hf:
            return _hf_quantization(hf)
    return None, None, None


def _mlx_quantization(
    quant: Mapping[str, Any], notes: list[str]
) -> tuple[int | None, int | None, str | None]:
    bits = _int(quant.get("bits"))
    group = _int(quant.get("group_size"))
    mode = (_str(quant.get("mode")) or "affine").lower()
    # Per-layer overrides look like {"model.layers.0.mlp.down_proj": {"bits": 8, ...}};
    # a layer mapped to false is left unquantized.
    layer_bits = [
        b for b in (_int(v.get("bits")) for v in quant.values() if isinstance(v, Mapping))
        if b is not None
    ]
    if bits is None and mode in _MICROSCALING:
        bits, default_group = _MICROSCALING[mode]
        group = group or default_group
    if bits is None and layer_bits:
        bits = max(set(layer_bits), key=layer_bits.count)
    distinct = sorted(set(layer_bits) | ({bits} if bits else set()))
    if len(distinct) > 1:
        notes.append(f"mixed quantization: {'/'.join(map(str, distinct))} bits by layer")
    return bits, group, mode


def _hf_quantization(quant: Mapping[str, Any]) -> tuple[int | None, int | None, str | None]:
    method = (_str(quant.get("quant_method")) or "").lower() or None
    bits = _int(quant.get("bits")) or _int(quant.get("w_bit")) or _int(quant.get("num_bits"))
    group = _int(quant.get("group_size")) or _int(quant.get("q_group_size"))
    if method in _MICROSCALING:
        default_bits, default_group = _MICROSCALING[method]
        return bits or default_bits, group or default_group, method
    if quant.get("load_in_4bit") is True:
        return 4, _int(quant.get("bnb_4bit_blocksize")) or 64, method or "bitsandbytes"
    if quant.get("load_in_8bit") is True:
        return 8, None, method or "bitsandbytes"
    if method == "fp8" or _str(quant.get("fmt")) in ("e4m3", "e5m2"):
        return bits or 8, group, method or "fp8"
    if method == "compressed-tensors" and bits is None:
        for group_cfg in _dict(quant.get("config_groups")).values():
            weights = _dict(_dict(group_cfg).get("weights"))
            bits = _int(weights.get("num_bits"))
            group = _int(weights.get("group_size")) or group
            if bits is not None:
                break
    if bits is None and method is None:
        return None, None, None
    return bits, group, method


def _rope_note(chain: Mapping[str, Any], context: int | None, notes: list[str]) -> None:
    """Context lengths are taken as stated; say so when rope scaling could stretch them."""
    rope = chain.get("rope_scaling") or chain.get("rope_parameters")
    if not isinstance(rope, Mapping) or context is None:
        return
    factor = _number(rope.get("factor"))
    original = _int(rope.get("original_max_position_embeddings"))
    if factor and factor > 1 and original and context <= original:
        kind = _str(rope.get("rope_type")) or _str(rope.get("type")) or "rope"
        notes.append(
            f"{kind} scaling x{factor:g} may extend the context to {int(context * factor):,} tokens"
        )


def _media(config: Mapping[str, Any], top_type: str) -> tuple[bool, bool]:
    """(multimodal, video): a vision tower, image/video token ids, or a known VL family."""
    video = top_type in _VIDEO_TYPES or any(
        config.get(k) is not None for k in _VIDEO_TOKEN_KEYS
    ) or isinstance(config.get("video_config"), Mapping)
    vision = config.get("vision_config")
    multimodal = (
        (isinstance(vision, Mapping) and bool(vision))
        or any(config.get(k) is not None for k in _IMAGE_TOKEN_KEYS)
        or top_type in _MULTIMODAL_TYPES
        or video
    )
    return bool(multimodal), bool(video)


# --- size estimates ------------------------------------------------------------------------


def _estimate_params(
    chain: Mapping[str, Any], config: Mapping[str, Any], model_type: str
) -> int | None:
    """Parameters from the config: embeddings + layers + lm_head (+ vision tower)."""
    hidden = _first_int(chain, _HIDDEN_KEYS)
    layers = _first_int(chain, _LAYER_KEYS)
    vocab = _first_int(chain, _VOCAB_KEYS)
    heads = _first_int(chain, _HEAD_KEYS)
    if hidden is None or layers is None or vocab is None or heads is None:
        return None
    attention = _attention_params(chain, hidden, heads)
    mlp = _mlp_params(chain, hidden, layers, model_type)
    if mlp is None:
        return None
    tied = chain.get("tie_word_embeddings")
    if not isinstance(tied, bool):
        tied = model_type.startswith("gemma") or model_type in _TIED_BY_DEFAULT
    embeddings = vocab * hidden * (1 if tied else 2)
    norms = layers * 2 * hidden + hidden
    return embeddings + layers * attention + mlp + norms + _vision_params(config, hidden)


def _attention_params(chain: Mapping[str, Any], hidden: int, heads: int) -> int:
    kv_rank = _int(chain.get("kv_lora_rank"))
    if kv_rank is not None:  # multi-head latent attention (DeepSeek V2/V3, Kimi K2)
        rope = _int(chain.get("qk_rope_head_dim")) or 64
        nope = _int(chain.get("qk_nope_head_dim")) or 128
        v_dim = _int(chain.get("v_head_dim")) or 128
        q_rank = _int(chain.get("q_lora_rank"))
        q_width = heads * (nope + rope)
        q = hidden * q_rank + q_rank * q_width if q_rank else hidden * q_width
        kv = hidden * (kv_rank + rope) + kv_rank * heads * (nope + v_dim)
        return q + kv + heads * v_dim * hidden
    kv_heads = _kv_heads(chain, heads)
    head_dim = _first_int(chain, _HEAD_DIM_KEYS) or hidden // heads
    return 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim


def _kv_heads(chain: Mapping[str, Any], heads: int) -> int:
    kv_heads = _first_int(chain, _KV_HEAD_KEYS)
    if kv_heads is None and chain.get("multi_query") is True:
        return 1
    return kv_heads or heads


def _mlp_params(
    chain: Mapping[str, Any], hidden: int, layers: int, model_type: str
) -> int | None:
    """All layers' MLPs; MoE layers count every expert, shared experts and the router."""
    gated = model_type not in _NON_GATED_MLP
    matrices = 3 if gated else 2
    dense_inter = _first_int(chain, _INTERMEDIATE_KEYS)
    if dense_inter is None and not gated:
        dense_inter = 4 * hidden
    experts = _first_int(chain, _EXPERT_COUNT_KEYS)
    if experts is None or experts < 2:
        return None if dense_inter is None else layers * matrices * hidden * dense_inter
    expert_inter = _int(chain.get("moe_intermediate_size")) or dense_inter
    if expert_inter is None:
        return None
    shared_inter = 0
    n_shared = _int(chain.get("n_shared_experts")) or _int(chain.get("num_shared_experts"))
    if n_shared:
        shared_inter = n_shared * expert_inter
    elif _int(chain.get("shared_expert_intermediate_size")):
        shared_inter = int(chain["shared_expert_intermediate_size"])
    elif model_type.startswith("llama4"):
        shared_inter = dense_inter or expert_inter
    moe_layer = matrices * hidden * (experts * expert_inter + shared_inter) + hidden * experts
    n_moe = _moe_layer_count(chain, layers)
    dense_mlp_inter = _int(chain.get("intermediate_size_mlp")) or dense_inter or expert_inter
    dense_layer = matrices * hidden * dense_mlp_inter
    return n_moe * moe_layer + (layers - n_moe) * dense_layer


def _moe_layer_count(chain: Mapping[str, Any], layers: int) -> int:
    explicit = chain.get("moe_layers")
    if isinstance(explicit, list) and explicit:
        return min(layers, len(explicit))
    first_dense = chain.get("first_k_dense_replace")
    if isinstance(first_dense, int) and not isinstance(first_dense, bool):
        freq = _int(chain.get("moe_layer_freq")) or 1
        return sum(1 for i in range(layers) if i >= first_dense and i % freq == 0)
    step = _first_int(chain, ("decoder_sparse_step", "interleave_moe_layer_step")) or 1
    dense_only = chain.get("mlp_only_layers")
    dense_list = dense_only if isinstance(dense_only, list) else []
    dense_set = {i for i in dense_list if isinstance(i, int)}
    return sum(1 for i in range(layers) if i not in dense_set and (i + 1) % step == 0)


def _vision_params(config: Mapping[str, Any], text_hidden: int) -> int:
    """A rough vision tower: blocks of attention + MLP, plus a projector into the LLM."""
    vision = _dict(config.get("vision_config"))
    # embed_dim first: Qwen2-VL's vision hidden_size is the LLM width it projects to
    width = _first_int(vision, ("embed_dim", "hidden_size", "width"))
    depth = _first_int(vision, ("depth", "num_hidden_layers", "num_layers", "layers"))
    if width is None or depth is None:
        return 0
    inter = _int(vision.get("intermediate_size"))
    if inter is None:
        ratio = _number(vision.get("mlp_ratio")) or 4.0
        inter = int(width * ratio)
    act = (_str(vision.get("hidden_act")) or "").lower()
    matrices = 3 if act in ("silu", "swiglu", "swish") else 2
    return depth * (4 * width * width + matrices * width * inter) + width * text_hidden


def _kv_bytes_per_token(
    chain: Mapping[str, Any], dtype: str | None, model_type: str, notes: list[str]
) -> int | None:
    """layers x kv_heads x head_dim x 2 (K and V) x bytes; MLA caches its latent."""
    layers = _first_int(chain, _LAYER_KEYS)
    heads = _first_int(chain, _HEAD_KEYS)
    hidden = _first_int(chain, _HIDDEN_KEYS)
    if layers is None:
        return None
    width = _DTYPE_BYTES.get(dtype or "", 2)
    kv_rank = _int(chain.get("kv_lora_rank"))
    if kv_rank is not None:
        rope = _int(chain.get("qk_rope_head_dim")) or 64
        return layers * (kv_rank + rope) * width
    if heads is None:
        return None
    head_dim = _first_int(chain, _HEAD_DIM_KEYS) or (hidden // heads if hidden else None)
    if not head_dim:
        return None
    attention_layers = layers
    layer_types = chain.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        kinds = [str(t).lower() for t in layer_types]
        attention_layers = sum(1 for k in kinds if "attention" in k and "linear" not in k)
    elif _int(chain.get("full_attention_interval")):
        attention_layers = layers // int(chain["full_attention_interval"])
    windowed = (
        model_type in ("gemma2", "gemma3", "gemma3_text", "cohere2")
        or _int(chain.get("attention_chunk_size")) is not None
        or _int(chain.get("sliding_window_pattern")) is not None
        or (isinstance(layer_types, list) and any("sliding" in str(t) for t in layer_types))
    )
    if windowed:
        notes.append("sliding-window or chunked attention: the KV cache estimate is an "
                     "upper bound at long contexts")
    return attention_layers * _kv_heads(chain, heads) * head_dim * 2 * width


def _params_from_weights(
    weights_bytes: int | None,
    bits: int | None,
    group: int | None,
    method: str | None,
    dtype: str | None,
    notes: list[str],
) -> int | None:
    """Parameters from the safetensors size: bytes x 8 / bits per weight (with scales)."""
    if not weights_bytes:
        return None
    if bits is not None:
        # microscaling: one 8-bit scale per block; mlx affine: 16-bit scale + bias per group
        scales = 8 / (group or 32) if method in _MICROSCALING else 32 / (group or 64)
        per_weight = bits + scales
        notes.append("parameter count estimated from the weights size")
    elif dtype is not None:
        per_weight = 8 * _DTYPE_BYTES[dtype]
        notes.append("parameter count estimated from the weights size")
    else:
        per_weight = 16
        notes.append("parameter count estimated from the weights size, assuming 16-bit weights")
    return int(weights_bytes * 8 / per_weight)


# --- tool use and thinking -----------------------------------------------------------------


def _jinja_code(template: str) -> str:
    return "\n".join(m.group(1) for m in _JINJA_CODE.finditer(template))


def _tool_use(
    tok_config: Mapping[str, Any] | None,
    templates: list[str],
    vocab: set[str],
    tags: set[str],
) -> bool:
    if tags & _TOOL_TAGS:
        return True
    if tok_config is not None and _str(tok_config.get("tool_parser_type")):
        return True
    if templates:
        return any(_TOOLS_VARIABLE.search(_jinja_code(t)) for t in templates)
    return any(marker in vocab for marker in _TOOL_MARKUP)


def _thinking(templates: list[str], vocab: set[str], tags: set[str]) -> bool:
    if tags & _THINK_TAGS:
        return True
    if templates:
        for template in templates:
            if any(start in template or end in template for start, end in _THINK_PAIRS):
                return True
            if _THINK_SWITCH.search(_jinja_code(template)):
                return True
        return False
    return any(start in vocab and end in vocab for start, end in _THINK_PAIRS)


def _templates_from_tokenizer_config(tok_config: Mapping[str, Any] | None) -> list[str]:
    """chat_template is a string or a list of {"name", "template"} (named templates)."""
    if tok_config is None:
        return []
    raw = tok_config.get("chat_template")
    if isinstance(raw, str):
        return [raw] if raw.strip() else []
    if isinstance(raw, list):
        return [t["template"] for t in raw if isinstance(t, Mapping) and _str(t.get("template"))]
    return []


def _is_markup(token: Any) -> TypeGuard[str]:
    return (
        isinstance(token, str)
        and 2 < len(token) <= _MAX_MARKUP_TOKEN_CHARS
        and token[0] in "<["
    )


def _markup_tokens_from_tokenizer_config(tok_config: Mapping[str, Any] | None) -> list[str]:
    if tok_config is None:
        return []
    decoder = _dict(tok_config.get("added_tokens_decoder"))
    found = [_dict(v).get("content") for v in decoder.values()]
    extra = tok_config.get("additional_special_tokens")
    if isinstance(extra, list):
        found.extend(extra)
    return [t for t in found if _is_markup(t)]


def _markup_tokens_from_tokenizer_json(tokenizer: Mapping[str, Any] | None) -> list[str]:
    """Added tokens and markup-looking vocabulary entries (BPE dict or Unigram list)."""
    if tokenizer is None:
        return []
    found: list[Any] = []
    added = tokenizer.get("added_tokens")
    if isinstance(added, list):
        found.extend(_dict(t).get("content") for t in added)
    vocab = _dict(tokenizer.get("model")).get("vocab")
    if isinstance(vocab, Mapping):
        found.extend(vocab.keys())
    elif isinstance(vocab, list):
        found.extend(item[0] for item in vocab if isinstance(item, list) and item)
    return [t for t in found if _is_markup(t)]


# --- files -------------------------------------------------------------------------------


def _load_json(path: Path, max_bytes: int) -> tuple[Any, str | None]:
    """(object, None), (None, None) when the file is absent, or (None, problem note)."""
    label = path.name
    try:
        size = path.stat().st_size
        if size > max_bytes:
            log.warning("%s is %d bytes, over the %d limit; skipped", path, size, max_bytes)
            return None, f"{label} is too large to read ({human_bytes(size)})"
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


def _read_text(path: Path, notes: list[str]) -> str | None:
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


def _templates_from_dir(model_dir: Path, notes: list[str]) -> list[str]:
    """chat_template.jinja, other top-level *.jinja, additional_chat_templates/, .json."""
    templates: list[str] = []
    paths = [*sorted(model_dir.glob("*.jinja")),
             *sorted(model_dir.glob("additional_chat_templates/*.jinja"))]
    for path in paths:
        text = _read_text(path, notes)
        if text and text.strip():
            templates.append(text)
    data, problem = _load_json(model_dir / "chat_template.json", _MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    if data is not None:
        templates.extend(_templates_from_tokenizer_config(data))
    return templates


def _list_files(model_dir: Path, notes: list[str]) -> dict[str, int | None]:
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


def _remote_weights_bytes(files: Mapping[str, int | None], notes: list[str]) -> int | None:
    """Sum of the weight files' sizes; None when there are none or a size is unknown."""
    sizes = [files[n] for n in _weight_files(files, notes)]
    if not sizes or any(s is None for s in sizes):
        return None
    return sum(s for s in sizes if s is not None)


def _local_weights_bytes(
    model_dir: Path, files: Mapping[str, int | None], notes: list[str]
) -> int | None:
    """Sum of the weight files; None if a shard named by the index or a link is missing."""
    names = _weight_files(files, notes)
    broken = [n for n in names if files[n] is None]
    index, problem = _load_json(model_dir / "model.safetensors.index.json", _MAX_JSON_BYTES)
    if problem:
        notes.append(problem)
    expected = {v for v in _dict(_dict(index).get("weight_map")).values() if isinstance(v, str)}
    missing = sorted((expected - set(files)) | set(broken))
    if missing:
        log.warning("model %s lacks weight files: %s", model_dir, ", ".join(missing))
        notes.append(f"{len(missing)} weight file(s) missing (incomplete download?): "
                     f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        return None
    if not names:
        return None
    return sum(files[n] or 0 for n in names)


def _name_from_path(model_dir: Path) -> str:
    """org/name from an HF cache snapshot path, else the folder name."""
    parts = model_dir.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return model_dir.name


# --- guesses from a name and tags -----------------------------------------------------------


@dataclass(frozen=True)
class _Guess:
    multimodal: bool = False
    video: bool = False
    bits: int | None = None
    group_size: int | None = None
    method: str | None = None
    dtype: str | None = None
    params: int | None = None
    tool_use: bool = False
    thinking: bool = False


def _guess_from_name(name: str, tags: set[str]) -> _Guess:
    lowered = name.lower()
    text = " ".join([lowered, *sorted(tags)])
    bits = group = None
    method = dtype = None
    for fmt, (fmt_bits, fmt_group) in _MICROSCALING.items():
        if fmt in text:
            bits, group, method = fmt_bits, fmt_group, fmt
            break
    if bits is None and (match := _NAME_BITS.search(text)):
        bits = int(match.group(1))
    if bits is None and (match := _NAME_DTYPE.search(text)):
        dtype = _DTYPES[match.group(1)]
    video = bool(tags & _VIDEO_TAGS) or bool(_NAME_VIDEO.search(lowered))
    multimodal = video or bool(tags & _MULTIMODAL_TAGS) or bool(_NAME_MULTIMODAL.search(lowered))
    thinking = bool(_NAME_THINKING.search(lowered))
    tool_use = "tool-use" in lowered or "function-calling" in lowered
    return _Guess(multimodal, video, bits, group, method, dtype, _params_from_name(lowered),
                  tool_use, thinking)


def _params_from_name(lowered: str) -> int | None:
    """"8x7b" -> 56e9, "0.6b" -> 6e8, "135m" -> 1.35e8; the first size in the name."""
    scale = {"b": 1_000_000_000, "m": 1_000_000}
    base = lowered.rsplit("/", 1)[-1]
    if match := _NAME_MOE_SIZE.search(base):
        return int(int(match.group(1)) * float(match.group(2)) * scale[match.group(3)])
    if match := _NAME_SIZE.search(base):
        return int(float(match.group(1)) * scale[match.group(2)])
    return None

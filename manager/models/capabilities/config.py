"""Interpreting config.json: architecture, dtype, quantization, context, vision/video.

Configs come from many families and converters: every reader takes what is there,
tolerates what is odd and returns None for what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from manager.models.capabilities.values import (
    as_mapping,
    nonempty_str,
    positive_int,
    positive_number,
)

_NESTED_TEXT_KEYS = ("text_config", "llm_config", "language_config", "text_model")

CONTEXT_KEYS = (
    "max_position_embeddings",
    "max_sequence_length",
    "max_seq_len",
    "seq_length",
    "n_positions",
    "n_ctx",
)

DTYPES = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "fp32": "fp32",
    "float": "fp32",
}

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

#: Defaults of configuration classes for fields that real config.json files omit
#: (Gemma 3's text_config states only what differs from these).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
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
MICROSCALING = {"mxfp4": (4, 32), "nvfp4": (4, 16), "mxfp8": (8, 32)}


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in _NESTED_TEXT_KEYS:
        nested = config.get(key)
        if isinstance(nested, Mapping) and nested:
            return nested
    thinker = as_mapping(config.get("thinker_config"))  # Qwen Omni
    nested = thinker.get("text_config")
    return nested if isinstance(nested, Mapping) else {}


def architecture_of(config: Mapping[str, Any]) -> str | None:
    model_type = nonempty_str(config.get("model_type"))
    if model_type:
        return model_type
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and nonempty_str(archs[0]):
        return archs[0]
    return None


def dtype_of(config: Mapping[str, Any], text: Mapping[str, Any]) -> str | None:
    for source in (config, text):
        for key in ("torch_dtype", "dtype"):
            raw = nonempty_str(source.get(key))
            if raw:
                found = DTYPES.get(raw.lower().removeprefix("torch."))
                if found:
                    return found
    return None


def quantization_of(
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
    bits = positive_int(quant.get("bits"))
    group = positive_int(quant.get("group_size"))
    mode = (nonempty_str(quant.get("mode")) or "affine").lower()
    # Per-layer overrides look like {"model.layers.0.mlp.down_proj": {"bits": 8, ...}};
    # a layer mapped to false is left unquantized.
    layer_bits = [
        b for b in (positive_int(v.get("bits")) for v in quant.values() if isinstance(v, Mapping))
        if b is not None
    ]
    if bits is None and mode in MICROSCALING:
        bits, default_group = MICROSCALING[mode]
        group = group or default_group
    if bits is None and layer_bits:
        bits = max(set(layer_bits), key=layer_bits.count)
    distinct = sorted(set(layer_bits) | ({bits} if bits else set()))
    if len(distinct) > 1:
        notes.append(f"mixed quantization: {'/'.join(map(str, distinct))} bits by layer")
    return bits, group, mode


def _hf_quantization(quant: Mapping[str, Any]) -> tuple[int | None, int | None, str | None]:
    method = (nonempty_str(quant.get("quant_method")) or "").lower() or None
    bits = positive_int(quant.get("bits")) or positive_int(quant.get("w_bit")) or positive_int(quant.get("num_bits"))
    group = positive_int(quant.get("group_size")) or positive_int(quant.get("q_group_size"))
    if method in MICROSCALING:
        default_bits, default_group = MICROSCALING[method]
        return bits or default_bits, group or default_group, method
    if quant.get("load_in_4bit") is True:
        return 4, positive_int(quant.get("bnb_4bit_blocksize")) or 64, method or "bitsandbytes"
    if quant.get("load_in_8bit") is True:
        return 8, None, method or "bitsandbytes"
    if method == "fp8" or nonempty_str(quant.get("fmt")) in ("e4m3", "e5m2"):
        return bits or 8, group, method or "fp8"
    if method == "compressed-tensors" and bits is None:
        for group_cfg in as_mapping(quant.get("config_groups")).values():
            weights = as_mapping(as_mapping(group_cfg).get("weights"))
            bits = positive_int(weights.get("num_bits"))
            group = positive_int(weights.get("group_size")) or group
            if bits is not None:
                break
    if bits is None and method is None:
        return None, None, None
    return bits, group, method


def rope_note(chain: Mapping[str, Any], context: int | None, notes: list[str]) -> None:
    """Context lengths are taken as stated; say so when rope scaling could stretch them."""
    rope = chain.get("rope_scaling") or chain.get("rope_parameters")
    if not isinstance(rope, Mapping) or context is None:
        return
    factor = positive_number(rope.get("factor"))
    original = positive_int(rope.get("original_max_position_embeddings"))
    if factor and factor > 1 and original and context <= original:
        kind = nonempty_str(rope.get("rope_type")) or nonempty_str(rope.get("type")) or "rope"
        notes.append(
            f"{kind} scaling x{factor:g} may extend the context to {int(context * factor):,} tokens"
        )


def media_of(config: Mapping[str, Any], top_type: str) -> tuple[bool, bool]:
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

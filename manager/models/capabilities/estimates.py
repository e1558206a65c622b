"""Size estimates from a config: parameter count and KV-cache bytes per token.

Counts follow the shapes of the weight matrices (embeddings, attention, gated or
plain MLPs, mixture-of-experts layers, latent attention, a vision tower). They are
estimates: a note says when a figure is an upper bound or read from file sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from manager.models.capabilities.config import DTYPE_BYTES, MICROSCALING
from manager.models.capabilities.values import (
    as_mapping,
    first_int,
    nonempty_str,
    positive_int,
    positive_number,
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

#: Families whose MLP is up -> act -> down (two matrices); everything else is gated.
_NON_GATED_MLP = frozenset(
    {"gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "falcon", "opt", "bloom",
     "phi", "starcoder2", "mpt", "codegen", "bert"}
)

#: Families whose configs tie the output head to the embeddings unless they say otherwise.
_TIED_BY_DEFAULT = frozenset({"gpt2", "gpt_neo", "gpt_bigcode", "opt", "bloom", "falcon", "mpt"})


def estimate_params(
    chain: Mapping[str, Any], config: Mapping[str, Any], model_type: str
) -> int | None:
    """Parameters from the config: embeddings + layers + lm_head (+ vision tower)."""
    hidden = first_int(chain, _HIDDEN_KEYS)
    layers = first_int(chain, _LAYER_KEYS)
    vocab = first_int(chain, _VOCAB_KEYS)
    heads = first_int(chain, _HEAD_KEYS)
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
    kv_rank = positive_int(chain.get("kv_lora_rank"))
    if kv_rank is not None:  # multi-head latent attention (DeepSeek V2/V3, Kimi K2)
        rope = positive_int(chain.get("qk_rope_head_dim")) or 64
        nope = positive_int(chain.get("qk_nope_head_dim")) or 128
        v_dim = positive_int(chain.get("v_head_dim")) or 128
        q_rank = positive_int(chain.get("q_lora_rank"))
        q_width = heads * (nope + rope)
        q = hidden * q_rank + q_rank * q_width if q_rank else hidden * q_width
        kv = hidden * (kv_rank + rope) + kv_rank * heads * (nope + v_dim)
        return q + kv + heads * v_dim * hidden
    kv_heads = _kv_heads(chain, heads)
    head_dim = first_int(chain, _HEAD_DIM_KEYS) or hidden // heads
    return 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim


def _kv_heads(chain: Mapping[str, Any], heads: int) -> int:
    kv_heads = first_int(chain, _KV_HEAD_KEYS)
    if kv_heads is None and chain.get("multi_query") is True:
        return 1
    return kv_heads or heads


def _mlp_params(
    chain: Mapping[str, Any], hidden: int, layers: int, model_type: str
) -> int | None:
    """All layers' MLPs; MoE layers count every expert, shared experts and the router."""
    gated = model_type not in _NON_GATED_MLP
    matrices = 3 if gated else 2
    dense_inter = first_int(chain, _INTERMEDIATE_KEYS)
    if dense_inter is None and not gated:
        dense_inter = 4 * hidden
    experts = first_int(chain, _EXPERT_COUNT_KEYS)
    if experts is None or experts < 2:
        return None if dense_inter is None else layers * matrices * hidden * dense_inter
    expert_inter = positive_int(chain.get("moe_intermediate_size")) or dense_inter
    if expert_inter is None:
        return None
    shared_inter = 0
    n_shared = positive_int(chain.get("n_shared_experts")) or positive_int(chain.get("num_shared_experts"))
    if n_shared:
        shared_inter = n_shared * expert_inter
    elif positive_int(chain.get("shared_expert_intermediate_size")):
        shared_inter = int(chain["shared_expert_intermediate_size"])
    elif model_type.startswith("llama4"):
        shared_inter = dense_inter or expert_inter
    moe_layer = matrices * hidden * (experts * expert_inter + shared_inter) + hidden * experts
    n_moe = _moe_layer_count(chain, layers)
    dense_mlp_inter = positive_int(chain.get("intermediate_size_mlp")) or dense_inter or expert_inter
    dense_layer = matrices * hidden * dense_mlp_inter
    return n_moe * moe_layer + (layers - n_moe) * dense_layer


def _moe_layer_count(chain: Mapping[str, Any], layers: int) -> int:
    explicit = chain.get("moe_layers")
    if isinstance(explicit, list) and explicit:
        return min(layers, len(explicit))
    first_dense = chain.get("first_k_dense_replace")
    if isinstance(first_dense, int) and not isinstance(first_dense, bool):
        freq = positive_int(chain.get("moe_layer_freq")) or 1
        return sum(1 for i in range(layers) if i >= first_dense and i % freq == 0)
    step = first_int(chain, ("decoder_sparse_step", "interleave_moe_layer_step")) or 1
    dense_only = chain.get("mlp_only_layers")
    dense_list = dense_only if isinstance(dense_only, list) else []
    dense_set = {i for i in dense_list if isinstance(i, int)}
    return sum(1 for i in range(layers) if i not in dense_set and (i + 1) % step == 0)


def _vision_params(config: Mapping[str, Any], text_hidden: int) -> int:
    """A rough vision tower: blocks of attention + MLP, plus a projector into the LLM."""
    vision = as_mapping(config.get("vision_config"))
    # embed_dim first: Qwen2-VL's vision hidden_size is the LLM width it projects to
    width = first_int(vision, ("embed_dim", "hidden_size", "width"))
    depth = first_int(vision, ("depth", "num_hidden_layers", "num_layers", "layers"))
    if width is None or depth is None:
        return 0
    inter = positive_int(vision.get("intermediate_size"))
    if inter is None:
        ratio = positive_number(vision.get("mlp_ratio")) or 4.0
        inter = int(width * ratio)
    act = (nonempty_str(vision.get("hidden_act")) or "").lower()
    matrices = 3 if act in ("silu", "swiglu", "swish") else 2
    return depth * (4 * width * width + matrices * width * inter) + width * text_hidden


def kv_bytes_per_token(
    chain: Mapping[str, Any], dtype: str | None, model_type: str, notes: list[str]
) -> int | None:
    """layers x kv_heads x head_dim x 2 (K and V) x bytes; MLA caches its latent."""
    layers = first_int(chain, _LAYER_KEYS)
    heads = first_int(chain, _HEAD_KEYS)
    hidden = first_int(chain, _HIDDEN_KEYS)
    if layers is None:
        return None
    width = DTYPE_BYTES.get(dtype or "", 2)
    kv_rank = positive_int(chain.get("kv_lora_rank"))
    if kv_rank is not None:
        rope = positive_int(chain.get("qk_rope_head_dim")) or 64
        return layers * (kv_rank + rope) * width
    if heads is None:
        return None
    head_dim = first_int(chain, _HEAD_DIM_KEYS) or (hidden // heads if hidden else None)
    if not head_dim:
        return None
    attention_layers = layers
    layer_types = chain.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        kinds = [str(t).lower() for t in layer_types]
        attention_layers = sum(1 for k in kinds if "attention" in k and "linear" not in k)
    elif positive_int(chain.get("full_attention_interval")):
        attention_layers = layers // int(chain["full_attention_interval"])
    windowed = (
        model_type in ("gemma2", "gemma3", "gemma3_text", "cohere2")
        or positive_int(chain.get("attention_chunk_size")) is not None
        or positive_int(chain.get("sliding_window_pattern")) is not None
        or (isinstance(layer_types, list) and any("sliding" in str(t) for t in layer_types))
    )
    if windowed:
        notes.append("sliding-window or chunked attention: the KV cache estimate is an "
                     "upper bound at long contexts")
    return attention_layers * _kv_heads(chain, heads) * head_dim * 2 * width


def params_from_weights(
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
        scales = 8 / (group or 32) if method in MICROSCALING else 32 / (group or 64)
        per_weight = bits + scales
        notes.append("parameter count estimated from the weights size")
    elif dtype is not None:
        per_weight = 8 * DTYPE_BYTES[dtype]
        notes.append("parameter count estimated from the weights size")
    else:
        per_weight = 16
        notes.append("parameter count estimated from the weights size, assuming 16-bit weights")
    return int(weights_bytes * 8 / per_weight)

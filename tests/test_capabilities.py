"""Table-driven tests of manager.models.capabilities.

Config rows are written from the public field names of each family (only the fields
that matter); chat templates are short stand-ins in each family's style.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from manager.models import capabilities as capmod
from manager.models.capabilities import (
    DEFAULT_FIT_CONTEXT_TOKENS,
    Capabilities,
    Fit,
    FitLevel,
    detect,
    fit,
    from_files,
    human_bytes,
    memory_budget_bytes,
)

GIB = 1024**3

# --- chat templates in each family's style ------------------------------------------------

LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}"
    "{%- if tools is not none %}{{- 'Environment: ipython' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if message.tool_calls %}{{- '<|python_tag|>' }}{%- endif %}"
)
QWEN3_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}{%- for tool in tools %}"
    "{{- tool | tojson }}{%- endfor %}{{- '</tools>\\n<tool_call>\\n{\"name\": ...}\\n"
    "</tool_call><|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content"
    " + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
QWEN_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\\n{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\\n{% endfor %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\\n"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}"
    "{{ '<start_of_image>' }}{%- endif -%}{%- endfor -%}{%- endif -%}<end_of_turn>\\n"
    "{%- endfor -%}{%- if add_generation_prompt -%}<start_of_turn>model\\n{%- endif -%}"
)
MISTRAL_TEMPLATE = (
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- if tools is defined and tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}"
    "[/AVAILABLE_TOOLS]{%- endif %}[INST]{{ message['content'] }}[/INST]"
    "{%- elif message.tool_calls is defined %}[TOOL_CALLS]{{ message.tool_calls | tojson }}"
    "{%- endif %}{%- endfor %}"
)
R1_DISTILL_TEMPLATE = (
    "{% set ns = namespace(is_first=false, is_tool=false) %}{{ bos_token }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{{ '<｜User｜>' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- for tool in message['tool_calls'] %}"
    "{{ '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'"
    " + tool['function']['name'] }}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content }}{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
PHI4_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '<|im_sep|>' + "
    "message['content'] + '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)
GLM4_TEMPLATE = (
    "[gMASK]<sop>{%- if tools -%}<|system|>\\n# Available tools\\n{% for tool in tools %}"
    "{{ tool | tojson(indent=4) }}{% endfor %}{%- endif -%}"
    "{%- for msg in messages %}<|{{ msg.role }}|>\\n{{ msg.content }}{%- endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
GPT_OSS_TEMPLATE = (
    "<|start|>system<|message|>Knowledge cutoff: 2024-06\\n"
    "{%- if reasoning_effort is not defined %}{%- set reasoning_effort = 'medium' %}{%- endif %}"
    "Reasoning: {{ reasoning_effort }}<|end|>{%- if tools -%}<|start|>developer<|message|>"
    "namespace functions {{ tools | tojson }}<|end|>{%- endif -%}"
    "{%- for message in messages %}<|start|>{{ message.role }}<|message|>{{ message.content }}"
    "<|end|>{%- endfor %}<|start|>assistant"
)
LLAMA4_TEMPLATE = (
    "{{- bos_token }}{%- if custom_tools is defined %}{%- set tools = custom_tools %}{%- endif %}"
    "{%- if tools is not none %}{{- '<|header_start|>system<|header_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|header_start|>' + message['role'] + "
    "'<|header_end|>\\n\\n' + message['content'] + '<|eot|>' }}{%- endfor %}"
)

# --- configs of real families (fields that matter) ---------------------------------------

LLAMA31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
QWEN3_06B: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
QWEN3_30B_A3B: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
QWEN25_VL_7B: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 128000,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "hidden_act": "silu",
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}
# Gemma 3 states only what differs from the class defaults in text_config.
GEMMA3_4B: dict[str, Any] = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "model_type": "gemma3",
    "boi_token_index": 255999,
    "image_token_index": 262144,
    "mm_tokens_per_image": 256,
    "text_config": {
        "model_type": "gemma3_text",
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 896,
        "patch_size": 14,
    },
    "torch_dtype": "bfloat16",
}
MISTRAL_SMALL_31: dict[str, Any] = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "model_type": "mistral3",
    "image_token_index": 10,
    "spatial_merge_size": 2,
    "text_config": {
        "model_type": "mistral",
        "hidden_size": 5120,
        "intermediate_size": 32768,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 131072,
        "max_position_embeddings": 131072,
        "rope_theta": 1000000000.0,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "model_type": "pixtral",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "hidden_act": "silu",
        "image_size": 1540,
        "patch_size": 14,
    },
    "torch_dtype": "bfloat16",
}
R1_DISTILL_QWEN_7B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "sliding_window": 4096,
    "use_sliding_window": False,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
PHI4: dict[str, Any] = {
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "hidden_size": 5120,
    "intermediate_size": 17920,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 10,
    "vocab_size": 100352,
    "max_position_embeddings": 16384,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
GLM4_9B_0414: dict[str, Any] = {
    "architectures": ["Glm4ForCausalLM"],
    "model_type": "glm4",
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "partial_rotary_factor": 0.5,
    "vocab_size": 151552,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
# The original THUDM release (trust_remote_code): ChatGLM field names.
CHATGLM4_9B: dict[str, Any] = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "num_layers": 40,
    "num_attention_heads": 32,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "kv_channels": 128,
    "padded_vocab_size": 151552,
    "seq_length": 131072,
    "torch_dtype": "bfloat16",
}
GPT_OSS_20B: dict[str, Any] = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_hidden_layers": 24,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_local_experts": 32,
    "num_experts_per_tok": 4,
    "vocab_size": 201088,
    "max_position_embeddings": 131072,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    },
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "quantization_config": {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                   "model.embed_tokens", "lm_head"],
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
LLAMA4_SCOUT: dict[str, Any] = {
    "architectures": ["Llama4ForConditionalGeneration"],
    "model_type": "llama4",
    "image_token_index": 200092,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama4_text",
        "hidden_size": 5120,
        "intermediate_size": 8192,
        "intermediate_size_mlp": 16384,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "num_local_experts": 16,
        "num_experts_per_tok": 1,
        "interleave_moe_layer_step": 1,
        "attention_chunk_size": 8192,
        "vocab_size": 202048,
        "max_position_embeddings": 10485760,
        "rope_scaling": {"factor": 16.0, "original_max_position_embeddings": 8192,
                         "rope_type": "llama3"},
    },
    "vision_config": {
        "model_type": "llama4_vision_model",
        "hidden_size": 1408,
        "intermediate_size": 5632,
        "num_hidden_layers": 34,
        "num_attention_heads": 16,
        "hidden_act": "gelu",
    },
    "torch_dtype": "bfloat16",
}


def mlx_quantized(config: dict[str, Any], bits: int, group_size: int = 64) -> dict[str, Any]:
    """An mlx-community conversion: same fields plus quantization (and its HF twin)."""
    quant = {"group_size": group_size, "bits": bits}
    return {**config, "quantization": quant, "quantization_config": dict(quant)}


QWEN3_06B_4BIT = mlx_quantized(QWEN3_06B, 4)
LLAMA31_8B_8BIT = mlx_quantized(LLAMA31_8B, 8)
QWEN25_VL_7B_4BIT = mlx_quantized(QWEN25_VL_7B, 4)
GPT_OSS_20B_MLX = {
    **{k: v for k, v in GPT_OSS_20B.items() if k != "quantization_config"},
    "quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"},
}

QWEN_VOCAB = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
QWEN3_VOCAB = [*QWEN_VOCAB, "<think>", "</think>"]
R1_VOCAB = ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>",
            "<tool_call>", "</tool_call>"]


def tok(template: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**({"chat_template": template} if template else {}), **extra}


# Each row: config, tokenizer_config, vocab tokens, expected fields. "params" is
# (published parameter count, relative tolerance).
FAMILY_ROWS = [
    pytest.param(
        LLAMA31_8B, tok(LLAMA3_TEMPLATE), ["<|python_tag|>", "<|eot_id|>"],
        dict(architecture="llama", context_length=131072, multimodal=False, video=False,
             quant_bits=None, dtype="bf16", label="bf16", kv=32 * 8 * 128 * 2 * 2,
             tool_use=True, thinking=False, params=(8.0e9, 0.05)),
        id="llama-3.1-8b",
    ),
    pytest.param(
        LLAMA31_8B_8BIT, tok(LLAMA3_TEMPLATE), [],
        dict(architecture="llama", context_length=131072, quant_bits=8, quant_group_size=64,
             dtype=None, label="8-bit", kv=131072, tool_use=True, thinking=False,
             params=(8.0e9, 0.05)),
        id="mlx-llama-3.1-8b-8bit",
    ),
    pytest.param(
        QWEN3_06B, tok(QWEN3_TEMPLATE), QWEN3_VOCAB,
        dict(architecture="qwen3", context_length=40960, multimodal=False, video=False,
             quant_bits=None, dtype="bf16", kv=28 * 8 * 128 * 2 * 2, tool_use=True,
             thinking=True, params=(0.6e9, 0.05)),
        id="qwen3-0.6b",
    ),
    pytest.param(
        # no template known: the vocabulary's markup decides
        QWEN3_06B_4BIT, None, QWEN3_VOCAB,
        dict(architecture="qwen3", quant_bits=4, quant_group_size=64, quant_method="affine",
             dtype=None, label="4-bit", kv=114688, tool_use=True, thinking=True,
             params=(0.6e9, 0.05)),
        id="mlx-qwen3-0.6b-4bit-vocab-only",
    ),
    pytest.param(
        QWEN3_30B_A3B, tok(QWEN3_TEMPLATE), QWEN3_VOCAB,
        dict(architecture="qwen3_moe", context_length=40960, kv=48 * 4 * 128 * 4,
             tool_use=True, thinking=True, params=(30.5e9, 0.05)),
        id="qwen3-30b-a3b-moe",
    ),
    pytest.param(
        QWEN25_VL_7B, tok(QWEN_VL_TEMPLATE), [*QWEN_VOCAB, "<|image_pad|>", "<|video_pad|>"],
        dict(architecture="qwen2_5_vl", context_length=128000, multimodal=True, video=True,
             dtype="bf16", kv=28 * 4 * 128 * 4, tool_use=False, thinking=False,
             params=(8.3e9, 0.05)),
        id="qwen2.5-vl-7b",
    ),
    pytest.param(
        QWEN25_VL_7B_4BIT, tok(QWEN_VL_TEMPLATE), [],
        dict(multimodal=True, video=True, quant_bits=4, label="4-bit", kv=57344,
             params=(8.3e9, 0.05)),
        id="mlx-qwen2.5-vl-7b-4bit",
    ),
    pytest.param(
        GEMMA3_4B, tok(GEMMA3_TEMPLATE), ["<start_of_turn>", "<end_of_turn>", "<start_of_image>"],
        dict(architecture="gemma3", context_length=131072, multimodal=True, video=False,
             dtype="bf16", kv=34 * 4 * 256 * 4, tool_use=False, thinking=False,
             params=(4.3e9, 0.05)),
        id="gemma-3-4b",
    ),
    pytest.param(
        MISTRAL_SMALL_31, tok(MISTRAL_TEMPLATE), ["[TOOL_CALLS]", "[IMG]", "[INST]"],
        dict(architecture="mistral3", context_length=131072, multimodal=True, video=False,
             kv=40 * 8 * 128 * 4, tool_use=True, thinking=False, params=(24.0e9, 0.05)),
        id="mistral-small-3.1",
    ),
    pytest.param(
        # the template only replays old tool calls and never renders `tools`
        R1_DISTILL_QWEN_7B, tok(R1_DISTILL_TEMPLATE), R1_VOCAB,
        dict(architecture="qwen2", context_length=131072, multimodal=False,
             kv=28 * 4 * 128 * 4, tool_use=False, thinking=True, params=(7.6e9, 0.05)),
        id="deepseek-r1-distill-qwen-7b",
    ),
    pytest.param(
        PHI4, tok(PHI4_TEMPLATE), ["<|im_start|>", "<|im_sep|>", "<|im_end|>"],
        dict(architecture="phi3", context_length=16384, kv=40 * 10 * 128 * 4, tool_use=False,
             thinking=False, params=(14.7e9, 0.05)),
        id="phi-4",
    ),
    pytest.param(
        GLM4_9B_0414, tok(GLM4_TEMPLATE), ["<|user|>", "<|assistant|>", "<|observation|>"],
        dict(architecture="glm4", context_length=32768, kv=40 * 2 * 128 * 4, tool_use=True,
             thinking=False, params=(9.4e9, 0.05)),
        id="glm-4-9b-0414",
    ),
    pytest.param(
        CHATGLM4_9B, None, [],
        dict(architecture="chatglm", context_length=131072, kv=40 * 2 * 128 * 4,
             tool_use=False, thinking=False, params=(9.4e9, 0.05)),
        id="glm-4-9b-chat-chatglm-fields",
    ),
    pytest.param(
        GPT_OSS_20B, tok(GPT_OSS_TEMPLATE), ["<|channel|>", "<|message|>", "<|call|>"],
        dict(architecture="gpt_oss", context_length=131072, quant_bits=4, quant_group_size=32,
             quant_method="mxfp4", dtype=None, label="MXFP4", kv=24 * 8 * 64 * 2 * 2,
             tool_use=True, thinking=True, params=(21.0e9, 0.05)),
        id="gpt-oss-20b-mxfp4",
    ),
    pytest.param(
        GPT_OSS_20B_MLX, tok(GPT_OSS_TEMPLATE), [],
        dict(quant_bits=4, quant_group_size=32, quant_method="mxfp4", label="MXFP4",
             kv=49152, tool_use=True, thinking=True, params=(21.0e9, 0.05)),
        id="mlx-gpt-oss-20b-mxfp4",
    ),
    pytest.param(
        LLAMA4_SCOUT, tok(LLAMA4_TEMPLATE), ["<|python_start|>", "<|header_start|>"],
        dict(architecture="llama4", context_length=10485760, multimodal=True, video=False,
             kv=48 * 8 * 128 * 4, tool_use=True, thinking=False, params=(109e9, 0.05)),
        id="llama-4-scout",
    ),
]


@pytest.mark.parametrize(("config", "tok_config", "vocab", "expected"), FAMILY_ROWS)
def test_families(
    config: dict[str, Any], tok_config: dict[str, Any] | None, vocab: list[str],
    expected: dict[str, Any],
) -> None:
    caps = from_files(config, tok_config, vocab_tokens=vocab)
    assert caps.guessed is False
    for field in ("architecture", "context_length", "multimodal", "video", "quant_bits",
                  "quant_group_size", "quant_method", "dtype", "tool_use", "thinking"):
        if field in expected:
            assert getattr(caps, field) == expected[field], field
    if "label" in expected:
        assert caps.quantization_label == expected["label"]
    if "kv" in expected:
        assert caps.kv_bytes_per_token == expected["kv"]
    if "params" in expected:
        value, tolerance = expected["params"]
        assert caps.parameter_count is not None
        assert abs(caps.parameter_count - value) <= tolerance * value, caps.parameter_count


def test_llama_context_is_not_multiplied_by_rope_factor() -> None:
    caps = from_files(LLAMA31_8B, None)
    assert caps.context_length == 131072
    assert not any("scaling" in n for n in caps.notes)


def test_rope_factor_over_the_original_length_is_noted_not_applied() -> None:
    # Qwen2.5 with YaRN switched on by hand: the config keeps the native 32K length
    config = {**QWEN3_06B, "max_position_embeddings": 32768,
              "rope_scaling": {"type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 32768}}
    caps = from_files(config, None)
    assert caps.context_length == 32768
    assert any("131,072" in n for n in caps.notes)


@pytest.mark.parametrize(
    ("fields", "context"),
    [
        ({"max_position_embeddings": 4096}, 4096),
        ({"max_sequence_length": 2048}, 2048),
        ({"seq_length": 8192}, 8192),
        ({"n_positions": 1024}, 1024),
        ({"text_config": {"max_position_embeddings": 32768}}, 32768),
        ({"max_position_embeddings": None, "seq_length": 4096}, 4096),
        ({}, None),
    ],
)
def test_context_aliases(fields: dict[str, Any], context: int | None) -> None:
    assert from_files({"model_type": "x", **fields}, None).context_length == context


def test_architecture_falls_back_to_architectures() -> None:
    assert from_files({"architectures": ["FooForCausalLM"]}, None).architecture == "FooForCausalLM"
    assert from_files({}, None).architecture is None


def test_gpt2_style_fields_and_non_gated_mlp() -> None:
    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
            "vocab_size": 50257, "n_positions": 1024, "torch_dtype": "float32"}
    caps = from_files(gpt2, None)
    assert caps.context_length == 1024
    assert caps.dtype == "fp32"
    assert caps.kv_bytes_per_token == 12 * 12 * 64 * 2 * 4  # fp32 cache
    assert caps.parameter_count is not None
    assert abs(caps.parameter_count - 124e6) < 0.1 * 124e6


def test_deepseek_v3_mla_counts_latent_kv_and_shared_experts() -> None:
    v3 = {"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
          "moe_intermediate_size": 2048, "n_routed_experts": 256, "n_shared_experts": 1,
          "first_k_dense_replace": 3, "moe_layer_freq": 1, "num_hidden_layers": 61,
          "num_attention_heads": 128, "num_key_value_heads": 128, "q_lora_rank": 1536,
          "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
          "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
          "tie_word_embeddings": False,
          "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                                  "weight_block_size": [128, 128]}}
    caps = from_files(v3, None)
    assert caps.kv_bytes_per_token == 61 * (512 + 64) * 2
    assert caps.parameter_count is not None
    assert abs(caps.parameter_count - 671e9) < 0.05 * 671e9
    assert (caps.quant_bits, caps.quant_method, caps.quantization_label) == (8, "fp8", "8-bit")


# --- quantization -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "bits", "group", "method", "label"),
    [
        ({"quantization": {"group_size": 64, "bits": 4}}, 4, 64, "affine", "4-bit"),
        ({"quantization": {"group_size": 32, "bits": 8}}, 8, 32, "affine", "8-bit"),
        ({"quantization_config": {"group_size": 64, "bits": 6}}, 6, 64, None, "6-bit"),
        ({"quantization": {"group_size": 64, "bits": 3,
                           "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 6},
                           "lm_head": False}}, 3, 64, "affine", "3-bit"),
        ({"quantization": {"model.layers.0.self_attn.q_proj": {"group_size": 64, "bits": 4},
                           "model.layers.1.self_attn.q_proj": {"group_size": 64, "bits": 4},
                           "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 8}}},
         4, None, "affine", "4-bit"),
        ({"quantization": {"mode": "mxfp4"}}, 4, 32, "mxfp4", "MXFP4"),
        ({"quantization_config": {"quant_method": "mxfp4"}}, 4, 32, "mxfp4", "MXFP4"),
        ({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}},
         4, 128, "gptq", "4-bit"),
        ({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}},
         4, 128, "awq", "4-bit"),
        ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                  "bnb_4bit_quant_type": "nf4"}}, 4, 64, "bitsandbytes", "4-bit"),
        ({"quantization_config": {"load_in_8bit": True}}, 8, None, "bitsandbytes", "8-bit"),
        ({"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {
            "group_0": {"weights": {"num_bits": 4, "group_size": 128}}}}},
         4, 128, "compressed-tensors", "4-bit"),
        ({"text_config": {"quantization_config": {"bits": 4, "group_size": 64}}},
         4, 64, None, "4-bit"),
        ({"quantization": {}}, None, None, None, "bf16"),
        ({"quantization_config": None}, None, None, None, "bf16"),
    ],
)
def test_quantization(fields: dict[str, Any], bits: int | None, group: int | None,
                      method: str | None, label: str) -> None:
    caps = from_files({**QWEN3_06B, **fields}, None)
    assert (caps.quant_bits, caps.quant_group_size, caps.quant_method) == (bits, group, method)
    assert caps.quantization_label == label
    assert caps.dtype == (None if bits else "bf16")


def test_mixed_quantization_is_noted() -> None:
    quant = {"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"bits": 8}}
    caps = from_files({**QWEN3_06B, "quantization": quant}, None)
    assert any("mixed quantization: 4/8" in n for n in caps.notes)


@pytest.mark.parametrize(
    ("dtype_fields", "dtype", "label"),
    [
        ({"torch_dtype": "bfloat16"}, "bf16", "bf16"),
        ({"torch_dtype": "float16"}, "fp16", "fp16"),
        ({"dtype": "float32"}, "fp32", "fp32"),
        ({"torch_dtype": "torch.bfloat16"}, "bf16", "bf16"),
        ({"torch_dtype": "int8"}, None, "n/a"),
        ({}, None, "n/a"),
    ],
)
def test_dtype(dtype_fields: dict[str, Any], dtype: str | None, label: str) -> None:
    config = {k: v for k, v in QWEN3_06B.items() if k != "torch_dtype"}
    caps = from_files({**config, **dtype_fields}, None)
    assert caps.dtype == dtype
    assert caps.quantization_label == label


# --- tool use and thinking from templates, vocabularies and tags -------------------------


@pytest.mark.parametrize(
    ("tok_config", "vocab", "tags", "tool_use", "thinking"),
    [
        (tok("{% if tools %}{{ tools | tojson }}{% endif %}"), [], [], True, False),
        (tok("{%- if tools is not none -%}x{%- endif -%}"), [], [], True, False),
        (tok("{% if custom_tools is defined %}{% endif %}"), [], [], True, False),
        (tok("{% if 'tools' in message %}{{ message['tools'] }}{% endif %}"), [], [], True, False),
        # the word in plain text, outside Jinja code, is not a tools variable
        (tok("You can use tools. {{ messages[0]['content'] }}"), [], [], False, False),
        # template known and silent on tools: vocabulary markup does not count
        (tok("{{ messages[0]['content'] }}"), ["<tool_call>", "</tool_call>"], [], False, False),
        # no template: vocabulary markup decides
        (None, ["<tool_call>", "</tool_call>"], [], True, False),
        (None, ["[TOOL_CALLS]"], [], True, False),
        (None, ["<|python_tag|>"], [], True, False),
        (None, ["<|tool_call_begin|>"], [], True, False),
        (None, ["<think>"], [], False, False),  # needs both ends
        (None, ["<think>", "</think>"], [], False, True),
        (None, ["[THINK]", "[/THINK]"], [], False, True),
        (None, ["<thinking>", "</thinking>"], [], False, True),
        (tok("{{ '<think>\\n' }}"), [], [], False, True),
        (tok("{% if enable_thinking %}x{% endif %}"), [], [], False, True),
        (tok("Reasoning: {{ reasoning_effort }}"), [], [], False, True),
        (tok("{% if thinking %}x{% endif %}"), [], [], False, True),
        (tok("{% set ns.is_thinking = false %}"), [], [], False, False),
        (tok("{{ messages }}"), ["<think>", "</think>"], [], False, False),
        (tok(None, tool_parser_type="json_tools"), [], [], True, False),
        (tok("{{ messages }}"), [], ["tool-use"], True, False),
        (None, [], ["function-calling", "reasoning"], True, True),
        (None, [], ["Thinking"], False, True),
        # named templates (a list) are all considered
        (tok([{"name": "default", "template": "{{ messages }}"},
              {"name": "tool_use", "template": "{% for tool in tools %}{% endfor %}"}]),
         [], [], True, False),
        # added tokens from tokenizer_config count as vocabulary
        ({"added_tokens_decoder": {"1": {"content": "<think>"}, "2": {"content": "</think>"}}},
         [], [], False, True),
    ],
)
def test_tool_use_and_thinking(tok_config: dict[str, Any] | None, vocab: list[str],
                               tags: list[str], tool_use: bool, thinking: bool) -> None:
    caps = from_files(QWEN3_06B, tok_config, tags, vocab_tokens=vocab)
    assert (caps.tool_use, caps.thinking) == (tool_use, thinking)


def test_separate_chat_template_text_is_used() -> None:
    caps = from_files(QWEN3_06B, {}, chat_template=QWEN3_TEMPLATE)
    assert caps.tool_use and caps.thinking


# --- guesses without config.json ---------------------------------------------------------


@pytest.mark.parametrize(
    ("repo_id", "tags", "expected"),
    [
        ("mlx-community/Qwen2.5-VL-7B-Instruct-4bit", [],
         dict(multimodal=True, video=True, quant_bits=4, params=7e9)),
        ("mlx-community/gemma-3-27b-it-8bit", ["image-text-to-text"],
         dict(multimodal=True, video=False, quant_bits=8, params=27e9)),
        ("mlx-community/DeepSeek-R1-Distill-Qwen-7B-bf16", [],
         dict(thinking=True, dtype="bf16", quant_bits=None, params=7e9)),
        ("mlx-community/gpt-oss-20b-MXFP4-Q8", ["reasoning"],
         dict(quant_bits=4, quant_method="mxfp4", label="MXFP4", thinking=True, params=20e9)),
        ("mlx-community/Mixtral-8x7B-Instruct-v0.1-4bit", ["function-calling"],
         dict(tool_use=True, quant_bits=4, params=56e9)),
        ("mlx-community/Qwen3-30B-A3B-4bit-DWQ", ["tool-use"],
         dict(tool_use=True, quant_bits=4, params=30e9)),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", [], dict(params=135e6, multimodal=False)),
        ("someone/llava-v1.6-mistral-7b", [], dict(multimodal=True)),
        ("Qwen/QwQ-32B", [], dict(thinking=True, params=32e9)),
        ("org/plain-model", [], dict(multimodal=False, thinking=False, tool_use=False,
                                     params=None, label="n/a")),
    ],
)
def test_guessed_from_name_and_tags(repo_id: str, tags: list[str],
                                    expected: dict[str, Any]) -> None:
    caps = from_files(None, None, tags, repo_id=repo_id)
    assert caps.guessed is True
    assert caps.architecture is None and caps.context_length is None
    assert caps.kv_bytes_per_token is None
    assert any("guessed" in n for n in caps.notes)
    for field in ("multimodal", "video", "quant_bits", "quant_method", "dtype", "tool_use",
                  "thinking"):
        if field in expected:
            assert getattr(caps, field) == expected[field], field
    if "label" in expected:
        assert caps.quantization_label == expected["label"]
    if "params" in expected:
        assert caps.parameter_count == (int(expected["params"]) if expected["params"] else None)


# --- files and sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "weights"),
    [
        ({"model.safetensors": 1000, "config.json": 10}, 1000),
        ({"model-00001-of-00002.safetensors": 600, "model-00002-of-00002.safetensors": 400,
          "model.safetensors.index.json": 50}, 1000),
        # Mistral repos ship the same weights twice
        ({"consolidated.safetensors": 1000, "model-00001-of-00001.safetensors": 1000}, 1000),
        ({"consolidated.safetensors": 1000}, 1000),
        ({"original/model.safetensors": 5000, "model.safetensors": 1000}, 1000),
        ({"model.safetensors": None}, None),
        (["model.safetensors", "config.json"], None),
        ({"pytorch_model.bin": 1000}, None),
        ({}, None),
    ],
)
def test_weights_bytes_from_file_sizes(files: Any, weights: int | None) -> None:
    assert from_files(QWEN3_06B, None, files=files).weights_bytes == weights


def test_params_from_weights_when_config_is_insufficient() -> None:
    # 4-bit, group 64: 4.5 bits per weight -> 9e9 bytes is 16e9 parameters
    caps = from_files({"model_type": "qwen3", "quantization": {"group_size": 64, "bits": 4}},
                      None, files={"model.safetensors": 9_000_000_000})
    assert caps.parameter_count == 16_000_000_000
    bf16 = from_files({"model_type": "qwen3", "torch_dtype": "bfloat16"}, None,
                      files={"model.safetensors": 2_000_000_000})
    assert bf16.parameter_count == 1_000_000_000
    assert any("weights size" in n for n in bf16.notes)


def test_video_preprocessor_file_means_video() -> None:
    caps = from_files({"model_type": "something_vl"}, None,
                      files={"video_preprocessor_config.json": 300})
    assert caps.multimodal and caps.video


@pytest.mark.parametrize(
    "config",
    [
        {"hidden_size": "4096", "num_hidden_layers": None, "vocab_size": [1]},
        {"model_type": 3, "architectures": "Llama", "text_config": "oops"},
        {"num_hidden_layers": -1, "hidden_size": 0, "num_attention_heads": True},
        {"quantization": {"bits": "4", "group_size": 64.5, "x": {"bits": None}}},
        {"quantization_config": {"config_groups": {"g": "not a dict"}}},
        {"rope_scaling": {"factor": "big"}, "max_position_embeddings": 1e400},
        {"vision_config": {"depth": "x"}, "layer_types": "all", "mlp_only_layers": "none",
         "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 10, "intermediate_size": 8, "num_experts": 4,
         "moe_intermediate_size": 4},
        {"torch_dtype": 16, "tie_word_embeddings": "yes", "image_token_id": None},
        {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10,
         "num_experts": 4, "moe_intermediate_size": 4, "mlp_only_layers": [{}, [1]],
         "moe_layers": "x", "first_k_dense_replace": "1", "kv_lora_rank": 8},
    ],
)
def test_odd_configs_never_raise(config: dict[str, Any]) -> None:
    caps = from_files(config, {"chat_template": 42, "added_tokens_decoder": {"1": 5}})
    assert isinstance(caps, Capabilities)
    assert caps.guessed is False


def test_from_files_rejects_non_object_config_softly() -> None:
    not_a_dict: Any = ["not", "a", "dict"]
    caps = from_files(not_a_dict, None, repo_id="org/Qwen2-VL-2B")
    assert caps.guessed and caps.multimodal
    assert any("JSON object" in n for n in caps.notes)


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


# --- memory fit ---------------------------------------------------------------------------


def sized(weights: int | None, kv_per_token: int | None = 1,
          context_length: int | None = 100_000) -> Capabilities:
    return Capabilities(weights_bytes=weights, kv_bytes_per_token=kv_per_token,
                        context_length=context_length)


@pytest.mark.parametrize(
    ("needed", "level"),
    [
        (1050, FitLevel.FITS),
        (8000, FitLevel.FITS),  # exactly 80 % of the budget
        (8001, FitLevel.TIGHT),
        (10_000, FitLevel.TIGHT),  # exactly the budget
        (10_001, FitLevel.TOO_BIG),
    ],
)
def test_fit_band_edges(needed: int, level: FitLevel) -> None:
    # weights 1000 -> 1050 with overhead; the KV cache (1 byte/token) makes up the rest
    result = fit(sized(1000), needed - 1050, 10_000)
    assert result.needed_bytes == needed
    assert result.level is level
    assert result.budget_bytes == 10_000


def test_fit_levels_have_colors() -> None:
    assert [lv.color for lv in FitLevel] == ["green", "amber", "red", "grey"]


@pytest.mark.parametrize(
    ("caps", "budget", "level", "needed"),
    [
        (sized(None), 10 * GIB, FitLevel.UNKNOWN, None),
        (sized(1000), 0, FitLevel.UNKNOWN, None),
        (sized(1000, kv_per_token=None), 10 * GIB, FitLevel.UNKNOWN, None),
        # the weights alone are too big: no need to know the KV cache
        (sized(20 * GIB, kv_per_token=None), 10 * GIB, FitLevel.TOO_BIG, 21 * GIB),
    ],
)
def test_fit_unknowns(caps: Capabilities, budget: int, level: FitLevel,
                      needed: int | None) -> None:
    result = fit(caps, None, budget)
    assert result.level is level
    assert result.needed_bytes == needed
    assert result.tooltip


@pytest.mark.parametrize(
    ("context_length", "context_tokens", "used"),
    [
        (131072, None, DEFAULT_FIT_CONTEXT_TOKENS),
        (2048, None, 2048),
        (None, None, DEFAULT_FIT_CONTEXT_TOKENS),
        (131072, 100_000, 100_000),
        (4096, 0, 0),
    ],
)
def test_fit_context(context_length: int | None, context_tokens: int | None, used: int) -> None:
    caps = sized(1000, kv_per_token=10, context_length=context_length)
    result = fit(caps, context_tokens, 100 * GIB)
    assert result.context_tokens == used
    assert result.kv_bytes == used * 10
    assert result.needed_bytes == 1050 + used * 10


def test_fit_real_model_and_tooltip() -> None:
    caps = from_files(QWEN3_06B_4BIT, None, files={"model.safetensors": 335 * 1024**2})
    result = fit(caps, None, 12 * GIB)
    assert result.level is FitLevel.FITS
    assert result.context_tokens == DEFAULT_FIT_CONTEXT_TOKENS
    assert result.kv_bytes == 114688 * DEFAULT_FIT_CONTEXT_TOKENS
    assert "GB" in result.tooltip and "12.0 GB" in result.tooltip
    assert "8,192 tokens" in result.tooltip and "fits" in result.tooltip


def test_fit_tooltips_per_level() -> None:
    assert "too big" in fit(sized(GIB), 0, GIB).tooltip
    assert "tight" in fit(sized(GIB), 0, GIB + GIB // 10).tooltip
    assert "unknown" in fit(sized(None), None, GIB).tooltip.lower()
    assert "more than" in fit(sized(2 * GIB, None), None, GIB).tooltip
    assert isinstance(fit(sized(1), None, 0), Fit)


@pytest.mark.parametrize(
    ("total", "available", "apple", "budget"),
    [
        (16 * GIB, 3 * GIB, True, 12 * GIB),  # unified memory: 75 % of all RAM
        (64 * GIB, 1 * GIB, True, 48 * GIB),
        (16 * GIB, 3 * GIB, False, 3 * GIB),  # elsewhere: what is free now
        (None, 5 * GIB, False, 5 * GIB),  # total not needed off Apple Silicon
        (8 * GIB, None, True, 6 * GIB),  # available not needed on Apple Silicon
    ],
)
def test_memory_budget_branches(total: int | None, available: int | None, apple: bool,
                                budget: int) -> None:
    assert memory_budget_bytes(total, available, apple_silicon=apple) == budget


def test_memory_budget_reads_this_machine() -> None:
    budget = memory_budget_bytes()
    assert budget > 0
    apple_budget = memory_budget_bytes(apple_silicon=True)
    assert 0 < apple_budget < capmod.psutil.virtual_memory().total


def test_memory_budget_detects_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    # Apple hardware cannot exist here: only the platform answers are stood in
    monkeypatch.setattr(capmod.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(capmod.platform, "machine", lambda: "arm64")
    assert capmod.is_apple_silicon()
    assert memory_budget_bytes(32 * GIB, 1 * GIB) == 24 * GIB
    monkeypatch.setattr(capmod.platform, "machine", lambda: "x86_64")
    assert memory_budget_bytes(32 * GIB, 1 * GIB) == 1 * GIB


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "n/a"),
        (0, "0 B"),
        (512, "512 B"),
        (1536, "1.5 KB"),
        (12 * GIB, "12.0 GB"),
        (3 * 1024**4, "3.0 TB"),
        (5000 * 1024**4, "5000.0 TB"),
    ],
)
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text

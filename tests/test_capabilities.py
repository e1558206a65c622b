"""Table-driven tests of interpreting configs: families, context, quantization, sizes,
and guesses from names when there is no config (manager.models.capabilities)."""

from __future__ import annotations

from typing import Any

import pytest

from manager.models.capabilities import Capabilities, from_files
from tests.capability_samples import (
    CHATGLM4_9B,
    GEMMA3_4B,
    GEMMA3_TEMPLATE,
    GLM4_9B_0414,
    GLM4_TEMPLATE,
    GPT_OSS_20B,
    GPT_OSS_20B_MLX,
    GPT_OSS_TEMPLATE,
    LLAMA3_TEMPLATE,
    LLAMA4_SCOUT,
    LLAMA4_TEMPLATE,
    LLAMA31_8B,
    LLAMA31_8B_8BIT,
    MISTRAL_SMALL_31,
    MISTRAL_TEMPLATE,
    PHI4,
    PHI4_TEMPLATE,
    QWEN3_06B,
    QWEN3_06B_4BIT,
    QWEN3_30B_A3B,
    QWEN3_TEMPLATE,
    QWEN3_VOCAB,
    QWEN25_VL_7B,
    QWEN25_VL_7B_4BIT,
    QWEN_VL_TEMPLATE,
    QWEN_VOCAB,
    R1_DISTILL_QWEN_7B,
    R1_DISTILL_TEMPLATE,
    R1_VOCAB,
    tok,
)

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

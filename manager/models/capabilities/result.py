"""`Capabilities`: what a model can do and how big it is (the result of detection)."""

from __future__ import annotations

from dataclasses import dataclass

from manager.models.capabilities.config import MICROSCALING


@dataclass(frozen=True)
class Capabilities:
    """What a model can do and how big it is. None means unknown."""

    architecture: str | None = None
    context_length: int | None = None
    #: Token ids run from 0 to vocab_size - 1 (the gateway bounds logit_bias with it).
    vocab_size: int | None = None
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
        if self.quant_method in MICROSCALING:
            return self.quant_method.upper()
        if self.quant_bits is not None:
            return f"{self.quant_bits}-bit"
        if self.quant_method:
            return self.quant_method.upper()
        return self.dtype or "n/a"

"""The Models tab's filters (DISC-03), one pure predicate used by both views."""

from __future__ import annotations

from dataclasses import dataclass

from manager.models.capabilities import Capabilities, Fit, FitLevel

GB = 1024**3


@dataclass(frozen=True)
class ModelFilter:
    """Empty/None fields do not filter. bits 16 means "not quantized" (bf16/fp16/fp32)."""

    text: str = ""
    architecture: str = ""
    multimodal: bool = False
    video: bool = False
    tool_use: bool = False
    thinking: bool = False
    bits: int | None = None
    min_gb: float | None = None
    max_gb: float | None = None
    fits: str = "any"  # "any", "fits" (green), "fits_or_tight" (green or amber)

    def matches(self, name: str, caps: Capabilities, fit: Fit | None,
                size_bytes: int | None = None) -> bool:
        if self.text and self.text.strip().lower() not in name.lower():
            return False
        if self.architecture and (caps.architecture or "").lower() != \
                self.architecture.strip().lower():
            return False
        if self.multimodal and not caps.multimodal:
            return False
        if self.video and not caps.video:
            return False
        if self.tool_use and not caps.tool_use:
            return False
        if self.thinking and not caps.thinking:
            return False
        if self.bits is not None:
            bits = caps.quant_bits if caps.quantized else (16 if caps.dtype else None)
            if bits != self.bits:
                return False
        if self.min_gb is not None or self.max_gb is not None:
            size = caps.weights_bytes if caps.weights_bytes is not None else size_bytes
            if size is None:
                return False
            if self.min_gb is not None and size < self.min_gb * GB:
                return False
            if self.max_gb is not None and size > self.max_gb * GB:
                return False
        if self.fits != "any":
            allowed = {FitLevel.FITS} if self.fits == "fits" else {FitLevel.FITS, FitLevel.TIGHT}
            if fit is None or fit.level not in allowed:
                return False
        return True

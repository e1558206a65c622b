"""Guesses from a repo or folder name and the HF tags, when config.json is missing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from manager.models.capabilities.config import DTYPES, MICROSCALING

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


@dataclass(frozen=True)
class Guess:
    multimodal: bool = False
    video: bool = False
    bits: int | None = None
    group_size: int | None = None
    method: str | None = None
    dtype: str | None = None
    params: int | None = None
    tool_use: bool = False
    thinking: bool = False


def guess_from_name(name: str, tags: set[str]) -> Guess:
    lowered = name.lower()
    text = " ".join([lowered, *sorted(tags)])
    bits = group = None
    method = dtype = None
    for fmt, (fmt_bits, fmt_group) in MICROSCALING.items():
        if fmt in text:
            bits, group, method = fmt_bits, fmt_group, fmt
            break
    if bits is None and (match := _NAME_BITS.search(text)):
        bits = int(match.group(1))
    if bits is None and (match := _NAME_DTYPE.search(text)):
        dtype = DTYPES[match.group(1)]
    video = bool(tags & _VIDEO_TAGS) or bool(_NAME_VIDEO.search(lowered))
    multimodal = video or bool(tags & _MULTIMODAL_TAGS) or bool(_NAME_MULTIMODAL.search(lowered))
    thinking = bool(_NAME_THINKING.search(lowered))
    tool_use = "tool-use" in lowered or "function-calling" in lowered
    return Guess(multimodal, video, bits, group, method, dtype, _params_from_name(lowered),
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

"""The markup models write around their thinking: one vocabulary for every reader.

Capability detection (does a chat template or vocabulary know thinking markup?)
and the stream parser (which text is thinking?) read the same pairs, so a model
detected as thinking is also parsed as thinking.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TagPair:
    """An opening and a closing tag around a block of thinking."""

    open: str
    close: str


#: Every pair, most common first. The first is the one a chat template opens in the
#: prompt itself (Qwen3, DeepSeek-R1), so the reply starts inside thinking.
THINKING_TAGS: tuple[TagPair, ...] = (
    TagPair("<think>", "</think>"),
    TagPair("<thinking>", "</thinking>"),
    TagPair("<reasoning>", "</reasoning>"),
    TagPair("[THINK]", "[/THINK]"),  # Magistral
    TagPair("<seed:think>", "</seed:think>"),  # Seed-OSS
    TagPair("<longcat_think>", "</longcat_think>"),  # LongCat
    TagPair("<|think:start|>", "<|think:end|>"),
    TagPair("<|channel>", "<channel|>"),
)

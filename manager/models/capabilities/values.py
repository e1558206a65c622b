"""Typed readers of untrusted JSON values: a wrong type or a silly value is None."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def positive_int(value: Any) -> int | None:
    """A positive int from JSON (integral floats accepted), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value > 0:
        return int(value)
    return None


def positive_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def nonempty_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def first_int(chain: Mapping[str, Any], keys: Iterable[str]) -> int | None:
    for key in keys:
        value = positive_int(chain.get(key))
        if value is not None:
            return value
    return None


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))

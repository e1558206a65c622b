"""The one byte and duration formatter: table tests of every branch and edge."""

from __future__ import annotations

import math

import pytest

from manager.units import GIB, KIB, MIB, format_bytes, format_duration


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "n/a"),
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (KIB, "1.0 KB"),
        (1536, "1.5 KB"),
        (20 * MIB, "20.0 MB"),
        (12 * GIB, "12.0 GB"),
        (3 * 1024 * GIB, "3.0 TB"),
        (5000 * 1024 * GIB, "5000.0 TB"),  # no unit above TB
        (1.5 * MIB, "1.5 MB"),  # speeds arrive as floats
        (-2048, "-2.0 KB"),
    ],
)
def test_format_bytes(n: int | float | None, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "n/a"),
        (math.nan, "n/a"),
        (math.inf, "n/a"),
        (-3.0, "0 s"),  # clocks of two processes may disagree a little
        (0, "0 s"),
        (0.03, "under 0.1 s"),  # a positive span never reads as nothing
        (0.5, "0.5 s"),
        (2, "2 s"),
        (4.03, "4 s"),
        (5.4, "5.4 s"),
        (9.94, "9.9 s"),
        (9.96, "10 s"),  # rounds up into whole seconds, never "10.0 s"
        (59.4, "59 s"),
        (59.6, "1 min"),
        (60, "1 min"),
        (125, "2 min 05 s"),
        (3599.6, "1 h"),
        (3600, "1 h"),
        (7260, "2 h 01 min"),
        (90061, "25 h 01 min"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text

"""Stored timestamps: one format, and old whole-second rows still sort with new ones."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from manager.clock import utc_now


def test_utc_now_is_iso_utc_with_microseconds() -> None:
    stamp = utc_now()
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)
    assert stamp.endswith("+00:00")
    assert len(stamp.split(".")[1].removesuffix("+00:00")) == 6
    assert abs(datetime.now(timezone.utc) - parsed) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        # rows written before the switch held whole seconds
        ("2026-12-01T21:05:09+00:00", "2026-12-01T21:05:09.000001+00:00"),
        ("2026-12-01T21:05:09+00:00", "2026-12-01T21:05:10.000000+00:00"),
        ("2026-12-01T21:05:08.999999+00:00", "2026-12-01T21:05:09+00:00"),
        ("2026-12-01T21:05:09.123456+00:00", "2026-12-01T21:05:09.123457+00:00"),
    ],
)
def test_old_and_new_stamps_sort_as_text_like_as_times(older: str, newer: str) -> None:
    # SQL ORDER BY compares the text: it must agree with the times.
    assert datetime.fromisoformat(older) < datetime.fromisoformat(newer)
    assert older < newer


def test_two_stamps_in_a_row_never_go_backwards() -> None:
    first, second = utc_now(), utc_now()
    assert first <= second

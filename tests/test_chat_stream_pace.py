"""A streamed answer is pushed to the page about 12 times a second while short, and less
often as it grows (each redraw draws the whole message again)."""

from __future__ import annotations

import pytest

from components.chat.sending import PUSH_EVERY_S, PUSH_MAX_S, push_interval


@pytest.mark.parametrize(("chars", "seconds"), [
    (0, PUSH_EVERY_S),
    (2_000, PUSH_EVERY_S),  # a short answer: ~12 redraws a second
    (8_000, 0.2),  # 5 a second: the page redraws ~40,000 characters a second
    (12_000, 0.3),
    (200_000, PUSH_MAX_S),  # never less than ~2.5 a second
])
def test_the_push_interval_grows_with_the_answer(chars: int, seconds: float) -> None:
    assert push_interval(chars) == pytest.approx(seconds)

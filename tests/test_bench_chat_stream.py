"""bench.chat_stream's measure of goal 5 (issue 12): the page's pace against the model's.

Bug: the bench counted the answer's tokens over the page's span from its first to its last
redraw. The tiny model's answers start with hundreds of newline tokens that the page drops
(leading whitespace), all before its first redraw, so a page that kept pace exactly
scored ~1.12. The measure now compares times for the same stretch of visible text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bench.chat_stream import ChunkClock, pace_ratio


@dataclass
class Chunk:
    content: str


class Inference:
    """A stream of 100 newline chunks (0.00-0.99 s), then 100 of "ab" (1.00-1.99 s)."""

    def __init__(self) -> None:
        self.closed = False

    def stream_chat(self, *_args: Any, **_kwargs: Any) -> Iterator[Chunk]:
        try:
            for _ in range(100):
                yield Chunk("\n")
            for _ in range(100):
                yield Chunk("ab")
        finally:
            self.closed = True


def _clock() -> tuple[ChunkClock, Inference]:
    times = iter(i / 100 for i in range(200))
    inference = Inference()
    clock = ChunkClock(inference, now=lambda: next(times))
    for _ in inference.stream_chat():  # the wrapper, as the Chat tab's engine calls it
        pass
    return clock, inference


def test_a_page_that_keeps_pace_scores_one_whatever_came_before_its_first_redraw() -> None:
    clock, _ = _clock()
    assert clock.reached(0.0) == 1.0  # the first visible text, not the first newline
    assert clock.reached(1.0) == 1.99
    # 50 ms behind the server all along: the text the server had at t, shown at t + 0.05.
    page = [(1.05, 2), (1.25, 42), (1.55, 102), (2.04, 200)]
    assert pace_ratio(clock, page) == pytest.approx(1.0)
    # The old count for the same page: 200 tokens x (1 - 2/200) over its 0.99 s, against
    # the server's 199 tokens after the first over 1.99 s.
    assert (200 * (1 - 2 / 200) / 0.99) / (199 / 1.99) == pytest.approx(2.0)


def test_a_page_at_half_the_pace_scores_a_half() -> None:
    clock, _ = _clock()
    page = [(1.05, 2), (1.45, 42), (2.05, 102), (3.03, 200)]
    assert pace_ratio(clock, page) == pytest.approx(0.5)


def test_closing_the_wrapped_stream_closes_the_clients_stream() -> None:
    """The Chat tab's Stop closes the stream it reads: the wrapper must pass that on."""
    inference = Inference()
    clock = ChunkClock(inference, now=lambda: 0.0)
    stream = inference.stream_chat()
    next(stream)
    stream.close()
    assert inference.closed
    assert [n for _, n in clock.marks] == [0]  # a newline so far: nothing visible

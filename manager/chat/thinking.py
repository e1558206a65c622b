"""Streaming separation of a model's thinking from its answer (pure: no I/O).

Feed each stream delta to `ThinkingParser.feed` (the text content plus, when the
server splits it out, the `reasoning` / `reasoning_content` field); it returns
events: THINKING and ANSWER text, THINKING_STARTED / THINKING_ENDED markers with
clock times so the UI can say "Thought for 3s", and RECLASSIFIED when a closing tag
arrives with no opening one (the answer so far was thinking all along). Call
`finish()` at the end of the stream: a stream that stops inside thinking is flushed
as thinking and its end marked unfinished.

Inline markup understood: every pair of `manager.markup.THINKING_TAGS` (<think>,
<thinking>, <reasoning>, [THINK], ...), the same vocabulary capability detection
reads. A tag may be split across chunks at any character: only a tail that could
still become a tag is held back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from manager.markup import THINKING_TAGS, TagPair


class EventKind(str, Enum):
    THINKING = "thinking"
    ANSWER = "answer"
    THINKING_STARTED = "thinking_started"
    THINKING_ENDED = "thinking_ended"
    # The answer text emitted so far was thinking; `text` is what moved.
    RECLASSIFIED = "reclassified"


@dataclass(frozen=True)
class ThinkingEvent:
    kind: EventKind
    text: str = ""
    # Clock time of THINKING_STARTED / THINKING_ENDED.
    at: float | None = None
    # On THINKING_ENDED: how long that block of thinking lasted.
    seconds: float | None = None
    # On THINKING_ENDED: False when the stream stopped before thinking was closed.
    finished: bool = True


_OUTSIDE = "outside"
_INLINE = "inline"  # inside an inline tag pair
_FIELD = "field"  # inside reasoning the server sends in its own field


class ThinkingParser:
    """One parser per assistant reply. Not thread-safe: one stream feeds it."""

    def __init__(
        self,
        *,
        started_in_thinking: bool = False,
        tag_pairs: tuple[TagPair, ...] = THINKING_TAGS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`started_in_thinking`: the chat template already opened the first pair's
        tag in the prompt, so the reply starts inside thinking and only the closing
        tag will arrive."""
        self._pairs = tag_pairs
        self._clock = clock
        self._mode = _INLINE if started_in_thinking else _OUTSIDE
        self._pair: TagPair | None = tag_pairs[0] if started_in_thinking else None
        # Thinking opened by the prompt, with no inline text yet: a reasoning field
        # arriving now means the server separates thinking itself.
        self._implicit_open = started_in_thinking
        self._held = ""
        self._thinking_parts: list[str] = []
        self._answer_parts: list[str] = []
        self._think_ws = ""  # trailing whitespace of thinking, released if more follows
        self._block_has_text = False
        self._answer_lstrip = True
        self._block_started_at: float | None = None
        self._first_text_at: float | None = None
        self._blocks_seconds = 0.0
        self._seen_thinking = False
        self._finished = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.unfinished = False

    # -- public ---------------------------------------------------------------------

    @property
    def thinking(self) -> str:
        """All thinking text so far (blocks joined by a blank line)."""
        return "".join(self._thinking_parts)

    @property
    def answer(self) -> str:
        """All answer text so far."""
        return "".join(self._answer_parts)

    @property
    def in_thinking(self) -> bool:
        return self._mode != _OUTSIDE

    @property
    def thinking_seconds(self) -> float | None:
        """Total time spent thinking (still counting while inside thinking); None if never."""
        if self.started_at is None:
            return None
        running = 0.0
        if self._block_started_at is not None:
            running = self._clock() - self._block_started_at
        return self._blocks_seconds + running

    def feed(self, text: str | None = None, reasoning: str | None = None) -> list[ThinkingEvent]:
        """Process one stream delta: its content `text` and its reasoning field, if any."""
        if self._finished:
            raise RuntimeError("feed() after finish(): create a new ThinkingParser per reply")
        events: list[ThinkingEvent] = []
        if (text or reasoning) and self._first_text_at is None:
            self._first_text_at = self._clock()
        if reasoning:
            self._feed_reasoning(reasoning, events)
        if text:
            if self._mode == _FIELD:
                # Content after server-side reasoning: the thinking is over.
                self._end_block(events, finished=True)
            self._held += text
            self._scan(events, final=False)
        return events

    def finish(self) -> list[ThinkingEvent]:
        """End of stream: flush held text; thinking still open ends as unfinished."""
        if self._finished:
            return []
        events: list[ThinkingEvent] = []
        self._scan(events, final=True)
        if self._mode != _OUTSIDE:
            # Unfinished only if some thinking text was shown; an empty open tag is noise.
            self.unfinished = self._block_started_at is not None
            self._end_block(events, finished=False)
        self._finished = True
        return events

    # -- internals ------------------------------------------------------------------

    def _feed_reasoning(self, reasoning: str, events: list[ThinkingEvent]) -> None:
        if self._mode == _INLINE and self._implicit_open and not self._block_has_text:
            # The template opened thinking, but the server strips it into the field.
            self._mode = _FIELD
            self._pair = None
            self._implicit_open = False
        elif self._mode == _OUTSIDE:
            self._mode = _FIELD
            self._answer_lstrip = True
        self._emit_thinking(reasoning, events)

    def _watched_tags(self) -> list[tuple[str, TagPair, bool]]:
        """(tag, pair, is_open) the scanner looks for in the current mode."""
        if self._mode == _INLINE and self._pair is not None:
            # Inside thinking only our own closing tag matters; a repeated opening
            # tag (a template that opened it and a model that opens it again) is dropped.
            watched = [(self._pair.close, self._pair, False)]
            if not self._block_has_text:
                watched.append((self._pair.open, self._pair, True))
            return watched
        watched = [(pair.open, pair, True) for pair in self._pairs]
        if not self._seen_thinking:
            # A closing tag with no opening one: the template opened thinking in the prompt.
            watched += [(pair.close, pair, False) for pair in self._pairs]
        return watched

    def _scan(self, events: list[ThinkingEvent], *, final: bool) -> None:
        while True:
            found = self._earliest_tag()
            if found is None:
                break
            index, tag, pair, is_open = found
            self._emit_text(self._held[:index], events)
            self._held = self._held[index + len(tag):]
            self._on_tag(pair, is_open, events)
        if final:
            keep = 0
        else:
            keep = self._possible_tag_prefix()
        flush = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        self._emit_text(flush, events)

    def _earliest_tag(self) -> tuple[int, str, TagPair, bool] | None:
        best: tuple[int, str, TagPair, bool] | None = None
        for tag, pair, is_open in self._watched_tags():
            index = self._held.find(tag)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, tag, pair, is_open)
        return best

    def _possible_tag_prefix(self) -> int:
        """Length of the longest tail of the held text that could begin a watched tag."""
        longest = 0
        held = self._held
        for tag, _pair, _is_open in self._watched_tags():
            for size in range(min(len(tag) - 1, len(held)), longest, -1):
                if tag.startswith(held[-size:]):
                    longest = size
                    break
        return longest

    def _on_tag(self, pair: TagPair, is_open: bool, events: list[ThinkingEvent]) -> None:
        if self._mode == _INLINE:
            if is_open:
                return  # a repeated opening tag at the start of thinking
            self._end_block(events, finished=True)
            return
        if is_open:
            self._mode = _INLINE
            self._pair = pair
            return
        # A closing tag while outside and before any thinking: everything so far
        # was thinking opened by the prompt.
        moved = self.answer
        started = self._first_text_at if self._first_text_at is not None else self._clock()
        self._answer_parts.clear()
        self._seen_thinking = True
        self._answer_lstrip = True
        if moved.strip():
            text = moved.strip()
            self._thinking_parts.append(text)
            self.started_at = started
            self.ended_at = self._clock()
            seconds = self.ended_at - started
            self._blocks_seconds += seconds
            events.append(ThinkingEvent(EventKind.THINKING_STARTED, at=started))
            events.append(ThinkingEvent(EventKind.RECLASSIFIED, text=text))
            events.append(ThinkingEvent(EventKind.THINKING_ENDED, at=self.ended_at,
                                        seconds=seconds))

    def _emit_text(self, text: str, events: list[ThinkingEvent]) -> None:
        if not text:
            return
        if self._mode == _OUTSIDE:
            self._emit_answer(text, events)
        else:
            self._emit_thinking(text, events)

    def _emit_answer(self, text: str, events: list[ThinkingEvent]) -> None:
        if self._answer_lstrip:
            text = text.lstrip()
            if not text:
                return
            self._answer_lstrip = False
        self._answer_parts.append(text)
        events.append(ThinkingEvent(EventKind.ANSWER, text=text))

    def _emit_thinking(self, text: str, events: list[ThinkingEvent]) -> None:
        text = self._think_ws + text
        self._think_ws = ""
        if not self._block_has_text:
            text = text.lstrip()
        body = text.rstrip()
        self._think_ws = text[len(body):]
        if not body:
            return
        if not self._block_has_text:
            self._block_has_text = True
            self._implicit_open = False
            if self._block_started_at is None:
                self._start_block(events)
            if self._thinking_parts:
                body = "\n\n" + body
        self._thinking_parts.append(body)
        events.append(ThinkingEvent(EventKind.THINKING, text=body))

    def _start_block(self, events: list[ThinkingEvent]) -> None:
        now = self._clock()
        self._block_started_at = now
        if self.started_at is None:
            self.started_at = now
        self._seen_thinking = True
        events.append(ThinkingEvent(EventKind.THINKING_STARTED, at=now))

    def _end_block(self, events: list[ThinkingEvent], *, finished: bool) -> None:
        if self._block_started_at is not None:
            now = self._clock()
            seconds = now - self._block_started_at
            self._blocks_seconds += seconds
            self.ended_at = now
            events.append(ThinkingEvent(EventKind.THINKING_ENDED, at=now, seconds=seconds,
                                        finished=finished))
        self._mode = _OUTSIDE
        self._pair = None
        self._implicit_open = False
        self._block_started_at = None
        self._block_has_text = False
        self._think_ws = ""
        self._answer_lstrip = True
        self._seen_thinking = True


def reasoning_of(delta: Mapping[str, Any]) -> str | None:
    """The reasoning text of a stream delta or message: `reasoning` (mlx_lm), else
    `reasoning_content`. mlx_vlm sends both with the same text: use one, never both."""
    for key in ("reasoning", "reasoning_content"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def split_thinking(
    text: str, reasoning: str | None = None, *, started_in_thinking: bool = False
) -> tuple[str, str]:
    """(thinking, answer) of a whole reply, e.g. one read from history or a non-streamed call."""
    parser = ThinkingParser(started_in_thinking=started_in_thinking)
    parser.feed(text, reasoning)
    parser.finish()
    return parser.thinking, parser.answer

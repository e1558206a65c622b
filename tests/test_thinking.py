"""Table tests for the streaming thinking parser: every markup, split tags, odd endings."""

from __future__ import annotations

import pytest

from manager.chat.thinking import (
    EventKind,
    ThinkingEvent,
    ThinkingParser,
    reasoning_of,
    split_thinking,
)
from manager.markup import THINKING_TAGS


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(chunks: list[tuple[str | None, str | None]], *, started_in_thinking: bool = False,
        ) -> tuple[ThinkingParser, list[ThinkingEvent]]:
    parser = ThinkingParser(started_in_thinking=started_in_thinking)
    events: list[ThinkingEvent] = []
    for text, reasoning in chunks:
        events += parser.feed(text, reasoning)
    events += parser.finish()
    return parser, events


def rebuilt(events: list[ThinkingEvent]) -> tuple[str, str]:
    """What a UI that only follows the events would show: (thinking, answer)."""
    thinking, answer = "", ""
    for event in events:
        if event.kind is EventKind.THINKING:
            thinking += event.text
        elif event.kind is EventKind.ANSWER:
            answer += event.text
        elif event.kind is EventKind.RECLASSIFIED:
            thinking, answer = thinking + event.text, ""
    return thinking, answer


T = tuple[str | None, str | None]

# (case id, chunks of (content, reasoning field), started_in_thinking,
#  expected thinking, expected answer, expected unfinished)
CASES: list[tuple[str, list[T], bool, str, str, bool]] = [
    ("plain answer", [("Hello ", None), ("world", None)], False, "", "Hello world", False),
    ("think tags", [("<think>Let me see.</think>It is 4.", None)], False,
     "Let me see.", "It is 4.", False),
    ("think tags with newlines", [("<think>\nstep one\nstep two\n</think>\n\nDone.", None)],
     False, "step one\nstep two", "Done.", False),
    ("thinking tags", [("<thinking>hmm</thinking>ok", None)], False, "hmm", "ok", False),
    ("reasoning tags", [("<reasoning>why</reasoning>because", None)], False,
     "why", "because", False),
    ("mistral THINK brackets", [("[THINK]plan[/THINK]result", None)], False,
     "plan", "result", False),
    ("server reasoning field", [(None, "Need "), (None, "weather."), ("Sunny.", None)], False,
     "Need weather.", "Sunny.", False),
    ("reasoning_content-style field then empty content", [("", "a"), ("", "b"), ("x", "")],
     False, "ab", "x", False),
    ("field and content in one delta", [("Answer", "Thought")], False,
     "Thought", "Answer", False),
    ("template opened think: only the closing tag", [("I should add.", None),
                                                     ("</think>", None), ("5", None)],
     True, "I should add.", "5", False),
    ("closing tag with no opening one is detected", [("I should add.</think>5", None)],
     False, "I should add.", "5", False),
    ("template opened think and the server strips it into the field",
     [(None, "inner"), ("outer", None)], True, "inner", "outer", False),
    ("template opened think and the model opens it again",
     [("<think>again</think>fine", None)], True, "again", "fine", False),
    ("stream ends inside inline thinking", [("<think>still going", None)], False,
     "still going", "", True),
    ("stream ends inside field reasoning", [(None, "still going")], False,
     "still going", "", True),
    ("stream ends inside thinking opened by the template", [("thinking...", None)], True,
     "thinking...", "", True),
    ("stream ends with a partial tag inside thinking", [("<think>abc</thi", None)], False,
     "abc</thi", "", True),
    ("stream ends with a partial opening tag", [("answer <thi", None)], False,
     "", "answer <thi", False),
    ("empty thinking block", [("<think></think>Just this.", None)], False,
     "", "Just this.", False),
    ("two thinking blocks", [("<think>one</think>A <think>two</think>B", None)], False,
     "one\n\ntwo", "A B", False),
    ("other tags inside thinking stay text", [("<think>a <reasoning> b</think>c", None)], False,
     "a <reasoning> b", "c", False),
    ("stray closing tag after thinking stays text",
     [("<think>t</think>use </think> to close", None)], False, "t", "use </think> to close",
     False),
    ("angle brackets that are not tags", [("if a<b and b>c then <x>", None)], False,
     "", "if a<b and b>c then <x>", False),
    ("unicode across chunks", [("<think>é", None), ("ß</think>", None), ("ü", None)], False,
     "éß", "ü", False),
    ("empty and None deltas are ignored", [(None, None), ("", ""), ("ok", None)], False,
     "", "ok", False),
]


@pytest.mark.parametrize(("chunks", "started", "thinking", "answer", "unfinished"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_table(chunks: list[T], started: bool, thinking: str, answer: str,
               unfinished: bool) -> None:
    parser, events = run(chunks, started_in_thinking=started)
    assert (parser.thinking, parser.answer) == (thinking, answer)
    assert rebuilt(events) == (thinking, answer)
    assert parser.unfinished is unfinished
    starts = [e for e in events if e.kind is EventKind.THINKING_STARTED]
    ends = [e for e in events if e.kind is EventKind.THINKING_ENDED]
    assert len(starts) == len(ends) == (thinking.count("\n\n") + 1 if thinking else 0)
    if ends:
        assert ends[-1].finished is (not unfinished)


SPLIT_TEXTS = [f"{pair.open}Let me think{pair.close}The answer" for pair in THINKING_TAGS]


@pytest.mark.parametrize("text", SPLIT_TEXTS, ids=[pair.open for pair in THINKING_TAGS])
def test_every_split_position_of_a_tag_across_two_chunks(text: str) -> None:
    for cut in range(len(text) + 1):
        parser, events = run([(text[:cut], None), (text[cut:], None)])
        assert (parser.thinking, parser.answer) == ("Let me think", "The answer"), cut
        assert rebuilt(events) == ("Let me think", "The answer"), cut


def test_every_split_of_a_lone_closing_tag_with_started_in_thinking() -> None:
    text = "Counting first.</think>Three."
    for cut in range(len(text) + 1):
        parser, _ = run([(text[:cut], None), (text[cut:], None)], started_in_thinking=True)
        assert (parser.thinking, parser.answer) == ("Counting first.", "Three."), cut


def test_one_character_per_chunk() -> None:
    text = "<think>a<b</think>c<d [THINK]"
    parser, events = run([(char, None) for char in text])
    # The last tag opens thinking that never gets any text: nothing to show, not unfinished.
    assert (parser.thinking, parser.answer) == ("a<b", "c<d ")
    assert rebuilt(events) == ("a<b", "c<d ")
    assert parser.unfinished is False


def test_only_a_possible_tag_prefix_is_held_back() -> None:
    parser = ThinkingParser()
    assert [e.text for e in parser.feed("Hello wor")] == ["Hello wor"]
    assert [e.text for e in parser.feed("ld <th")] == ["ld "]  # "<th" may become <think>
    assert [e.text for e in parser.feed("e end")] == ["<the end"]
    assert [e.text for e in parser.feed(" [TH")] == [" "]
    assert [e.text for e in parser.feed("UNDER]")] == ["[THUNDER]"]


def test_thinking_timing_with_a_clock() -> None:
    clock = FakeClock()
    parser = ThinkingParser(clock=clock)
    assert parser.thinking_seconds is None
    started = parser.feed("<think>a")
    assert [(e.kind, e.at) for e in started] == [
        (EventKind.THINKING_STARTED, 100.0), (EventKind.THINKING, None)]
    clock.now = 103.0
    assert parser.thinking_seconds == 3.0  # still thinking: counts up
    parser.feed("b")
    clock.now = 104.5
    ended = parser.feed("</think>Yes")
    assert ended[0] == ThinkingEvent(EventKind.THINKING_ENDED, at=104.5, seconds=4.5)
    assert ended[1] == ThinkingEvent(EventKind.ANSWER, text="Yes")
    clock.now = 200.0
    assert parser.thinking_seconds == 4.5  # stops counting once closed
    assert (parser.started_at, parser.ended_at, parser.in_thinking) == (100.0, 104.5, False)


def test_unfinished_thinking_is_flushed_and_marked() -> None:
    clock = FakeClock()
    parser = ThinkingParser(clock=clock)
    parser.feed(None, "deep thought")
    clock.now = 107.0
    events = parser.finish()
    assert events == [ThinkingEvent(EventKind.THINKING_ENDED, at=107.0, seconds=7.0,
                                    finished=False)]
    assert parser.unfinished and parser.finish() == []


def test_closing_tag_without_opening_reclassifies_the_answer_so_far() -> None:
    clock = FakeClock()
    parser = ThinkingParser(clock=clock)
    first = parser.feed("The user wants ")
    assert [e.kind for e in first] == [EventKind.ANSWER]
    clock.now = 102.0
    events = parser.feed("a sum.</think>\n\n4")
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.ANSWER, EventKind.THINKING_STARTED, EventKind.RECLASSIFIED,
                     EventKind.THINKING_ENDED, EventKind.ANSWER]
    assert events[1].at == 100.0  # thinking began with the first text
    assert events[2].text == "The user wants a sum."
    assert events[3].seconds == 2.0
    assert (parser.thinking, parser.answer) == ("The user wants a sum.", "4")


def test_feed_after_finish_is_a_programming_error() -> None:
    parser = ThinkingParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("late")


@pytest.mark.parametrize(("text", "reasoning", "started", "expected"), [
    ("<think>x</think>y", None, False, ("x", "y")),
    ("x</think>y", None, True, ("x", "y")),
    ("x</think>y", None, False, ("x", "y")),
    ("y", "x", False, ("x", "y")),
    ("[THINK]unterminated", None, False, ("unterminated", "")),
    ("no thinking here", None, False, ("", "no thinking here")),
    ("", None, False, ("", "")),
])
def test_split_thinking(text: str, reasoning: str | None, started: bool,
                        expected: tuple[str, str]) -> None:
    assert split_thinking(text, reasoning, started_in_thinking=started) == expected


@pytest.mark.parametrize(("delta", "expected"), [
    ({"content": "x", "reasoning": "r"}, "r"),  # mlx_lm
    ({"reasoning_content": "r", "reasoning": "r"}, "r"),  # mlx_vlm sends both: once only
    ({"reasoning_content": "rc"}, "rc"),
    ({"reasoning": "", "reasoning_content": "rc"}, "rc"),
    ({"content": "x", "reasoning": None}, None),
    ({}, None),
])
def test_reasoning_of(delta: dict, expected: str | None) -> None:
    assert reasoning_of(delta) == expected

"""The Chat tab's Options values become checked ChatOptions, or a refusal with a reason
(the send handler shows a ValidationError's message as the page's error)."""

from __future__ import annotations

import gradio as gr
import pytest

from components.chat.sending import options_of
from manager.chat.events import ChatOptions, VideoMode
from manager.errors import ValidationError


def test_good_values_become_options() -> None:
    assert options_of(False, 3, 4, "frames") == ChatOptions(
        tools=False, max_tool_rounds=3, max_frames=4, video_mode=VideoMode.FRAMES)
    assert options_of(True, None, None, None) == ChatOptions()


@pytest.mark.parametrize(("rounds", "frames", "video", "error", "message"), [
    (99, 8, "auto", ValidationError, "Max tool rounds must be between 1 and 50"),
    (5, 0, "auto", ValidationError, "Video frames must be between 1 and"),
    (5, 8, "sideways", gr.Error, "Pick how videos are sent: auto or frames"),
])
def test_bad_values_are_refused_with_their_reason(rounds: int, frames: int, video: str,
                                                  error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        options_of(True, rounds, frames, video)

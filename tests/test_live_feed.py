"""What a page's live tick redraws (components/live.py), without a browser."""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.live import LiveFeed, LivePart
from manager.accounts.auth import User
from manager.changes import Changes, Topic
from manager.services import Services


def _feed(services: Services) -> LiveFeed:
    feed = LiveFeed(services)
    feed.add(LivePart(frozenset({Topic.ACCOUNTS}), lambda _user: ("badge",), [gr.Markdown()]))

    def status(_user: User, picked: Any) -> tuple[str]:
        return (f"status of {picked}",)

    feed.add(LivePart(frozenset({Topic.SERVERS}), status, [gr.Markdown()],
                      inputs=[gr.Dropdown()]))
    return feed


def test_the_first_tick_leaves_parts_with_inputs_to_the_page_load(
        services: Services) -> None:
    """Bug: the Chat tab's first tick read its server picker before the page load had
    filled it and drew 'Pick a server' over the load's 'is ready' line."""
    with gr.Blocks():
        feed = _feed(services)
    changes = Changes()
    first = changes.versions()
    drawn = feed.redraw(None, None, first, False, [None])  # type: ignore[arg-type]
    assert drawn[0] == "badge"
    assert isinstance(drawn[1], type(gr.skip()))
    changes.bump(Topic.SERVERS)
    later = feed.redraw(None, first, changes.versions(), False, ["weather"])  # type: ignore[arg-type]
    assert isinstance(later[0], type(gr.skip())) and later[1] == "status of weather"

"""Status lines that must not outlive what they announce (issue 15 item 5): pure pieces
of the Servers and Models tabs."""

from __future__ import annotations

import gradio as gr
import pytest

from components.models_tab import LOCAL, REMOTE, empty_list_text
from components.servers_tab import status_update
from manager.servers.profiles import Backend, Profile
from manager.servers.snapshot import ServerSnapshot
from manager.servers.states import ServerState

TOOLS = Profile(id=7, name="tools", model="m", backend=Backend.MLX_LM, host="127.0.0.1",
                port=8080)


def _snap(state: ServerState) -> ServerSnapshot:
    return ServerSnapshot(profile=TOOLS, state=state, state_since=0.0, model_path="m")


@pytest.mark.parametrize(("state", "line"), [
    (ServerState.READY, "tools is ready on port 8080."),
    (ServerState.FAILED, "tools failed to start: its tile shows why."),
    (ServerState.STOPPED, ""),
])
def test_starting_line_is_replaced_once_the_start_settled(state: ServerState, line: str) -> None:
    assert status_update(7, _snap(state)) == (line, None)


def _skipped(value: object) -> bool:
    return isinstance(value, type(gr.skip()))


def test_starting_line_stays_while_the_start_is_under_way() -> None:
    for state in (ServerState.STARTING, ServerState.STOPPING, ServerState.BACKOFF):
        text, still = status_update(7, _snap(state))
        assert _skipped(text) and _skipped(still)  # the line and its pending id stay
    # A server gone from the list (deleted profile) ends the line too.
    assert status_update(7, None) == ("", None)


def test_nothing_pending_leaves_the_status_alone() -> None:
    """Bug: a live tick that set out before a click on Start (nothing pending then)
    answered after it with pending None, so the new start's "Starting…" line was never
    replaced by "is ready". A tick now writes the pending id only when it settled one."""
    text, still = status_update(None, _snap(ServerState.READY))
    assert _skipped(text) and _skipped(still)


def test_an_empty_list_never_says_no_match_while_the_match_downloads() -> None:
    assert "No models match" in empty_list_text(REMOTE, 0)
    assert empty_list_text(REMOTE, 1) == "The matching model is downloading (above)."
    assert "2 matching models are downloading" in empty_list_text(REMOTE, 2)
    assert "No models match" not in empty_list_text(REMOTE, 1)
    assert "Download one" in empty_list_text(LOCAL, 0)
    assert "download above" in empty_list_text(LOCAL, 1)

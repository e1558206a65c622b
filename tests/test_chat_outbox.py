"""The page's send hands its checked message to the queued step through the outbox
(components/chat/outbox.py), under a token the page sends with that step."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from components.chat.outbox import Outbox, Refused, Taken
from manager.chat.events import ChatOptions, PreparedMessage
from tests.conftest import LiveDashboard


def taken(text: str) -> Taken:
    return Taken(cast(PreparedMessage, text), ChatOptions(), None, None)


def test_each_send_gets_its_own_message_back() -> None:
    """A gr.State was read when the queued step ran: a second send in between replaced
    the first one's message (lost, or sent twice)."""
    outbox = Outbox()
    first, second = outbox.put(taken("first")), outbox.put(Refused("Type a message"))
    assert first != second
    assert outbox.pop(first) == taken("first")
    assert outbox.pop(second) == Refused("Type a message")
    assert outbox.pop(first) is None and outbox.pop(None) is None and outbox.pop("") is None


def test_messages_whose_step_never_came_are_dropped_oldest_first() -> None:
    outbox = Outbox(max_waiting=2)
    tokens = [outbox.put(taken(str(n))) for n in range(3)]
    assert outbox.pop(tokens[0]) is None
    assert outbox.pop(tokens[2]) == taken("2")


def test_the_queued_step_reads_the_token_from_a_component_not_a_state(
        dashboard: LiveDashboard, tmp_path: Path) -> None:
    """The page sends a component's value with the event; a State is read when the event
    runs."""
    dashboard.register("admin@example.com")
    with dashboard.login("admin@example.com") as client:
        config = client.get("/config").json()
    by_id = {c["id"]: c for c in config["components"]}
    outbox = next(c["id"] for c in config["components"]
                  if (c.get("props") or {}).get("elem_id") == "chat-outbox")
    assert by_id[outbox]["type"] == "textbox"
    deps = config["dependencies"]
    takes = [d for d in deps if outbox in d["outputs"]]
    steps = [d for d in deps if d.get("trigger_after") in {t["id"] for t in takes}
             and outbox in d["inputs"]]
    assert takes and steps
    # The open chat's id is a State: the quick step reads it as the person sends, and
    # the queued step does not read it again (a chat opened meanwhile got the message).
    read_by_take = {i for t in takes for i in t["inputs"] if by_id[i]["type"] == "state"}
    assert read_by_take
    for step in steps:
        assert not read_by_take & set(step["inputs"])
        assert step["trigger_mode"] == "multiple"  # a send while another answers is sent

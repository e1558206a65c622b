"""The Chat tab's history filter, read afresh when it gets the focus: new choices, and the
person's pick left alone (the answer can land after they picked another server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from components.chat.layout import ALL_SERVERS, ChatUI
from components.chat.page import ChatPage
from manager.servers.profiles import ProfileSpec
from manager.services import Services

PW = "correct horse battery"


def sets(update: Any) -> dict[str, Any]:
    """What a component update sets: Gradio sends only the arguments it was given."""
    return dict(update._constructor_args[0])


def test_the_refreshed_filter_offers_new_choices_and_keeps_the_pick(
        services: Services, tmp_path: Path) -> None:
    page = ChatPage(services, cast(ChatUI, None))  # the filter's answers draw no component
    model = tmp_path / "model"  # a folder a profile accepts; never started here
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen3"}')
    admin = services.auth.register("admin@example.com", PW)
    eyes = services.profiles.create(None, ProfileSpec(name="eyes", model=str(model), port=18001))
    gone = services.profiles.create(None, ProfileSpec(name="gone", model=str(model), port=18002))
    chat = services.chats.create(admin, "eyes", title="Look", profile_id=eyes.id)
    services.chats.create(admin, "gone", title="Gone", profile_id=gone.id)

    refreshed = sets(page.filter_refresh(admin, eyes.id))
    assert refreshed == {"choices": [("All servers", ALL_SERVERS), ("eyes (1)", eyes.id),
                                     ("gone (1)", gone.id)]}
    assert sets(page.filter_refresh(admin, ALL_SERVERS)) == refreshed

    # The filter names a server whose last chat was deleted: still offered, with none.
    services.chats.delete(admin, chat.id)
    assert sets(page.filter_refresh(admin, eyes.id))["choices"] == [
        ("All servers", ALL_SERVERS), ("gone (1)", gone.id), ("eyes (0)", eyes.id)]

    # The filter names a server that was deleted: it shows all servers again.
    services.profiles.delete(None, gone.id)
    assert sets(page.filter_refresh(admin, gone.id)) == {
        "choices": [("All servers", ALL_SERVERS)], "value": ALL_SERVERS}

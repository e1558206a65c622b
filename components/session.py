"""Who is asking: every handler resolves the signed-in user on the server, never from the page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gradio as gr

from manager.accounts.auth import User
from manager.errors import ManagerError
from manager.services import Services


def user_of(services: Services, request: gr.Request | None) -> User:
    """The active user behind a Gradio request; raises gr.Error when there is none."""
    email = getattr(request, "username", None) if request is not None else None
    user = services.auth.get_by_email(email) if email else None
    if user is None or user.status.value != "active":
        raise gr.Error("Your session has ended. Reload the page to sign in again.")
    return user


def as_gradio_error(exc: ManagerError) -> gr.Error:
    return gr.Error(exc.message)


@dataclass(frozen=True)
class TabLoader:
    """What a tab wants filled when a page opens: a handler and the components it returns."""

    fn: Callable[[gr.Request], tuple]
    outputs: list[gr.components.Component] = field(default_factory=list)

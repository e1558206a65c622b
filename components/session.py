"""Who is asking, and what they are told: the one way a tab's handler starts and fails.

Every handler resolves the signed-in user on the server, never from the page, and a
refusal from the domain (a `ManagerError`) reaches the page as a `gr.Error` with the
domain's own message. `@handler(services)` does both around a function whose first
parameter is the user; `refusals(...)` is the same translation for a block of code.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import gradio as gr

from manager.accounts.auth import User
from manager.errors import ManagerError
from manager.services import Services

if TYPE_CHECKING:
    from components.live import LivePart

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def user_of(services: Services, request: gr.Request | None) -> User:
    """The active user behind a Gradio request; raises gr.Error when there is none."""
    email = getattr(request, "username", None) if request is not None else None
    user = services.auth.get_by_email(email) if email else None
    if user is None or user.status.value != "active":
        raise gr.Error("Your session has ended. Reload the page to sign in again.")
    return user


def refused(exc: ManagerError, what: str) -> gr.Error:
    """The page's error for a refusal; the refusal is logged with what was asked."""
    log.info("%s refused: %s", what, exc.message)
    return gr.Error(exc.message)


def warn(exc: ManagerError, what: str) -> None:
    """Shows a refusal as a warning toast (the handler goes on and returns normally)."""
    log.info("%s refused: %s", what, exc.message)
    gr.Warning(exc.message)


@contextmanager
def refusals(what: str) -> Iterator[None]:
    """Inside this block a ManagerError becomes the page's gr.Error."""
    try:
        yield
    except ManagerError as exc:
        raise refused(exc, what) from exc


def _request_signature(fn: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any], bool]:
    """fn's parameters without the leading user and ending in `request: gr.Request`
    (Gradio reads this signature and these hints to decide what to pass in), and whether
    fn takes the request itself (as its last parameter, named `request`)."""
    params = list(inspect.signature(fn).parameters.values())
    first = params[0].name
    params = params[1:]
    wants_request = bool(params) and params[-1].name == "request"
    if not wants_request:
        params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    params[-1] = params[-1].replace(annotation=gr.Request)
    hints = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != first}
    hints["request"] = gr.Request
    return inspect.Signature(params), hints, wants_request


def handler(services: Services, what: str = "") -> Callable[
        [Callable[Concatenate[User, P], R]], Callable[..., R]]:
    """Decorates `fn(user, *inputs)` into the Gradio handler `(*inputs, request)`
    (`fn(user, *inputs, request)` also gets the request, for the page's address).

    The user is resolved from the request (a gr.Error when the session has ended), and
    a ManagerError raised by fn, also while a generator streams, becomes a gr.Error.
    """

    def decorate(fn: Callable[Concatenate[User, P], R]) -> Callable[..., R]:
        label = what or fn.__name__.strip("_").replace("_", " ")
        signature, hints, wants_request = _request_signature(fn)
        keep = None if wants_request else -1  # how much of the inputs fn gets
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def streaming(*args: Any) -> Any:
                user = user_of(services, args[-1])
                with refusals(f"{label} by {user.email}"):
                    yield from fn(user, *args[:keep])  # type: ignore[call-arg]
            wrapper: Callable[..., Any] = streaming
        else:
            @functools.wraps(fn)
            def plain(*args: Any) -> Any:
                user = user_of(services, args[-1])
                with refusals(f"{label} by {user.email}"):
                    return fn(user, *args[:keep])  # type: ignore[call-arg]
            wrapper = plain
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = hints
        return wrapper

    return decorate


@dataclass(frozen=True)
class TabLoader:
    """What a tab wants filled when a page opens: a handler and the components it returns;
    and what it redraws while the page is open (components/live.py)."""

    fn: Callable[[gr.Request], Any]
    outputs: list[gr.components.Component] = field(default_factory=list)
    live: tuple[LivePart, ...] = ()
    #: What the tab shows when `fn` failed (some of `outputs`; else it stays as built).
    if_failed: Callable[[], dict[Any, Any]] | None = None

"""The first-run banner over the tabs: "Try a tool-use model" in one click.

Shown while this machine has no downloaded model or no profile. It names the curated
model that fits this machine's memory (manager.models.recommended) and runs
manager.chat.first_run.TryToolModel, printing each step as a line; when the flow is
done it opens the Chat tab on the new chat with tools on.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from components.chat.layout import ALL_SERVERS
from components.chat.page import ChatPage
from components.chat.page_views import page_of
from components.chat.status import status_markdown
from components.session import handler
from manager.accounts.auth import User
from manager.chat.first_run import FirstRunFailed, FlowUpdate, Step, TryToolModel
from manager.models.capabilities import memory_budget_bytes
from manager.models.recommended import Suggestion, find, suggest
from manager.services import Services
from manager.units import format_bytes

log = logging.getLogger(__name__)

CHAT_TAB = "chat"
#: Flows that may run at once (each holds a worker while it waits on a download).
MAX_FLOWS = 4


@dataclass(frozen=True)
class FirstRun:
    """The banner's components and the page-open handler that fills them."""

    panel: gr.Group
    intro: gr.Markdown
    button: gr.Button
    progress: gr.Markdown
    chosen: gr.State

    @property
    def outputs(self) -> list[Any]:
        return [self.panel, self.intro, self.button, self.chosen]


def needed(services: Services) -> bool:
    """First run: nothing to chat with yet (no downloaded model, or no profile)."""
    if not services.profiles.list():
        return True
    return not any(model.complete for model in services.library.scan())


def intro_text(suggestion: Suggestion | None, budget_bytes: int) -> str:
    if suggestion is None:
        return ("**New here?** None of the suggested tool-use models fits in the memory "
                f"free on this machine now ({format_bytes(budget_bytes)}). Close other "
                "programs and reload, or look for a smaller model on the Models tab.")
    return (f"**New here?** Try **{suggestion.label}**: it can call tools and fits this "
            f"machine's memory (about {format_bytes(suggestion.download_bytes)} to "
            "download). One click downloads it, makes its profile, starts its server and "
            "opens a chat with tools on. Or find other models on the Models tab.")


def progress_markdown(lines: list[FlowUpdate], failure: str = "") -> str:
    """The flow's lines so far; a download's progress line replaces the previous one."""
    shown: list[str] = []
    for i, update in enumerate(lines):
        later = lines[i + 1] if i + 1 < len(lines) else None
        if (later is not None and update.step is Step.DOWNLOAD
                and update.text.startswith("Downloading:")
                and later.text.startswith("Downloading:")):
            continue  # an older progress figure
        if (later is not None and update.step is Step.START
                and update.text.startswith("Loading the model (")
                and later.text.startswith("Loading the model (")):
            continue
        shown.append(f"- {update.text}")
    if failure:
        shown.append(f"- ⚠ {html.escape(failure)}")
    return "\n".join(shown)


def build() -> FirstRun:
    with gr.Group(visible=False, elem_id="first-run") as panel:
        intro = gr.Markdown(elem_id="first-run-intro")
        button = gr.Button("Try a tool-use model", variant="primary", size="sm",
                           elem_id="first-run-try")
        progress = gr.Markdown(elem_id="first-run-progress")
    chosen = gr.State("")  # the repo id the banner offered (checked against the list)
    return FirstRun(panel, intro, button, progress, chosen)


def load_values(services: Services, parts: FirstRun) -> dict[Any, Any]:
    """What the banner shows when a page opens."""
    if not needed(services):
        return {parts.panel: gr.Group(visible=False), parts.intro: "",
                parts.button: gr.Button(visible=False), parts.chosen: ""}
    budget = memory_budget_bytes()
    suggestion = suggest(budget)
    return {parts.panel: gr.Group(visible=True), parts.intro: intro_text(suggestion, budget),
            parts.button: gr.Button(visible=suggestion is not None),
            parts.chosen: suggestion.repo_id if suggestion is not None else ""}


def wire(services: Services, parts: FirstRun, tabs: gr.Tabs, page: ChatPage) -> None:
    """The button: the flow's lines in the banner, then the Chat tab on the new chat."""
    flow = TryToolModel(downloads=services.downloads, profiles=services.profiles,
                        placement=services.placement, supervisor=services.supervisor,
                        chats=services.chats, engine=services.chat_engine)
    ui = page.ui

    @handler(services, "trying a tool-use model")
    def run(user: User, repo_id: str, request: gr.Request) -> Iterator[dict[Any, Any]]:
        suggestion = find(repo_id or "")
        if suggestion is None:
            raise gr.Error("Reload the page: the suggested model is no longer on the list.")
        lines: list[FlowUpdate] = []
        yield {parts.button: gr.Button(interactive=False, value="Working…"),
               parts.progress: ""}
        try:
            for update in flow.run(user, suggestion):
                lines.append(update)
                if not update.done:
                    yield {parts.progress: progress_markdown(lines)}
                    continue
                yield opened(user, update, lines, page_of(user, request))
                return
        except FirstRunFailed as exc:
            log.info("trying %s for %s stopped at %s: %s", suggestion.repo_id, user.email,
                     exc.step.value, exc.message)
            yield {parts.progress: progress_markdown(lines, exc.message),
                   parts.button: gr.Button(interactive=True, value="Try again")}

    def opened(user: User, update: FlowUpdate, lines: list[FlowUpdate], session: str | None
               ) -> dict[Any, Any]:
        profile = services.profiles.get(update.profile_id or 0)
        chat = services.chats.get(user, update.chat_id or 0)
        page.views.opened(session, chat.id, profile.id)
        return {parts.progress: progress_markdown(lines),
                parts.button: gr.Button(interactive=True, value="Try a tool-use model"),
                tabs: gr.Tabs(selected=CHAT_TAB),
                ui.server: page.server_update(profile),
                ui.server_status: status_markdown(services, profile),
                ui.current: chat.id, ui.title: chat.summary.title, ui.chatbot: [],
                ui.chat_list: page.sidebar(user, ALL_SERVERS, "", chat.id),
                ui.tools_on: True}

    parts.button.click(
        run, parts.chosen,
        [parts.button, parts.progress, tabs, ui.server, ui.server_status, ui.current,
         ui.title, ui.chatbot, ui.chat_list, ui.tools_on],
        api_name="first_run_try", concurrency_limit=MAX_FLOWS)

"""Sending in the Chat tab: a message (with attachments) or a retry streams the answer to
the page as it happens (thinking and tool panels included), Stop keeps what was said."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import Any

import gradio as gr

from components.chat.attachments import message_parts
from components.chat.outbox import Refused, Taken
from components.chat.page import ChatPage
from components.chat.page_views import page_of
from components.chat.status import server_state, status_markdown
from components.chat_view import TurnView, chatbot_messages
from components.session import handler
from manager.accounts.auth import User
from manager.chat.events import (
    DEFAULT_MAX_TOOL_ROUNDS,
    ChatEventKind,
    ChatOptions,
    EventStream,
    PreparedMessage,
    VideoMode,
)
from manager.errors import ManagerError
from manager.servers.profiles import Profile
from manager.servers.supervisor import ACTIVE_STATES

log = logging.getLogger(__name__)

#: How often a streaming answer is pushed to the page (structural events go at once).
PUSH_EVERY_S = 0.08
#: Each redraw draws the whole growing message again (its markdown), so a long answer
#: pushed every PUSH_EVERY_S costs the page more per second than it has and the text
#: falls behind the model: past this many characters redrawn per second the pushes
#: space out, up to PUSH_MAX_S apart.
REDRAW_CHARS_PER_S = 40_000
PUSH_MAX_S = 0.4
#: How long Stop waits for the stopped generation to save its partial answer.
STOP_WAIT_S = 10.0
STILL_ANSWERING = ("This chat is still answering: wait for it, or Stop it, before sending "
                   "another message here.")
#: Generations that may stream at the same time (each waits on its own server).
CHAT_CONCURRENCY = 16
_STRUCTURAL = frozenset({
    ChatEventKind.USER, ChatEventKind.ROUND, ChatEventKind.THINKING_STARTED,
    ChatEventKind.THINKING_ENDED, ChatEventKind.TOOL_STARTED, ChatEventKind.TOOL_FINISHED,
    ChatEventKind.ERROR, ChatEventKind.DONE,
})
_STREAMED = frozenset({ChatEventKind.ANSWER, ChatEventKind.THINKING})


def push_interval(streamed_chars: int) -> float:
    """Seconds between two pushes of an answer that has `streamed_chars` so far: about
    12 a second for a short one, fewer as it grows (issue 12 goal 5)."""
    return min(PUSH_MAX_S, max(PUSH_EVERY_S, streamed_chars / REDRAW_CHARS_PER_S))


def options_of(tools: bool, rounds: float | None, frames: float | None,
               video: str | None) -> ChatOptions:
    """The Options accordion's values, checked (a ValidationError names what is wrong)."""
    try:
        mode = VideoMode(video or VideoMode.AUTO.value)
    except ValueError as exc:
        log.info("chat options refused: %s", exc)
        raise gr.Error("Pick how videos are sent: auto or frames.") from exc
    return ChatOptions(
        tools=bool(tools),
        max_tool_rounds=int(rounds if rounds is not None else DEFAULT_MAX_TOOL_ROUNDS),
        max_frames=int(frames if frames is not None else ChatOptions().max_frames),
        video_mode=mode).checked()


def stop_button(running: bool) -> Any:
    """Stop is red and clickable only while an answer is being written; grey at rest."""
    return gr.Button(variant="stop" if running else "secondary", interactive=running)


def wire(page: ChatPage) -> None:
    services, ui = page.services, page.ui
    engine, chats = services.chat_engine, services.chats

    def stream(user: User, chat_id: int, history: Sequence[Any], events: EventStream,
               search_text: str, shown: Any, profile: Profile, session: str | None,
               title: str, first: dict[Any, Any]) -> Iterator[dict[Any, Any]]:
        """Push the turn to the page as it happens (`first` with the first update), then
        show exactly what was saved. Once the page shows another chat, the turn goes on
        (and is saved) without drawing. `title` is the one the page showed as it began."""
        view = TurnView(history)
        pushed = 0.0
        streamed = 0  # characters of thinking and answer so far
        views = page.views
        views.started(session, chat_id)  # before Stop turns red: another turn's end sees it
        try:
            yield {**first, ui.stop: stop_button(True)}
            with closing(events):
                for event in events:
                    view.apply(event)
                    if event.kind in _STREAMED:
                        streamed += len(event.text)
                    now = time.monotonic()
                    if event.kind in _STRUCTURAL or now - pushed >= push_interval(streamed):
                        pushed = now
                        # Unseen, it still yields: a cancel (Stop) closes it at a yield.
                        yield {ui.chatbot: view.messages() if views.shows(session, chat_id)
                               else gr.skip()}
        finally:
            views.ended(session, chat_id)
        rest = stop_button(bool(views.running(session)))  # another turn may stream on
        if views.shows(session, chat_id):
            chat = chats.get(user, chat_id)
            last = {ui.chatbot: chatbot_messages(chat.messages),
                    ui.chat_list: page.sidebar(user, shown, search_text, chat_id),
                    ui.server_status: status_markdown(services, profile), ui.stop: rest}
            if chat.summary.title != title:
                # Named after its first message: else the box keeps what the person may
                # be typing there meanwhile (a new title, not saved yet).
                last[ui.title] = chat.summary.title
            if views.shows(session, chat_id):  # again: the reads took a while
                yield last
                return
        # Unseen: the list still shows the chat's news, marking the one the page shows.
        yield {ui.chat_list: page.sidebar(user, shown, search_text, views.chat_of(session)),
               ui.stop: rest}

    def claim_chat(chat_id: Any, session: str | None) -> tuple[int | None, int | None]:
        """The open chat's id and this send's claim on it (None, None for a new chat).
        A chat that is answering is refused a second message: they would interleave."""
        if chat_id is None or not str(chat_id).strip().isdigit():
            return None, None
        current = int(str(chat_id).strip())
        claim = page.views.claim(session, current)
        if claim is None or engine.running(current):
            page.views.unclaim(session, current, claim)
            raise gr.Error(STILL_ANSWERING)
        return current, claim

    def checked(box_value: Any, ref: Any, tools: bool, rounds: float, frames: float,
                video: str) -> tuple[PreparedMessage, ChatOptions]:
        """The message and options, checked: a refusal sends and saves nothing."""
        profile = page.profile_of(ref)
        options = options_of(tools, rounds, frames, video)
        text, files = message_parts(box_value)
        prepared = engine.prepare(profile.id, text, files, options)
        if server_state(services, profile) not in ACTIVE_STATES:
            # What its start would refuse is said while the box still holds the message.
            services.placement.check_startable(profile)
        return prepared, options

    def turn(user: User, prepared: PreparedMessage, options: ChatOptions,
             chat_id: int | None, search_text: str, shown: Any, first: dict[Any, Any],
             session: str | None) -> Iterator[dict[Any, Any]]:
        """Save and send a checked message, streaming its turn (`first` goes with the
        first update)."""
        profile = prepared.profile
        chat = chats.get(user, int(chat_id)) if chat_id is not None else None
        seen = page.views.version(session)
        started = server_state(services, profile) not in ACTIVE_STATES
        if started:
            # A stopped or failed server is started (which can take seconds); the message
            # waits for it. A start refused makes no chat.
            services.placement.start(user, profile.id)
        summary = chat.summary if chat is not None else engine.start_chat(user, profile)
        history = list(chat.messages) if chat is not None else []
        settled = page.views.settle(session, seen, summary.id, profile.id)
        if settled.chat:
            first = {**first, ui.chatbot: chatbot_messages(history), ui.current: summary.id,
                     ui.chat_list: page.sidebar(user, shown, search_text, summary.id)}
            if chat is None:  # an open chat's title box may hold a new title being typed
                first[ui.title] = summary.title
            if started and settled.pick:
                first[ui.server_status] = status_markdown(services, profile, started=True)
        else:  # the page opened another chat while the server started: listed, not shown
            first = {**first, ui.chat_list: page.sidebar(user, shown, search_text,
                                                         page.views.chat_of(session))}
        yield from stream(user, summary.id, history,
                          engine.send(user, summary.id, prepared, options), search_text,
                          shown, profile, session, summary.title, first)

    @handler(services, "sending a chat message")
    def send(user: User, box_value: Any, ref: Any, chat_id: int | None, tools: bool,
             rounds: float, frames: float, video: str, search_text: str, shown: Any,
             request: gr.Request) -> Iterator[dict[Any, Any]]:
        """API clients' send: one event takes the box's value and empties it."""
        session = page_of(user, request)
        # A refusal here sends and saves nothing; the box keeps the message to fix it.
        current, claim = claim_chat(chat_id, session)
        try:
            prepared, options = checked(box_value, ref, tools, rounds, frames, video)
            yield from turn(user, prepared, options, current, search_text, shown,
                            {ui.box: gr.MultimodalTextbox(value=None)}, session)
        finally:
            page.views.unclaim(session, current, claim)

    @handler(services, "taking a chat message")
    def take(user: User, box_value: Any, ref: Any, chat_id: int | None, tools: bool,
             rounds: float, frames: float, video: str, request: gr.Request
             ) -> tuple[Any, str]:
        """The page's send, first step: the checked message goes to the outbox and the box
        empties, in a quick event of its own. Emptied by the streaming turn instead, the
        box kept a sent image when the page was slow (Gradio re-synced the box's old value
        during the turn's status updates); a refusal leaves the box as it was."""
        session = page_of(user, request)
        try:
            current, claim = claim_chat(chat_id, session)
        except gr.Error as exc:
            return gr.skip(), page.outbox.put(Refused(str(exc.message)))
        try:
            prepared, options = checked(box_value, ref, tools, rounds, frames, video)
        except (gr.Error, ManagerError) as exc:
            page.views.unclaim(session, current, claim)
            log.info("chat message from %s refused: %s", user.email, exc.message)
            return gr.skip(), page.outbox.put(Refused(str(exc.message)))
        except BaseException:
            page.views.unclaim(session, current, claim)  # no step follows to release it
            raise
        return (gr.MultimodalTextbox(value=None),
                page.outbox.put(Taken(prepared, options, current, claim)))

    @handler(services, "sending a chat message")
    def send_taken(user: User, token: str | None, search_text: str, shown: Any,
                   request: gr.Request) -> Iterator[dict[Any, Any]]:
        """The page's send, second step: the taken message, streamed to the chat that was
        open when it was sent."""
        taken = page.outbox.pop(token)
        if isinstance(taken, Refused):
            raise gr.Error(taken.message)
        if taken is None:
            raise gr.Error("Nothing to send: type a message first.")
        session = page_of(user, request)
        try:
            yield from turn(user, taken.prepared, taken.options, taken.chat_id, search_text,
                            shown, {}, session)
        finally:
            page.views.unclaim(session, taken.chat_id, taken.claim)

    @handler(services, "retrying a chat turn")
    def retry_turn(user: User, ref: Any, chat_id: int | None, tools: bool, rounds: float,
                   frames: float, video: str, search_text: str, shown: Any,
                   request: gr.Request) -> Iterator[dict[Any, Any]]:
        profile = page.profile_of(ref)
        options = options_of(tools, rounds, frames, video)
        if chat_id is None:
            raise gr.Error("Nothing to retry yet: send a message first.")
        session = page_of(user, request)
        current, claim = claim_chat(chat_id, session)
        try:
            yield from retried_turn(user, profile, options, current, search_text, shown,
                                    session)
        finally:
            page.views.unclaim(session, current, claim)

    def retried_turn(user: User, profile: Profile, options: ChatOptions, chat_id: Any,
                     search_text: str, shown: Any, session: str | None
                     ) -> Iterator[dict[Any, Any]]:
        chat = page.read_chat(user, chat_id)
        last_user = next((m for m in reversed(chat.messages) if m.role == "user"), None)
        if last_user is None:
            raise gr.Error("Nothing to retry yet: send a message first.")
        history = [m for m in chat.messages if m.position <= last_user.position]
        page.views.opened(session, chat.id, profile.id)
        yield from stream(user, chat.id, history,
                          engine.retry(user, chat.id, profile.id, options), search_text,
                          shown, profile, session, chat.summary.title, {})

    @handler(services, "stopping a chat turn")
    def after_stop(user: User, chat_id: int | None, request: gr.Request) -> tuple[Any, Any]:
        """Stop the page's turns, which may stream to a chat it no longer shows; then show
        what the open chat saved (a stopped answer's part, marked)."""
        session = page_of(user, request)
        page.views.unclaim_all(session)  # sends still queued were cancelled with the rest
        running = page.views.running(session)
        if not running and chat_id is not None:
            running = [page.read_chat(user, chat_id).id]
        # Gradio cancels the generation too, but its generator, busy in a worker thread,
        # closes only once it yields: the engine is told directly, and saves the partial
        # answer as the turn ends.
        for each in running:
            engine.stop(each)
        deadline = time.monotonic() + STOP_WAIT_S  # one wait for them all
        for each in running:
            if not engine.wait_idle(each, max(0.0, deadline - time.monotonic())):
                log.warning("chat %s still answering %.0f s after Stop", each, STOP_WAIT_S)
        # Red while a turn sent after the Stop runs (the stopped ones may not have closed).
        rest = stop_button(bool(set(page.views.running(session)) - set(running)))
        if chat_id is None:
            return gr.skip(), rest
        chat = page.read_chat(user, chat_id)
        # Opened meanwhile, another chat is not drawn over.
        shown = page.views.shows(session, chat.id)
        return chatbot_messages(chat.messages) if shown else gr.skip(), rest

    @handler(services, "a chat turn's end")
    def stop_at_rest(user: User, request: gr.Request) -> Any:
        """After a turn ended (in an error too): Stop stays red while another streams."""
        return stop_button(bool(page.views.running(page_of(user, request))))

    @handler(services, "listing chat tools")
    def list_tools(_user: User) -> str:
        toolset = services.tools.toolset()
        lines = [f"- **{t.name}** ({t.server}): {t.description}" for t in toolset.tools]
        lines += [f"- ⚠️ MCP server *{p.server}*: {p.message}" for p in toolset.problems]
        return "\n".join(lines) or "No tools are available."

    # Several turns of one page may run (in different chats: one_turn_at_a_time), so a
    # send while another answers is not skipped by the page (Gradio's default, "once").
    turn_outputs = [ui.chatbot, ui.current, ui.title, ui.chat_list, ui.stop, ui.server_status]
    api_sent = ui.api_send.click(send, [ui.box, ui.server, ui.current, *ui.options, ui.shown],
                                 [ui.chatbot, ui.current, ui.box, ui.title, ui.chat_list,
                                  ui.stop, ui.server_status],
                                 api_name="chat_send", concurrency_limit=CHAT_CONCURRENCY,
                                 show_progress="minimal", show_progress_on=ui.chatbot,
                                 trigger_mode="multiple")
    taken = ui.box.submit(take, [ui.box, ui.server, ui.current, *ui.send_options],
                          [ui.box, ui.outbox], queue=False, show_progress="hidden",
                          api_visibility="private", trigger_mode="multiple")
    sent = taken.success(send_taken, [ui.outbox, ui.search, ui.shown],
                         turn_outputs, concurrency_limit=CHAT_CONCURRENCY,
                         show_progress="minimal", show_progress_on=ui.chatbot,
                         api_visibility="private", trigger_mode="multiple")
    retried = ui.retry.click(retry_turn, [ui.server, ui.current, *ui.options, ui.shown],
                             [ui.chatbot, ui.title, ui.chat_list, ui.stop, ui.server_status],
                             api_name="chat_retry", concurrency_limit=CHAT_CONCURRENCY,
                             show_progress="minimal", show_progress_on=ui.chatbot,
                             trigger_mode="multiple")
    # A turn that ended in an error leaves Stop grey too (the page runs a `then` only
    # after a success).
    for turn_event in (sent, api_sent, retried):
        for after in (turn_event.then, turn_event.failure):
            after(stop_at_rest, None, ui.stop, show_progress="hidden",
                  api_visibility="private")
    # The page sends the cancel once the click's own event is done: keep that event empty,
    # then show what the stopped turn saved.
    ui.stop.click(None, None, None, cancels=[sent, api_sent, retried]).then(
        after_stop, ui.current, [ui.chatbot, ui.stop], api_name="chat_stop")
    ui.show_tools.click(list_tools, None, ui.tools_md, api_name="chat_tools")

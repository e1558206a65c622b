"""Chat turns: attachments checked against the model, OpenAI messages, streaming with
thinking separated from the answer, the MCP tool loop, and every message saved as it happens.

`ChatEngine.prepare` checks a new message before anything is sent or saved (an image
for a text-only model, a damaged file, a video that is too long: a clear
ValidationError). `ChatEngine.send` saves the user's message, then answers it;
`ChatEngine.retry` drops the last answer and asks again. Both yield `ChatEvent`s that
any UI can show: thinking started / text / ended (with seconds), answer text, each
tool call and its result, the request's token figures, notes and errors.

A turn is one or more requests ("rounds"): when the model asks for tools, each call
runs through the MCP toolbox, the assistant's tool calls and the tool results are
appended, and the model is asked again, at most `max_tool_rounds` times. Problems in
the middle (the server died, timed out, is still loading; the user pressed Stop) end
the turn with an error event; what was said so far stays saved and the next message
works as usual.

Saved as it happens: the user message (with its attachments, copied under the data
dir) when it is sent; each assistant reply when its first output arrives, then
updated in place while it grows; each tool result as it completes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from manager.accounts.auth import User
from manager.chat.attachments import AttachmentError
from manager.chat.events import (
    DEFAULT_OPTIONS,
    NOT_RUN,
    AnswerStats,
    AttachmentKind,
    ChatEvent,
    ChatEventKind,
    ChatOptions,
    EventStream,
    PreparedMessage,
    ToolCall,
    ToolOutcome,
    VideoMode,
)
from manager.chat.history import ChatHistory, ChatSummary, Message, NewMessage
from manager.chat.message_parts import MessageMedia
from manager.chat.requests import (
    Draft,
    assistant_openai,
    attachment_kind,
    native_video_fits,
    tool_refusal,
)
from manager.chat.thinking import EventKind as ThinkingKind
from manager.chat.thinking import ThinkingEvent
from manager.chat.tools import McpToolbox
from manager.errors import Conflict, ManagerError, ValidationError
from manager.models.capabilities import Capabilities, detect
from manager.servers.inference import InferenceClient, RequestStats
from manager.servers.profiles import Profile, ProfileService
from manager.servers.supervisor import Supervisor

log = logging.getLogger(__name__)

#: What a stopped answer says of itself (saved with it as its error).
STOPPED = "Stopped before the answer was complete."

MAX_TEXT = 100_000
#: A growing answer is written to SQLite at most this often (and once more at the end).
SAVE_EVERY_S = 1.0


# --- the engine ---------------------------------------------------------------------------


class ChatEngine:
    """Runs chat turns for any UI; safe to share between threads (state lives per turn)."""

    def __init__(self, *, chats: ChatHistory, inference: InferenceClient, tools: McpToolbox,
                 supervisor: Supervisor, profiles: ProfileService,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._chats = chats
        self._inference = inference
        self._tools = tools
        self._supervisor = supervisor
        self._profiles = profiles
        self._clock = clock
        self._media = MessageMedia()
        # Chats with a turn in progress, so Stop can wait for the save.
        self._turns = threading.Condition()
        self._running: set[int] = set()
        self._stops: set[int] = set()  # chats whose running turn was asked to stop

    # -- public ---------------------------------------------------------------------------

    def start_chat(self, owner: User, profile: Profile) -> ChatSummary:
        """A new, empty chat on this profile's server."""
        return self._chats.create(owner, profile.name, model=profile.model,
                                  profile_id=profile.id)

    def capabilities(self, profile: Profile) -> Capabilities:
        """What the profile's model can do, read from its files."""
        snap = self._supervisor.snapshot(profile.id)
        model_dir = snap.model_path if snap is not None and snap.model_path else ""
        return detect(Path(model_dir) if model_dir
                      else self._profiles.resolve_model(profile.model))

    def prepare(self, profile_id: int, text: str, attachments: Sequence[Path | str],
                options: ChatOptions = DEFAULT_OPTIONS) -> PreparedMessage:
        """Check a new message before anything is sent or saved; raises ValidationError
        (AttachmentError for files) with a message saying what to change."""
        options = options.checked()
        profile = self._profiles.get(profile_id)
        text = text or ""
        paths = tuple(Path(p) for p in attachments)
        if not text.strip() and not paths:
            raise ValidationError("Type a message or attach an image or a video.", "text")
        if len(text) > MAX_TEXT:
            raise ValidationError(f"That message is too long ({len(text):,} characters; "
                                  f"the limit is {MAX_TEXT:,}).", "text")
        kinds = tuple(attachment_kind(p) for p in paths)
        notes: list[str] = []
        parts: list[tuple[dict[str, Any], ...] | None] = []
        if paths:
            caps = self.capabilities(profile)
            for path, kind in zip(paths, kinds, strict=True):
                if not caps.multimodal:
                    what = "images" if kind is AttachmentKind.IMAGE else "videos"
                    raise AttachmentError(
                        f"{profile.name} runs a text-only model: it cannot read {what}, so "
                        f"{path.name} was not sent. Pick a vision model's server, or remove "
                        "the attachment.")
                note, made = self._media.check(path, kind, caps, profile, options, text)
                notes += note
                parts.append(made)
        return PreparedMessage(profile, text, paths, kinds, tuple(notes), tuple(parts))

    def send(self, owner: User, chat_id: int, prepared: PreparedMessage,
             options: ChatOptions = DEFAULT_OPTIONS) -> EventStream:
        """Save the user's message, then answer it (events as they happen)."""
        options = options.checked()
        chat = self._chats.get(owner, chat_id)  # the owner check, before anything is saved
        if not native_video_fits(chat.messages, adding=1):
            prepared = self._media.frames_instead(
                prepared, options, self.capabilities(prepared.profile))
        meta = {"notes": list(prepared.notes)} if prepared.notes else {}
        with self._one_turn(chat_id):
            user_message = self._chats.add_message(
                owner, chat_id, NewMessage("user", prepared.text, meta=meta),
                prepared.attachments)
            for stored, kind, made in zip(user_message.attachments, prepared.kinds,
                                          prepared.parts, strict=False):
                if made is not None:
                    self._media.remember(stored.path, kind, options, list(made))
            yield ChatEvent(ChatEventKind.USER, message=user_message)
            for note in prepared.notes:
                # `message`: the note belongs to (and is saved with) the user's message.
                yield ChatEvent(ChatEventKind.NOTE, text=note, message=user_message)
            yield from self._answer_turn(owner, chat_id, prepared.profile,
                                         (*chat.messages, user_message), options)

    def turn(self, owner: User, chat_id: int, profile_id: int, text: str,
             attachments: Sequence[Path | str] = (), options: ChatOptions = DEFAULT_OPTIONS
             ) -> EventStream:
        """prepare + send; a refused message (also one sent while the chat still answers)
        ends in an ERROR event and nothing is saved."""
        try:
            prepared = self.prepare(profile_id, text, attachments, options)
            sent = self.send(owner, chat_id, prepared, options)
            first = next(sent)  # a chat that still answers refuses here, before a save
        except ManagerError as exc:
            log.info("message to chat %s refused: %s", chat_id, exc.message)
            yield ChatEvent(ChatEventKind.ERROR, text=exc.message)
            yield ChatEvent(ChatEventKind.DONE)
            return
        yield first
        yield from sent

    def retry(self, owner: User, chat_id: int, profile_id: int,
              options: ChatOptions = DEFAULT_OPTIONS) -> EventStream:
        """Drop everything after the last user message and answer it again."""
        options = options.checked()
        profile = self._profiles.get(profile_id)
        chat = self._chats.get(owner, chat_id)
        last_user = next((m for m in reversed(chat.messages) if m.role == "user"), None)
        if last_user is None:
            raise ValidationError("There is no message to answer again yet.")
        with self._one_turn(chat_id):
            self._chats.truncate(owner, chat_id, last_user.position + 1)
            chat = self._chats.get(owner, chat_id)
            yield from self._answer_turn(owner, chat_id, profile, chat.messages, options)

    def running(self, chat_id: int) -> bool:
        """Whether a turn of this chat is being answered right now."""
        with self._turns:
            return chat_id in self._running

    def stop(self, chat_id: int) -> bool:
        """Ask this chat's running turn to end after the chunk it is reading; it saves
        what arrived, marked as stopped. Closing the turn's generator does the same, but
        a generator busy in another thread (Gradio's, under load) cannot be closed until
        it yields, so Stop does not rely on that alone. False if nothing was running."""
        with self._turns:
            if chat_id not in self._running:
                return False
            self._stops.add(chat_id)
            return True

    def _stop_asked(self, chat_id: int) -> bool:
        with self._turns:
            return chat_id in self._stops

    def wait_idle(self, chat_id: int, timeout: float) -> bool:
        """Wait (bounded) until no turn of this chat runs, e.g. after Stop: the partial
        answer is saved when the stopped turn closes. False if still running."""
        with self._turns:
            return self._turns.wait_for(lambda: chat_id not in self._running, timeout)

    def openai_messages(self, messages: Sequence[Message], profile: Profile,
                        caps: Capabilities, options: ChatOptions) -> list[dict[str, Any]]:
        """Stored messages as an OpenAI request's `messages` (attachments as parts)."""
        out: list[dict[str, Any]] = []
        answered: set[str] = {m.tool_call_id for m in messages
                              if m.role == "tool" and m.tool_call_id}
        open_calls: set[str] = set()
        for message in messages:
            if message.role == "user":
                out.append({"role": "user",
                            "content": self._media.user_content(message, profile, caps, options)})
            elif message.role == "system":
                out.append({"role": "system", "content": message.content})
            elif message.role == "assistant":
                entry = assistant_openai(message)
                if entry is None:
                    continue
                out.append(entry)
                for call in entry.get("tool_calls", []):
                    open_calls.add(call["id"])
                    if call["id"] not in answered:
                        # Stopped before the tool ran: every call still needs its answer.
                        out.append({"role": "tool", "tool_call_id": call["id"],
                                    "name": call["function"]["name"],
                                    "content": "Not run: the chat was stopped first."})
            elif message.role == "tool" and message.tool_call_id in open_calls:
                out.append({"role": "tool", "tool_call_id": message.tool_call_id,
                            "name": message.tool_name or "", "content": message.content})
        return out

    # -- internals: answering ---------------------------------------------------------------

    @contextmanager
    def _one_turn(self, chat_id: int) -> Iterator[None]:
        """One turn at a time per chat, from its message being saved to its answer's end:
        two at once would interleave their messages (two pages, an API client, a double
        send). Raises Conflict while one runs."""
        with self._turns:
            if chat_id in self._running:
                raise Conflict("This chat is still answering: wait for it, or stop it, "
                               "before sending another message here.")
            self._running.add(chat_id)
        try:
            yield
        finally:
            with self._turns:
                self._running.discard(chat_id)
                self._stops.discard(chat_id)
                self._turns.notify_all()

    def _answer_turn(self, owner: User, chat_id: int, profile: Profile,
                     history: Sequence[Message], options: ChatOptions
                     ) -> Iterator[ChatEvent]:
        notes: list[str] = []
        if not native_video_fits(history):
            options = replace(options, video_mode=VideoMode.FRAMES)
        try:
            caps = self.capabilities(profile)
            messages = self.openai_messages(history, profile, caps, options)
        except ManagerError as exc:
            log.info("chat %s cannot be answered by %s: %s", chat_id, profile.name,
                     exc.message)
            yield from self._fail(owner, chat_id, profile, exc.message)
            return
        tools: list[dict[str, Any]] = []
        if options.tools:
            toolset = self._tools.toolset()
            for problem in toolset.problems:
                notes.append(f"Tools of the MCP server '{problem.server}' are not available: "
                             f"{problem.message}")
            tools = toolset.openai_tools()
        for note in notes:
            yield ChatEvent(ChatEventKind.NOTE, text=note)
        rounds_run = 0
        number = 0
        while not self._stop_asked(chat_id):
            number += 1
            draft = Draft(profile, number, notes=notes if number == 1 else [])
            yield ChatEvent(ChatEventKind.ROUND, round=number)
            yield from self._stream_round(owner, chat_id, draft, messages, tools,
                                          options.sampling())
            if draft.error:
                yield ChatEvent(ChatEventKind.ERROR, text=draft.error, round=number)
                break
            calls = draft.calls.calls()
            if not calls:
                break
            assistant = {"role": "assistant", "content": draft.parser.answer,
                         "tool_calls": [c.openai() for c in calls]}
            refusal = tool_refusal(calls, options, rounds_run)
            if refusal is not None:
                reason, why = refusal
                for call in calls:
                    yield from self._save_tool(owner, chat_id, call,
                                               ToolOutcome(NOT_RUN, f"Not run: {reason}."))
                draft.error = why
                self._save(owner, chat_id, draft, force=True)
                yield ChatEvent(ChatEventKind.ERROR, text=why, round=number)
                break
            messages.append(assistant)
            for call in calls:
                yield ChatEvent(ChatEventKind.TOOL_STARTED, call=call, round=number)
                outcome = ToolOutcome.of(self._tools.call(call.name, call.arguments,
                                                          timeout=options.tool_timeout))
                yield from self._save_tool(owner, chat_id, call, outcome)
                messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                                 "content": outcome.text})
            rounds_run += 1
        yield ChatEvent(ChatEventKind.DONE)

    def _stream_round(self, owner: User, chat_id: int, draft: Draft,
                      messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                      sampling: dict[str, Any] | None = None) -> Iterator[ChatEvent]:
        body: dict[str, Any] = {"messages": messages, **(sampling or {})}
        if tools:
            body["tools"] = tools
        received: list[RequestStats] = []
        try:
            stream = self._inference.stream_chat(draft.profile.id, body,
                                                 on_stats=received.append)
            with closing(stream):
                for chunk in stream:
                    if chunk.tool_calls:
                        draft.calls.add(chunk.tool_calls)
                    if chunk.reasoning:
                        draft.reasoning_field = True
                    if chunk.finish_reason:
                        draft.finish_reason = chunk.finish_reason
                    if chunk.content or chunk.reasoning:
                        for event in draft.parser.feed(chunk.content or None,
                                                       chunk.reasoning or None):
                            yield self._thinking_event(event, draft)
                    if chunk.has_output:
                        self._save(owner, chat_id, draft)
                    if self._stop_asked(chat_id):
                        self._keep_stopped(owner, chat_id, draft, received)
                        return
                for event in draft.parser.finish():
                    yield self._thinking_event(event, draft)
        except ManagerError as exc:  # the server died, refused, timed out or is loading
            log.info("chat %s, %s round %s: %s", chat_id, draft.profile.name, draft.round,
                     exc.message)
            for event in draft.parser.finish():
                yield self._thinking_event(event, draft)
            draft.error = exc.message
        except GeneratorExit:
            # Stop: keep what arrived so far, marked as stopped.
            self._keep_stopped(owner, chat_id, draft, received)
            raise
        if received:
            draft.stats = AnswerStats.of(received[-1])
            yield ChatEvent(ChatEventKind.STATS, stats=draft.stats, round=draft.round)
        message = self._save(owner, chat_id, draft, force=True)
        if message is not None:
            yield ChatEvent(ChatEventKind.SAVED, message=message, round=draft.round)

    def _keep_stopped(self, owner: User, chat_id: int, draft: Draft,
                      received: Sequence[RequestStats]) -> None:
        """Stop: keep what arrived so far, marked as stopped."""
        log.info("chat %s: stopped during round %s", chat_id, draft.round)
        draft.parser.finish()
        draft.thinking_cut = draft.parser.unfinished
        draft.stopped = True
        draft.error = STOPPED
        if received:
            draft.stats = AnswerStats.of(received[-1])
        self._save(owner, chat_id, draft, force=True)

    def _thinking_event(self, event: ThinkingEvent, draft: Draft) -> ChatEvent:
        kinds = {
            ThinkingKind.THINKING: ChatEventKind.THINKING,
            ThinkingKind.ANSWER: ChatEventKind.ANSWER,
            ThinkingKind.THINKING_STARTED: ChatEventKind.THINKING_STARTED,
            ThinkingKind.THINKING_ENDED: ChatEventKind.THINKING_ENDED,
            ThinkingKind.RECLASSIFIED: ChatEventKind.RECLASSIFIED,
        }
        seconds = None
        finished = event.finished
        if event.kind is ThinkingKind.THINKING_ENDED:
            seconds = draft.parser.thinking_seconds
            # Thinking the server split off itself was closed by the server when the
            # reply ended normally (e.g. straight into a tool call, with no answer text).
            if not finished and draft.reasoning_field \
                    and draft.finish_reason in ("stop", "tool_calls"):
                finished = True
            draft.thinking_cut = not finished
        return ChatEvent(kinds[event.kind], text=event.text, seconds=seconds,
                         finished=finished, round=draft.round)

    def _save(self, owner: User, chat_id: int, draft: Draft, *, force: bool = False
              ) -> Message | None:
        """Add the reply on its first save, then update it in place (throttled unless forced)."""
        now = self._clock()
        if not force and draft.message_id is not None and now - draft.saved_at < SAVE_EVERY_S:
            return None
        record = draft.new_message()
        draft.saved_at = now
        if draft.message_id is None:
            saved = self._chats.add_message(owner, chat_id, record)
            draft.message_id = saved.id
            return saved
        return self._chats.update_message(owner, draft.message_id, record)

    def _save_tool(self, owner: User, chat_id: int, call: ToolCall, outcome: ToolOutcome
                   ) -> Iterator[ChatEvent]:
        meta: dict[str, Any] = {"status": outcome.status, "arguments": call.arguments}
        if outcome.seconds is not None:
            meta["seconds"] = outcome.seconds
        if outcome.server:
            meta["server"] = outcome.server
        message = self._chats.add_message(owner, chat_id, NewMessage(
            "tool", outcome.text, tool_call_id=call.id, tool_name=call.name, meta=meta))
        yield ChatEvent(ChatEventKind.TOOL_FINISHED, call=call, outcome=outcome,
                        message=message)

    def _fail(self, owner: User, chat_id: int, profile: Profile, message: str
              ) -> Iterator[ChatEvent]:
        draft = Draft(profile, 1, error=message)
        self._save(owner, chat_id, draft, force=True)
        yield ChatEvent(ChatEventKind.ERROR, text=message)
        yield ChatEvent(ChatEventKind.DONE)

"""Chat turns (manager/chat.py) through real mlx_lm / mlx_vlm servers on the tiny models,
the real built-in MCP server and real SQLite: thinking, tools, vision, video, failures."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from manager.accounts.auth import User
from manager.chat.attachments import AttachmentError
from manager.chat.engine import STOPPED, ChatEngine
from manager.chat.events import (
    NOT_RUN,
    AnswerStats,
    ChatEvent,
    ChatEventKind,
    ChatOptions,
    VideoMode,
)
from manager.chat.history import NewMessage
from manager.chat.mcp_builtin import SAMPLE_NOTE
from manager.chat.requests import ToolCallCollector, uses_native_video
from manager.errors import Conflict, ManagerError, ValidationError
from manager.models.capabilities import Capabilities
from manager.net import free_port
from manager.servers.failure_report import stream_error
from manager.servers.inference import InferenceClient, sse_data
from manager.servers.profiles import Backend, Profile, ProfileSpec
from manager.servers.supervisor import ServerState
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD
from tests.server_helpers import hf_home_env
from tests.waits import wait_for

K = ChatEventKind


@dataclass
class ChatEnv:
    services: Services
    engine: ChatEngine
    profiles: dict[str, Profile]
    alice: User

    def new_chat(self, name: str) -> int:
        return self.engine.start_chat(self.alice, self.profiles[name]).id

    def run(self, name: str, text: str, attachments: tuple[Path, ...] = (),
            options: ChatOptions | None = None, chat_id: int | None = None
            ) -> tuple[int, list[ChatEvent]]:
        chat_id = chat_id or self.new_chat(name)
        events = list(self.engine.turn(self.alice, chat_id, self.profiles[name].id, text,
                                       attachments, options or ChatOptions()))
        return chat_id, events

    def server_log(self, name: str) -> str:
        snap = self.services.supervisor.snapshot(self.profiles[name].id)
        return Path(snap.log_path).read_text(errors="replace")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
        ) -> Iterator[ChatEnv]:
    root = tmp_path_factory.mktemp("chat")
    with hf_home_env(root / "hf_home"):
        services = Services.create(Settings(data_dir=root / "data", port=free_port(),
                                                    warm_spare=False))
        try:
            specs = {
                "thinking": ProfileSpec(name="thinker", model=str(tiny_models["thinking"])),
                "tools": ProfileSpec(name="weather", model=str(tiny_models["tools"])),
                "tool_loop": ProfileSpec(name="looper", model=str(tiny_models["tool_loop"])),
                # Random weights: a short answer, whatever it says.
                "vision": ProfileSpec(name="eyes", model=str(tiny_models["vision"]),
                                      max_tokens=4, system_prompt="Answer in one word."),
                # Greedy decoding of random weights never stops early: a long answer to
                # interrupt.
                "text": ProfileSpec(name="chatter", model=str(tiny_models["text"]),
                                    max_tokens=1000, temperature=0.0),
            }
            profiles = {}
            for key, spec in specs.items():
                profile = services.profiles.create(None, ProfileSpec(
                    **{**spec.__dict__, "port": free_port()}))
                services.supervisor.start(profile.id)
                profiles[key] = profile
            for profile in profiles.values():
                services.supervisor.wait_ready(profile.id, 120)
            alice = services.auth.register("alice@example.com", PASSWORD)
            yield ChatEnv(services, services.chat_engine, profiles, alice)
        finally:
            services.close()


def requests_of(env: ChatEnv, name: str) -> tuple[int, int]:
    """(requests, completion tokens) the metrics recorded for a profile so far."""
    metrics = env.services.metrics.get(env.profiles[name].id)
    return (metrics.requests, metrics.completion_tokens) if metrics else (0, 0)


def kinds(events: list[ChatEvent]) -> list[ChatEventKind]:
    return [e.kind for e in events]


def text_of(events: list[ChatEvent], kind: ChatEventKind) -> str:
    return "".join(e.text for e in events if e.kind is kind)


def make_image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    Image.new("RGB", size, (200, 40, 40)).save(path)
    return path


def make_video(path: Path, frames: int = 24, size: int = 64) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 8.0, (size, size))
    for index in range(frames):
        frame = np.full((size, size, 3), index * 10 % 255, dtype=np.uint8)
        writer.write(frame)
    writer.release()
    return path


# --- fast: pure pieces -------------------------------------------------------------------


def test_tool_calls_whole_or_in_pieces_are_collected() -> None:
    whole = ToolCallCollector()
    whole.add([{"id": "a", "index": 0, "function": {"name": "get_weather",
                                                    "arguments": '{"city": "Paris"}'}}])
    assert [(c.id, c.name, c.arguments) for c in whole.calls()] == [
        ("a", "get_weather", '{"city": "Paris"}')]
    pieces = ToolCallCollector()
    pieces.add([{"index": 0, "id": "b", "function": {"name": "calculator", "arguments": ""}}])
    pieces.add([{"index": 0, "function": {"arguments": '{"expression": '}}])
    pieces.add([{"index": 0, "function": {"arguments": '"1+1"}'}},
                {"index": 1, "function": {"name": "get_weather", "arguments": {"city": "X"}}}])
    calls = pieces.calls()
    assert [(c.name, c.arguments) for c in calls] == [
        ("calculator", '{"expression": "1+1"}'), ("get_weather", '{"city": "X"}')]
    assert calls[0].id == "b" and calls[1].id.startswith("call_")


def test_unknown_figures_read_n_a() -> None:
    assert AnswerStats().label() == ("n/a prompt + n/a answer tokens · n/a tokens/s · "
                                     "first token n/a")
    stats = AnswerStats(12, 20, 340.25, 0.051, 0.2)
    assert stats.label() == "12 prompt + 20 answer tokens · 340.2 tokens/s · first token 0.05 s"
    assert AnswerStats.from_meta(stats.meta()) == stats
    # A rate that was not measured here says whose it is (issue 15: vision answers).
    server = AnswerStats(12, 4, 31.5, None, 0.2, rate_basis="server")
    assert "31.5 tokens/s (the server's figure) · first token n/a" in server.label()
    assert AnswerStats.from_meta(server.meta()) == server
    chunks = AnswerStats(12, None, 20.0, 0.05, 0.2, rate_basis="chunks")
    assert "20.0 chunks/s (the server sent no token count" in chunks.label()


@pytest.mark.parametrize(("video", "backend", "mode", "native"), [
    (True, Backend.MLX_VLM, VideoMode.AUTO, True),
    (True, Backend.MLX_VLM, VideoMode.FRAMES, False),
    (False, Backend.MLX_VLM, VideoMode.AUTO, False),
    (True, Backend.MLX_LM, VideoMode.AUTO, False),
    (True, Backend.MLX_VLM, VideoMode.NATIVE, True),
])
def test_when_a_video_goes_natively(video: bool, backend: Backend, mode: VideoMode,
                                    native: bool) -> None:
    profile = Profile(id=1, name="p", model="m", backend=backend, host="127.0.0.1", port=1)
    caps = Capabilities(multimodal=True, video=video)
    assert uses_native_video(caps, profile, mode) is native


def test_forcing_native_video_where_it_cannot_work_is_refused() -> None:
    profile = Profile(id=1, name="Texty", model="m", backend=Backend.MLX_LM,
                      host="127.0.0.1", port=1)
    with pytest.raises(AttachmentError, match="cannot read a video itself"):
        uses_native_video(Capabilities(multimodal=True), profile, VideoMode.NATIVE)


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="Max tool rounds"):
        ChatOptions(max_tool_rounds=0).checked()
    with pytest.raises(ValidationError, match="Video frames"):
        ChatOptions(max_frames=0).checked()


# --- slow: real servers ------------------------------------------------------------------


@pytest.mark.slow
def test_thinking_then_answer_with_seconds_and_figures(env: ChatEnv) -> None:
    _, tokens_before = requests_of(env, "thinking")
    chat_id, events = env.run("thinking", "What is 2+2?")
    order = [k for k in kinds(events) if k in (K.USER, K.THINKING_STARTED, K.THINKING,
                                               K.THINKING_ENDED, K.ANSWER, K.STATS, K.DONE)]
    assert order[0] is K.USER and order[-1] is K.DONE
    assert order.index(K.THINKING_STARTED) < order.index(K.THINKING_ENDED) \
        < order.index(K.ANSWER) < order.index(K.STATS)
    assert text_of(events, K.THINKING) == "Let me think."
    assert text_of(events, K.ANSWER) == "The answer is 4."
    ended = next(e for e in events if e.kind is K.THINKING_ENDED)
    assert ended.finished and ended.seconds is not None and ended.seconds >= 0
    assert K.ERROR not in kinds(events)
    stats = next(e.stats for e in events if e.kind is K.STATS)
    # The same figures the server tiles show.
    metrics = env.services.metrics.get(env.profiles["thinking"].id)
    assert stats.completion_tokens == metrics.completion_tokens - tokens_before > 0
    assert stats.tokens_per_s is not None and stats.tokens_per_s == metrics.last_tokens_per_s
    chat = env.services.chats.get(env.alice, chat_id)
    user, answer = chat.messages
    assert (user.role, user.content) == ("user", "What is 2+2?")
    assert answer.role == "assistant" and answer.content == "The answer is 4."
    assert answer.thinking == "Let me think." and answer.thinking_seconds == ended.seconds
    assert answer.meta["completion_tokens"] == stats.completion_tokens
    assert answer.meta["profile"] == "thinker"
    assert chat.summary.title == "What is 2+2?" and chat.summary.server == "thinker"


@pytest.mark.slow
def test_retry_answers_the_last_message_again(env: ChatEnv) -> None:
    chat_id, _ = env.run("thinking", "Once")
    events = list(env.engine.retry(env.alice, chat_id, env.profiles["thinking"].id))
    assert text_of(events, K.ANSWER) == "The answer is 4."
    roles = [m.role for m in env.services.chats.get(env.alice, chat_id).messages]
    assert roles == ["user", "assistant"]


@pytest.mark.slow
def test_a_tool_call_runs_over_mcp_then_the_model_answers(env: ChatEnv) -> None:
    before, _ = requests_of(env, "tools")
    chat_id, events = env.run("tools", "What is the weather in Paris?")
    assert K.ERROR not in kinds(events), [e.text for e in events if e.kind is K.ERROR]
    started = next(e for e in events if e.kind is K.TOOL_STARTED)
    finished = next(e for e in events if e.kind is K.TOOL_FINISHED)
    assert started.call.name == "get_weather" and '"Paris"' in started.call.arguments
    assert finished.outcome.ok and finished.outcome.server == "builtin"
    assert finished.outcome.text.startswith(SAMPLE_NOTE) and "Paris" in finished.outcome.text
    # The second request carried the tool message: only then does the model say this.
    assert text_of(events, K.ANSWER) == "It is sunny in Paris."
    assert [e.round for e in events if e.kind is K.ROUND] == [1, 2]
    assert kinds(events).index(K.TOOL_FINISHED) < max(
        i for i, e in enumerate(events) if e.kind is K.ROUND)
    assert requests_of(env, "tools")[0] - before == 2
    messages = env.services.chats.get(env.alice, chat_id).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    call_msg, tool_msg, final = messages[1:]
    assert call_msg.thinking == "Need weather." and call_msg.content == ""
    # The server closed the thinking itself before the tool call: not "cut off".
    assert "thinking_unfinished" not in call_msg.meta
    assert call_msg.tool_calls[0]["function"]["name"] == "get_weather"
    assert tool_msg.tool_call_id == call_msg.tool_calls[0]["id"]
    assert tool_msg.tool_name == "get_weather" and tool_msg.content == finished.outcome.text
    assert tool_msg.meta["status"] == "ok"
    assert final.content == "It is sunny in Paris." and final.meta["round"] == 2


@pytest.mark.slow
def test_a_looping_model_stops_at_the_round_limit(env: ChatEnv) -> None:
    chat_id, events = env.run("tool_loop", "Weather please",
                              options=ChatOptions(max_tool_rounds=2))
    outcomes = [e.outcome.status for e in events if e.kind is K.TOOL_FINISHED]
    assert outcomes == ["ok", "ok", NOT_RUN]
    assert len([e for e in events if e.kind is K.TOOL_STARTED]) == 2
    error = next(e.text for e in events if e.kind is K.ERROR)
    assert "still asked for tools (get_weather) after 2 rounds" in error
    assert "Max tool rounds" in error
    assert kinds(events)[-1] is K.DONE
    messages = env.services.chats.get(env.alice, chat_id).messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant", "tool",
                                          "assistant", "tool"]
    assert messages[-2].meta["error"] == error
    assert messages[-1].meta["status"] == NOT_RUN
    # The history stays well formed: the next message goes through.
    _, again = env.run("tool_loop", "And now?", options=ChatOptions(max_tool_rounds=1),
                       chat_id=chat_id)
    assert [e.outcome.status for e in again if e.kind is K.TOOL_FINISHED] == ["ok", NOT_RUN]


@pytest.mark.slow
def test_with_tools_off_no_tool_runs(env: ChatEnv) -> None:
    _, events = env.run("tools", "Weather?", options=ChatOptions(tools=False))
    assert K.TOOL_STARTED not in kinds(events)
    assert [e.outcome.status for e in events if e.kind is K.TOOL_FINISHED] == [NOT_RUN]
    assert "tools are off" in next(e.text for e in events if e.kind is K.ERROR)


@pytest.mark.slow
def test_the_vision_model_receives_an_image(env: ChatEnv, tmp_path: Path) -> None:
    picture = make_image(tmp_path / "red.png")
    log_before = len(env.server_log("vision"))
    chat_id, events = env.run("vision", "What colour is this?", (picture,))
    assert K.ERROR not in kinds(events), [e.text for e in events if e.kind is K.ERROR]
    stats = next(e.stats for e in events if e.kind is K.STATS)
    assert stats.completion_tokens and stats.completion_tokens > 0
    # Issue 15: never "n/a tokens/s" for a vision answer (measured, or mlx_vlm's figure).
    assert stats.tokens_per_s is not None and stats.tokens_per_s > 0
    assert "images=1 audio=0 videos=0" in env.server_log("vision")[log_before:]
    (user, _answer) = env.services.chats.get(env.alice, chat_id).messages
    (attachment,) = user.attachments
    assert attachment.name == "red.png" and attachment.mime == "image/png"
    assert attachment.path.is_file()
    assert env.services.settings.uploads_dir in attachment.path.parents


@pytest.mark.slow
def test_a_vision_answer_streams_token_by_token(env: ChatEnv) -> None:
    """Issue 15: vision answers seemed to arrive all at once; mlx_vlm streams each token
    as its own SSE chunk, and the chat passes each one on."""
    chunks = list(env.services.inference.stream_chat(env.profiles["vision"].id, {
        "max_tokens": 8, "messages": [{"role": "user", "content": "Say something."}]}))
    texts = [c.content for c in chunks if c.content]
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert len(texts) >= 2 and len(texts) <= usage.completion_tokens


@pytest.mark.slow
def test_a_video_goes_natively_or_as_the_configured_number_of_frames(
        env: ChatEnv, tmp_path: Path) -> None:
    clip = make_video(tmp_path / "clip.avi", frames=24)
    caps = env.engine.capabilities(env.profiles["vision"])
    # The tiny qwen2_vl declares a video token, and mlx_vlm serves it: native by default.
    assert caps.multimodal and caps.video
    assert env.profiles["vision"].backend is Backend.MLX_VLM

    log_before = len(env.server_log("vision"))
    _, native = env.run("vision", "What happens?", (clip,))
    assert K.ERROR not in kinds(native), [e.text for e in native if e.kind is K.ERROR]
    assert text_of(native, K.NOTE) == "clip.avi sent as a video (the model reads it natively)."
    assert "images=0 audio=0 videos=1" in env.server_log("vision")[log_before:]

    log_before = len(env.server_log("vision"))
    chat_id, framed = env.run("vision", "What happens?", (clip,),
                              ChatOptions(max_frames=3, video_mode=VideoMode.FRAMES))
    assert K.ERROR not in kinds(framed), [e.text for e in framed if e.kind is K.ERROR]
    assert text_of(framed, K.NOTE) == "3 frames sent from clip.avi (evenly spaced)."
    assert "images=3 audio=0 videos=0" in env.server_log("vision")[log_before:]
    user = env.services.chats.get(env.alice, chat_id).messages[0]
    assert user.meta["notes"] == ["3 frames sent from clip.avi (evenly spaced)."]


@pytest.mark.slow
def test_a_video_with_a_system_prompt_is_answered_natively(env: ChatEnv, tmp_path: Path
                                                           ) -> None:
    """Issue 15 item 1: mlx_vlm fails (IndexError) on a video next to a system message;
    the profile's system prompt now travels inside the user's turn."""
    assert env.profiles["vision"].system_prompt
    clip = make_video(tmp_path / "clip.avi", frames=8)
    log_before = len(env.server_log("vision"))
    _, events = env.run("vision", "What happens?", (clip,))
    assert K.ERROR not in kinds(events), [e.text for e in events if e.kind is K.ERROR]
    assert text_of(events, K.NOTE) == "clip.avi sent as a video (the model reads it natively)."
    served = env.server_log("vision")[log_before:]
    assert "images=0 audio=0 videos=1" in served and "IndexError" not in served


@pytest.mark.slow
def test_a_video_in_a_later_message_goes_as_frames_saying_why(env: ChatEnv, tmp_path: Path
                                                              ) -> None:
    clip = make_video(tmp_path / "later.avi", frames=8)
    chat_id, first = env.run("vision", "Hello")
    assert K.ERROR not in kinds(first)
    log_before = len(env.server_log("vision"))
    _, events = env.run("vision", "What happens?", (clip,), ChatOptions(max_frames=2),
                        chat_id=chat_id)
    assert K.ERROR not in kinds(events), [e.text for e in events if e.kind is K.ERROR]
    note = text_of(events, K.NOTE)
    assert note.startswith("2 frames sent from later.avi (evenly spaced). Not as a video: "
                           "mlx_vlm reads a video itself only in a conversation's first "
                           "message"), note
    assert "images=2 audio=0 videos=0" in env.server_log("vision")[log_before:]
    user = env.services.chats.get(env.alice, chat_id).messages[-2]
    assert user.meta["notes"] == [note]


@pytest.mark.slow
def test_mlx_vlms_own_error_is_what_a_person_reads(env: ChatEnv, tmp_path: Path) -> None:
    """The raw server still fails on a video in a two-message request (streamed: a 200,
    then an error chunk); its words, not "may have crashed", reach the caller."""
    snap = env.services.supervisor.snapshot(env.profiles["vision"].id)
    clip = make_video(tmp_path / "raw.avi", frames=8)
    video = {"type": "video_url", "video_url": {"url": str(clip)}}
    body = {"model": snap.model_path, "max_tokens": 2, "stream": True, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [video, {"type": "text", "text": "What?"}]}]}
    with httpx.stream("POST", snap.base_url + "/v1/chat/completions", json=body,
                      timeout=120) as response:
        assert response.status_code == 200
        said = [stream_error(json.loads(data)) for data in sse_data(response)]
    assert said and said[-1] and "index 1 is out of bounds" in said[-1]
    # Through the dashboard the same request is shaped to work, and a later turn with a
    # video is refused in words a person can act on (the chat sends frames instead).
    answer = env.services.inference.chat(env.profiles["vision"].id, {
        "messages": body["messages"], "max_tokens": 2})
    assert answer.stats.ok
    with pytest.raises(ManagerError, match="only in a conversation's first message"):
        env.services.inference.chat(env.profiles["vision"].id, {"max_tokens": 2, "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            body["messages"][1]]})


@pytest.mark.slow
def test_an_image_for_a_text_only_model_is_refused_before_sending(env: ChatEnv,
                                                                   tmp_path: Path) -> None:
    picture = make_image(tmp_path / "cat.png")
    profile = env.profiles["thinking"]
    before = requests_of(env, "thinking")
    with pytest.raises(AttachmentError, match="text-only model: it cannot read images"):
        env.engine.prepare(profile.id, "What is this?", [picture])
    chat_id, events = env.run("thinking", "What is this?", (picture,))
    assert kinds(events) == [K.ERROR, K.DONE] and "cat.png was not sent" in events[0].text
    assert requests_of(env, "thinking") == before
    assert env.services.chats.get(env.alice, chat_id).messages == ()
    # A damaged image for a vision model is refused too, naming the file.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"nonsense" * 20)
    with pytest.raises(AttachmentError, match="broken.png"):
        env.engine.prepare(env.profiles["vision"].id, "And this?", [broken])


@pytest.mark.slow
def test_still_loading_is_a_clear_message_and_then_it_works(env: ChatEnv,
                                                            tiny_models: dict[str, Path]
                                                            ) -> None:
    services = env.services
    impatient = InferenceClient(services.supervisor, services.metrics, wait_ready_s=0)
    engine = ChatEngine(chats=services.chats, inference=impatient, tools=services.tools,
                        supervisor=services.supervisor, profiles=services.profiles)
    profile = services.profiles.create(None, ProfileSpec(
        name="slowpoke", model=str(tiny_models["thinking"]), port=free_port()))
    try:
        services.supervisor.start(profile.id)
        chat_id = engine.start_chat(env.alice, profile).id
        events = list(engine.turn(env.alice, chat_id, profile.id, "Hello?"))
        error = next(e.text for e in events if e.kind is K.ERROR)
        assert "still loading" in error
        services.supervisor.wait_ready(profile.id, 120)
        events = list(engine.turn(env.alice, chat_id, profile.id, "Hello again?"))
        assert text_of(events, K.ANSWER) == "The answer is 4."
        messages = services.chats.get(env.alice, chat_id).messages
        assert [m.role for m in messages] == ["user", "assistant", "user", "assistant"]
        assert messages[1].meta["error"] == error
    finally:
        services.supervisor.stop(profile.id)
        impatient.close()


@pytest.mark.slow
def test_stop_keeps_the_partial_answer(env: ChatEnv) -> None:
    chat_id = env.new_chat("text")
    events = env.engine.turn(env.alice, chat_id, env.profiles["text"].id, "Talk to me")
    for event in events:
        if event.kind is K.ANSWER:
            break
    events.close()  # what Gradio does when Stop is pressed
    (_, answer) = env.services.chats.get(env.alice, chat_id).messages
    assert answer.content and answer.meta["stopped"] is True
    assert answer.meta["error"] == "Stopped before the answer was complete."


@pytest.mark.slow
def test_a_server_killed_mid_answer_keeps_the_chat_going(env: ChatEnv) -> None:
    services, profile = env.services, env.profiles["text"]
    chat_id = env.new_chat("text")
    services.chats.add_message(env.alice, chat_id, NewMessage("user", "Earlier question"))
    services.chats.add_message(env.alice, chat_id, NewMessage("assistant", "Earlier answer"))
    events: list[ChatEvent] = []
    pid = services.supervisor.snapshot(profile.id).pid
    for event in env.engine.turn(env.alice, chat_id, profile.id, "Tell me a long story"):
        events.append(event)
        if event.kind is K.ANSWER and pid is not None:
            os.killpg(pid, signal.SIGKILL)
            pid = None
    error = next(e.text for e in events if e.kind is K.ERROR)
    assert "chatter stopped answering" in error and "crashed" in error
    assert kinds(events)[-1] is K.DONE
    messages = services.chats.get(env.alice, chat_id).messages
    assert [m.content for m in messages[:3]] == ["Earlier question", "Earlier answer",
                                                 "Tell me a long story"]
    assert messages[3].meta["error"] == error and messages[3].content

    # The crash is noticed (the monitor's tick), the server restarted: the chat goes on.
    assert wait_for(lambda: services.supervisor.snapshot(profile.id).state
                    is ServerState.FAILED, 30)
    services.supervisor.start(profile.id)
    services.supervisor.wait_ready(profile.id, 120)
    _, events = env.run("text", "Still there?", chat_id=chat_id)
    assert K.ERROR not in kinds(events)
    assert len(text_of(events, K.ANSWER)) > 0
    assert [m.role for m in services.chats.get(env.alice, chat_id).messages] == [
        "user", "assistant", "user", "assistant", "user", "assistant"]


@pytest.mark.slow
def test_stop_asked_from_another_thread_ends_the_turn_it_does_not_own(env: ChatEnv) -> None:
    """The Stop button's event runs beside the streaming one: it cannot close a generator
    busy in another thread, so it asks the engine, and the turn ends on its own."""
    chat_id = env.new_chat("text")
    assert env.engine.stop(chat_id) is False  # nothing runs yet
    events = env.engine.turn(env.alice, chat_id, env.profiles["text"].id, "Talk to me")
    seen: list[ChatEvent] = []
    for event in events:
        seen.append(event)
        if event.kind is K.ANSWER:
            break
    stopper = threading.Thread(target=env.engine.stop, args=(chat_id,))
    stopper.start()
    stopper.join()
    seen.extend(events)  # the turn runs to its end by itself, not through close()
    assert seen[-1].kind is K.DONE
    assert any(e.kind is K.ERROR and e.text == STOPPED for e in seen)
    assert env.engine.wait_idle(chat_id, 0) and not env.engine.running(chat_id)
    (_, answer) = env.services.chats.get(env.alice, chat_id).messages
    assert answer.content and answer.meta["stopped"] is True
    assert answer.meta["error"] == STOPPED
    assert answer.meta.get("completion_tokens") is None or answer.meta["completion_tokens"] < 4000


@pytest.mark.slow
def test_a_chat_answers_one_turn_at_a_time(env: ChatEnv) -> None:
    """Two turns at once in one chat (two pages, an API client, a double send) interleaved
    their messages and answered each without the other. The second is refused while the
    first runs, before anything of it is saved; then the chat takes messages again."""
    chat_id = env.new_chat("text")
    text = env.profiles["text"].id
    first = env.engine.turn(env.alice, chat_id, text, "Talk to me")
    assert next(first).kind is K.USER  # the turn holds the chat from its message on
    assert env.engine.running(chat_id)
    refused = list(env.engine.turn(env.alice, chat_id, text, "And to me"))
    assert kinds(refused) == [K.ERROR, K.DONE] and "still answering" in refused[0].text
    with pytest.raises(Conflict, match="still answering"):
        next(env.engine.retry(env.alice, chat_id, text))  # before it drops anything
    first.close()
    assert not env.engine.running(chat_id)
    saved = env.services.chats.get(env.alice, chat_id).messages
    assert [m.content for m in saved if m.role == "user"] == ["Talk to me"]
    again = env.engine.turn(env.alice, chat_id, text, "Now me")
    assert next(again).kind is K.USER
    again.close()

"""What the Chat tab shows (pure): panels while streaming and after a reload, the sidebar."""

from __future__ import annotations

from pathlib import Path

from components.chat_view import (
    EMPTY_ANSWER,
    THINKING_TITLE,
    TurnView,
    chat_list_html,
    chatbot_messages,
    fenced,
    thinking_title,
)
from manager.chat.events import (
    NOT_RUN,
    AnswerStats,
    ChatEvent,
    ChatEventKind,
    ToolCall,
    ToolOutcome,
)
from manager.chat.history import Attachment, ChatSummary, Message

K = ChatEventKind
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')


def message(position: int, role: str, content: str = "", **fields: object) -> Message:
    values: dict[str, object] = {
        "id": position + 1, "chat_id": 1, "position": position, "role": role,
        "content": content, "thinking": None, "thinking_seconds": None, "tool_calls": [],
        "tool_call_id": None, "tool_name": None, "meta": {}, "attachments": (),
        "created_at": "2026-01-01T10:00:00+00:00"}
    values.update(fields)
    return Message(**values)  # type: ignore[arg-type]


def titles(shown: list[dict]) -> list[tuple[str, str]]:
    return [(m["metadata"]["title"], m["metadata"].get("status", ""))
            for m in shown if m.get("metadata")]


def saved_turn() -> list[Message]:
    return [
        message(0, "user", "Weather?"),
        message(1, "assistant", thinking="Need weather.", thinking_seconds=0.42,
                tool_calls=[CALL.openai()], meta={"round": 1}),
        message(2, "tool", "Sunny (sample data)", tool_call_id="call_1",
                tool_name="get_weather", meta={"status": "ok", "seconds": 0.01,
                                               "server": "builtin"}),
        message(3, "assistant", "It is sunny in Paris.",
                meta={"round": 2, **AnswerStats(30, 2, None, 0.04, 0.1).meta()}),
    ]


def test_thinking_is_an_open_panel_while_it_streams_then_collapses() -> None:
    view = TurnView([])
    view.apply(ChatEvent(K.USER, message=message(0, "user", "2+2?")))
    view.apply(ChatEvent(K.ROUND, round=1))
    view.apply(ChatEvent(K.THINKING_STARTED))
    view.apply(ChatEvent(K.THINKING, text="Let me"))
    view.apply(ChatEvent(K.THINKING, text=" think."))
    assert titles(view.messages()) == [(THINKING_TITLE, "pending")]
    assert view.messages()[1]["content"] == "Let me think."
    view.apply(ChatEvent(K.THINKING_ENDED, seconds=1.23))
    view.apply(ChatEvent(K.ANSWER, text="The answer"))
    view.apply(ChatEvent(K.ANSWER, text=" is 4."))
    shown = view.messages()
    assert titles(shown) == [("Thought for 1.2 s", "done")]
    # One duration, in the title: no Gradio "duration" suffix in a second format.
    assert "duration" not in shown[1]["metadata"]
    assert shown[2] == {"role": "assistant", "content": "The answer is 4."}


def test_a_thought_cut_off_says_so() -> None:
    view = TurnView([])
    view.apply(ChatEvent(K.ROUND, round=1))
    view.apply(ChatEvent(K.THINKING_STARTED))
    view.apply(ChatEvent(K.THINKING, text="Hmm"))
    view.apply(ChatEvent(K.THINKING_ENDED, seconds=2.0, finished=False))
    view.apply(ChatEvent(K.ERROR, text="eyes stopped answering."))
    shown = view.messages()
    assert titles(shown) == [("Thought for 2 s (cut off before it finished)", "done")]
    assert shown[-1]["content"] == "⚠️ eyes stopped answering."


def test_answer_text_that_turns_out_to_be_thinking_moves_into_the_panel() -> None:
    view = TurnView([])
    view.apply(ChatEvent(K.ROUND, round=1))
    view.apply(ChatEvent(K.ANSWER, text="I should add."))
    view.apply(ChatEvent(K.THINKING_STARTED))
    view.apply(ChatEvent(K.RECLASSIFIED, text="I should add."))
    view.apply(ChatEvent(K.THINKING_ENDED, seconds=0.5))
    view.apply(ChatEvent(K.ANSWER, text="4"))
    shown = view.messages()
    assert shown[0]["content"] == "I should add." and shown[1]["content"] == "4"


def test_a_tool_call_is_its_own_panel_pending_then_done() -> None:
    view = TurnView([])
    view.apply(ChatEvent(K.ROUND, round=1))
    view.apply(ChatEvent(K.TOOL_STARTED, call=CALL))
    assert titles(view.messages()) == [("🛠️ Calling get_weather…", "pending")]
    result = message(2, "tool", "Sunny", tool_call_id="call_1", tool_name="get_weather",
                     meta={"status": "ok", "seconds": 0.02})
    view.apply(ChatEvent(K.TOOL_FINISHED, call=CALL, outcome=ToolOutcome("ok", "Sunny"),
                         message=result))
    (panel,) = view.messages()
    assert panel["metadata"] == {"title": "🛠️ Used get_weather", "status": "done",
                                 "duration": 0.02}
    assert '"city": "Paris"' in panel["content"] and "Sunny" in panel["content"]


def test_streamed_and_reloaded_turns_look_the_same() -> None:
    saved = saved_turn()
    view = TurnView([])
    view.apply(ChatEvent(K.USER, message=saved[0]))
    view.apply(ChatEvent(K.ROUND, round=1))
    view.apply(ChatEvent(K.THINKING_STARTED))
    view.apply(ChatEvent(K.THINKING, text="Need weather."))
    view.apply(ChatEvent(K.THINKING_ENDED, seconds=0.42))
    view.apply(ChatEvent(K.SAVED, message=saved[1]))
    view.apply(ChatEvent(K.TOOL_STARTED, call=CALL))
    view.apply(ChatEvent(K.TOOL_FINISHED, call=CALL, outcome=ToolOutcome("ok", "Sunny"),
                         message=saved[2]))
    view.apply(ChatEvent(K.ROUND, round=2))
    view.apply(ChatEvent(K.ANSWER, text="It is sunny in Paris."))
    view.apply(ChatEvent(K.STATS, stats=AnswerStats(30, 2, None, 0.04, 0.1)))
    view.apply(ChatEvent(K.SAVED, message=saved[3]))
    view.apply(ChatEvent(K.DONE))
    assert view.messages() == chatbot_messages(saved)
    final = chatbot_messages(saved)[-1]["content"]
    assert final.startswith("It is sunny in Paris.\n\n<small>30 prompt + 2 answer tokens · "
                            "n/a tokens/s")


def test_tools_that_did_not_run_or_failed_say_so() -> None:
    call_2 = ToolCall("call_2", "calculator", '{"expression": "1/0"}')
    call_3 = ToolCall("call_3", "get_weather", "{}")
    shown = chatbot_messages([
        message(0, "assistant", tool_calls=[CALL.openai(), call_2.openai(), call_3.openai()],
                meta={"error": "Stopped: the limit."}),
        message(1, "tool", "Not run", tool_call_id="call_1", tool_name="get_weather",
                meta={"status": NOT_RUN}),
        message(2, "tool", "Division by zero", tool_call_id="call_2", tool_name="calculator",
                meta={"status": "tool_error"}),
    ])
    assert [t for t, _ in titles(shown)] == ["🛠️ get_weather (not run)",
                                             "🛠️ calculator failed",
                                             "🛠️ get_weather (not run)"]
    assert shown[-1]["content"] == "⚠️ Stopped: the limit."


def test_user_attachments_and_notes_and_empty_answers() -> None:
    picture = Attachment(1, Path("/data/uploads/chats/1/a.png"), "cat.png", "image/png", 10)
    shown = chatbot_messages([
        message(0, "user", "Look", attachments=(picture,),
                meta={"notes": ["3 frames sent from clip.avi (evenly spaced)."]}),
        message(1, "assistant", "", meta={"completion_tokens": 1}),
        message(2, "assistant", "partial", meta={"error": "Stopped.", "stopped": True}),
    ])
    user = shown[0]["content"]
    assert user[0] == {"path": "/data/uploads/chats/1/a.png", "orig_name": "cat.png",
                       "mime_type": "image/png"}
    assert user[1] == "Look\n\n*ℹ️ 3 frames sent from clip.avi (evenly spaced).*"
    assert shown[1]["content"].startswith(EMPTY_ANSWER)
    assert [m["content"] for m in shown[2:]] == ["partial", "⏹️ Stopped."]


def test_code_fences_cannot_be_closed_by_the_text() -> None:
    assert fenced("a ``` b") == "````\na ``` b\n````"
    assert fenced("plain", "json") == "```json\nplain\n```"


def test_the_sidebar_lists_escaped_titles_and_marks_the_open_chat() -> None:
    chats = [ChatSummary(7, "<b>Plans</b>", "tiny", "m", "2026-01-01T10:00:00+00:00",
                         "2026-01-01T10:05:00+00:00", 4),
             ChatSummary(3, "Older", "tiny", "m", "2026-01-01T09:00:00+00:00",
                         "2026-01-01T09:00:00+00:00", 1)]
    html = chat_list_html(chats, 3, server="tiny")
    assert "&lt;b&gt;Plans&lt;/b&gt;" in html and "<b>" not in html
    assert 'class="mm-chat mm-chat-active" data-chat="3"' in html
    assert "4 messages" in html and "1 message<" in html
    assert "No chats match “x”" in chat_list_html([], None, search="x", server="tiny")
    assert "No chats with tiny yet" in chat_list_html([], None, server="tiny")
    assert "No chats yet: pick a server" in chat_list_html([], None)


def test_each_chat_in_the_one_list_names_its_server() -> None:
    """Issue 15: the history is one list; each row says which server the chat is with."""
    chats = [ChatSummary(2, "Colours", "eyes", "m", "2026-01-01T10:00:00+00:00",
                         "2026-01-01T10:05:00+00:00", 2),
             ChatSummary(1, "Weather", "<weather>", "m", "2026-01-01T09:00:00+00:00",
                         "2026-01-01T09:00:00+00:00", 4)]
    html = chat_list_html(chats, None)
    assert '<span class="mm-chat-server">eyes</span>' in html
    assert '<span class="mm-chat-server">&lt;weather&gt;</span>' in html


def test_a_quick_thought_reads_in_one_format() -> None:
    """Issue 15: "Thought for 0.0s (30.0ms)" read as two durations in two formats."""
    assert thinking_title(0.03) == "Thought for under 0.1 s"
    assert thinking_title(12.4) == "Thought for 12 s"
    assert thinking_title(None) == "Thought"

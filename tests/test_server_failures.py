"""What a person reads when a model server fails (issue 15 item 1): the server's own words
from its error body, its stream's error chunk or the lines its log gained; and requests
with a video shaped the way mlx_vlm.server can read them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from manager.errors import ValidationError
from manager.servers.failure_report import (
    broken_answer,
    log_excerpt,
    log_size,
    process_alive,
    refusal,
    stream_error,
)
from manager.servers.vlm_requests import fold_instructions, for_mlx_vlm, has_video

VIDEO = {"type": "video_url", "video_url": {"url": "/tmp/clip.avi"}}
QUESTION = {"type": "text", "text": "What happens?"}


def test_a_system_prompt_travels_inside_the_first_user_turn_with_a_video() -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [VIDEO, QUESTION]}]
    assert for_mlx_vlm(messages) == [
        {"role": "user", "content": [{"type": "text", "text": "Be brief.\n\n"}, VIDEO, QUESTION]}]
    # Without a video nothing changes: mlx_vlm handles system messages then.
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert for_mlx_vlm(plain) == plain
    # A developer message and a string user turn are folded the same way.
    assert fold_instructions([{"role": "developer", "content": [{"type": "text", "text": "X"}]},
                              {"role": "user", "content": "Hi"}]) == [
        {"role": "user", "content": [{"type": "text", "text": "X\n\n"},
                                     {"type": "text", "text": "Hi"}]}]


def test_tool_rounds_after_a_video_are_fine_but_a_later_turn_is_refused_in_words() -> None:
    tool_round = [{"role": "user", "content": [VIDEO, QUESTION]},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"id": "a", "type": "function",
                       "function": {"name": "f", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "a", "content": "42"}]
    assert has_video(tool_round) and for_mlx_vlm(tool_round) == tool_round
    later = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": [VIDEO, QUESTION]}]
    with pytest.raises(ValidationError, match="only in a conversation's first message"):
        for_mlx_vlm(later)


def _write(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)


def test_the_log_lines_of_a_failure_are_the_ones_written_during_the_request(
        tmp_path: Path) -> None:
    server_log = tmp_path / "server.log"
    _write(server_log, "Traceback (most recent call last):\nOldError: from an earlier request\n")
    since = log_size(server_log)
    _write(server_log, 'Traceback (most recent call last):\n  File "x.py", line 1\n'
                       "IndexError: index 1 is out of bounds for axis 0 with size 1\n"
                       "ValueError: Failed to process inputs with error: index 1\n"
                       'INFO:     127.0.0.1 - "POST /v1/chat/completions" 500\n')
    assert log_excerpt(server_log, since) == ("ValueError: Failed to process inputs with "
                                             "error: index 1")
    quiet = log_size(server_log)
    _write(server_log, "Prompt processing progress: 16/16\n")
    assert log_excerpt(server_log, quiet) == ""
    assert log_excerpt(tmp_path / "missing.log", 0) == "" and log_size(None) == 0


def test_an_error_chunk_is_read_as_the_servers_words() -> None:
    assert stream_error({"error": "Failed to process inputs"}) == "Failed to process inputs"
    assert stream_error({"error": {"message": "too long", "type": "x"}}) == "too long"
    assert stream_error({"choices": [{"delta": {"content": "hi"}}]}) is None
    assert stream_error(["error"]) is None


def test_a_refusal_names_the_body_and_the_logged_exception(tmp_path: Path) -> None:
    server_log = tmp_path / "server.log"
    since = log_size(server_log)
    _write(server_log, "TypeError: 'int' object is not iterable\n")
    response = httpx.Response(404, json={"error": "generation thread died"})
    assert refusal("chatter", response, server_log, since) == (
        "chatter refused the request: generation thread died (its log says: TypeError: "
        "'int' object is not iterable)")
    assert refusal("chatter", httpx.Response(400, json={"detail": "bad"})) == (
        "chatter refused the request: bad")


def test_a_broken_answer_says_whether_the_server_still_runs(tmp_path: Path) -> None:
    server_log = tmp_path / "server.log"
    _write(server_log, "RuntimeError: out of memory\n")
    alive = broken_answer("eyes", None, server_log, 0, "its reply ended early")
    assert "may have crashed" in alive and "RuntimeError: out of memory" in alive
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_alive(child.pid) is False
    dead = broken_answer("eyes", child.pid, server_log, 0, "its reply ended early")
    assert dead.startswith("eyes stopped answering: its reply ended early, and its process "
                           "exited") and "RuntimeError: out of memory" in dead
    running = broken_answer("eyes", os.getpid(), server_log, 0, "x")  # waits out the grace
    assert "the server is still running" in running and "crashed" not in running

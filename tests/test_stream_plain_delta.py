"""Translating stream formats write a plain text chunk from its JSON string as the
server wrote it (stream_formats._PLAIN_DELTA, `plain_delta`) instead of decoding it:
the same events as decoding every chunk, for Anthropic, Responses and Ollama streams,
with thinking, text, escapes and non-ASCII text, a finish and the usage chunk."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manager.api.anthropic import StreamTranslator, sse
from manager.api.ollama_flow import OllamaFormat
from manager.api.ollama_wire import CHAT, GENERATE, OllamaReply
from manager.api.responses_stream import ResponsesFormat, ResponsesStream
from manager.api.stream_formats import AnthropicFormat, ChunkFormat
from manager.servers.server_stream import Batch


def mlx_lm_chunk(content: str | None = None, reasoning: str | None = None,
                 finish: str | None = None) -> bytes:
    """A streamed chunk laid out as mlx_lm's server writes it (json.dumps)."""
    delta: dict[str, Any] = {"role": "assistant"}
    if content:
        delta["content"] = content
    if reasoning:
        delta["reasoning"] = reasoning
    chunk = {"id": "chatcmpl-1", "system_fingerprint": "fp", "object": "chat.completion.chunk",
             "model": "/models/m", "created": 1764668000,
             "choices": [{"index": 0, "finish_reason": finish, "delta": delta}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


STREAM = [mlx_lm_chunk(reasoning="Let me"), mlx_lm_chunk(reasoning=' "think"'),
          mlx_lm_chunk(content="Zürich"), mlx_lm_chunk(content=" \\ and\n\u2603 \U0001f600"),
          mlx_lm_chunk(content="!"), mlx_lm_chunk(finish="length")]
USAGE = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}
FORMATS = {
    "anthropic": lambda: AnthropicFormat("tiny", input_tokens=5),
    "responses": lambda: ResponsesFormat(ResponsesStream("resp_1", "tiny", {},
                                                         created_at=0.0), lambda _: None),
    "ollama chat": lambda: OllamaFormat(OllamaReply(CHAT, "tiny", started_ns=0)),
    "ollama generate": lambda: OllamaFormat(OllamaReply(GENERATE, "tiny", started_ns=0)),
}


#: Fields that differ between two runs (random ids, clocks).
_VARYING = {"id", "item_id", "created_at", "total_duration", "load_duration",
            "prompt_eval_duration", "eval_duration"}


def _steady(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in _VARYING}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def decoded(out: bytes) -> list[Any]:
    """The events (SSE data or NDJSON lines) decoded, ids and clocks left out."""
    if out.lstrip().startswith(b"{"):
        return [_steady(json.loads(line)) for line in out.splitlines() if line]
    return [_steady(json.loads(line[6:])) for line in out.splitlines()
            if line.startswith(b"data: ")]


def run(fmt: ChunkFormat, batches: list[Batch], *, plain: bool) -> bytes:
    if not plain:  # the reference: every chunk decoded and fed
        fmt.plain_delta = lambda thinking, literal: None  # type: ignore[method-assign]
    return fmt.start() + b"".join(fmt.batch(b) for b in batches) + fmt.finish()


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("per_read", [1, 2, 6])
def test_plain_chunks_give_the_same_events_as_decoded_ones(name: str, per_read: int) -> None:
    reads = [b"".join(STREAM[i:i + per_read]) for i in range(0, len(STREAM), per_read)]
    batches = [Batch(data) for data in reads]
    batches.append(Batch(b"", USAGE, json.dumps(USAGE).encode()))
    assert decoded(run(FORMATS[name](), batches, plain=True)) == \
        decoded(run(FORMATS[name](), batches, plain=False))


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_plain_chunk_is_written_from_its_json_string(name: str) -> None:
    """Once the text is open, a plain chunk's bytes come from `plain_delta`: the chunk is
    not decoded (the literal is written as the server escaped it)."""
    plain, fed = FORMATS[name](), FORMATS[name]()
    for fmt in (plain, fed):
        fmt.start()
        fmt.batch(Batch(mlx_lm_chunk(content="Hi")))
    out = plain.plain_delta(False, b'" \\u2603"')
    assert out is not None and b'" \\u2603"' in out
    assert decoded(out) == decoded(fed.feed(json.loads(mlx_lm_chunk(content=" \u2603")[6:])))


def test_chunks_with_more_than_text_are_decoded() -> None:
    """A finish reason, logprobs or tool calls beside the text: not a plain chunk."""
    from manager.api.stream_formats import _PLAIN_DELTA

    assert _PLAIN_DELTA.search(mlx_lm_chunk(content="a").rstrip())
    assert not _PLAIN_DELTA.search(mlx_lm_chunk(content="a", finish="stop").rstrip())
    assert not _PLAIN_DELTA.search(mlx_lm_chunk(content="a", reasoning="b").rstrip())
    with_calls = json.loads(mlx_lm_chunk(content="a")[6:])
    with_calls["choices"][0]["delta"]["tool_calls"] = [{"index": 0}]
    assert not _PLAIN_DELTA.search(b"data: " + json.dumps(with_calls).encode())


@pytest.mark.parametrize("first", ["content", "reasoning", "empty"])
def test_anthropic_stream_bytes_with_a_plain_first_token(first: str) -> None:
    """message_start is written by `start` (before the first token) and the first plain
    chunk opens its block from templates: the bytes are those of feeding every chunk
    decoded to StreamTranslator and encoding each event with `sse`."""
    opening = {"content": [mlx_lm_chunk(content="Hi")],
               "reasoning": [mlx_lm_chunk(reasoning="Hm")],
               "empty": [mlx_lm_chunk(content=""), mlx_lm_chunk(content="Hi")]}[first]
    chunks = [*opening, *STREAM, b"data: " + json.dumps(USAGE).encode() + b"\n\n"]
    fast = AnthropicFormat("tïny", input_tokens=5)
    slow = StreamTranslator("tïny", message_id=fast.translator.message_id, input_tokens=5)
    expected = b"".join(sse(name, data) for chunk in chunks
                        for name, data in slow.feed(json.loads(chunk[6:])))
    expected += b"".join(sse(name, data) for name, data in slow.finish())
    out = fast.start() + b"".join(fast.batch(Batch(chunk)) for chunk in chunks[:-1])
    out += fast.batch(Batch(b"", USAGE, json.dumps(USAGE).encode())) + fast.finish()
    assert out == expected


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_first_plain_chunk_opens_its_block_without_decoding(name: str) -> None:
    """The stream's first token (after `start`) is a plain chunk too; `""` is not (a
    decoded empty delta opens nothing)."""
    fmt = FORMATS[name]()
    fmt.start()
    assert fmt.plain_delta(False, b'""') is None
    out = fmt.plain_delta(False, b'"Hi"')
    assert out is not None
    reference = FORMATS[name]()
    reference.start()
    assert decoded(out) == decoded(reference.feed(json.loads(mlx_lm_chunk(content="Hi")[6:])))

"""Chat completion chunks -> the Responses API's streamed events.

`ResponsesStream` is a small state machine (like anthropic.StreamTranslator): `feed`
each chunk, `finish` at the end, or `fail` when the model server fails mid-way. The
events follow the published sequence, each with a `sequence_number`:

    response.created, response.in_progress
    per output item: response.output_item.added, then
      reasoning:     reasoning_summary_part.added, reasoning_summary_text.delta...,
                     reasoning_summary_text.done, reasoning_summary_part.done
      message:       content_part.added, output_text.delta..., output_text.done,
                     content_part.done
      function call: function_call_arguments.delta..., function_call_arguments.done
    response.output_item.done
    response.completed (or response.incomplete when max_output_tokens cut it short)

and on failure `error` then `response.failed`. The openai SDK's `responses.stream()`
accumulates exactly these into its final Response.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from manager.api.responses import (
    Item,
    function_call_item,
    message_item,
    reasoning_item,
    response_object,
    status_of,
    usage_object,
)
from manager.api.stream_formats import ChunkFormat
from manager.api.wire import ApiFormat, Failure, stream_error
from manager.json_text import encode, loads

log = logging.getLogger(__name__)

Event = dict[str, Any]


def sse(event: Mapping[str, Any]) -> bytes:
    """One event in the framing the openai SDK reads (`event:` names its type)."""
    return b"".join((b"event: ", event["type"].encode(), b"\ndata: ", encode(event),
                     b"\n\n"))


class ResponsesStream:
    """Turns chat completion chunks into Responses events; `response` is the Response
    object as it stands (whole once `finish` returned)."""

    def __init__(self, response_id: str, model: str, echo: Mapping[str, Any], *,
                 created_at: float | None = None) -> None:
        self.response_id = response_id
        self.model = model
        self.echo = dict(echo)
        self.created_at = time.time() if created_at is None else created_at
        self.output: list[Item] = []
        self.response: dict[str, Any] = {}
        self._seq = 0
        self._started = False
        self._open: Item | None = None  # the output item being streamed
        # The open item's text or arguments so far, in pieces (joined when it closes:
        # `+=` on an attribute copies the whole text each time).
        self._parts: list[str] = []
        self._tool_slot: int | None = None
        self._finish_reason: str | None = None
        self._usage = usage_object(0, 0)
        # The open item's delta event as bytes around its sequence number and its text.
        self._delta_head = self._delta_middle = self._delta_tail = b""
        #: A message or reasoning item opened ahead (`open_ahead`), by kind: the state
        #: before and after `_begin` and the bytes of its events.
        self._ahead: dict[str, tuple[tuple[Any, ...], tuple[Any, ...], bytes]] = {}

    # -- public ---------------------------------------------------------------------------

    def start(self) -> Iterator[Event]:
        self._started = True
        self.response = self._snapshot("in_progress")
        yield self._event("response.created", response=self.response)
        yield self._event("response.in_progress", response=self.response)

    def feed(self, chunk: Mapping[str, Any]) -> Iterator[Event]:
        if not self._started:
            yield from self.start()
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = usage_object(int(usage.get("prompt_tokens") or 0),
                                       int(usage.get("completion_tokens") or 0))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning") or delta.get("reasoning_content")
            if thinking:
                yield from self._append("reasoning", str(thinking))
            if delta.get("content"):
                yield from self._append("message", str(delta["content"]))
            for call in delta.get("tool_calls") or []:
                yield from self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]

    def next_delta(self, chunk: Mapping[str, Any]) -> bytes | None:
        """The SSE bytes for a chunk that only adds text to the open message or reasoning
        item (most chunks), written without building the event; None for any other
        chunk (then `feed` it). The same bytes `feed` would give, encoded."""
        item = self._open
        choices = chunk.get("choices")
        if item is None or chunk.get("usage") or not choices or len(choices) != 1:
            return None
        choice = choices[0]
        delta = choice.get("delta")
        if choice.get("finish_reason") or not delta or delta.get("tool_calls"):
            return None
        content = delta.get("content")
        thinking = delta.get("reasoning") or delta.get("reasoning_content")
        if content and not thinking and item["type"] == "message":
            text = str(content)
        elif thinking and not content and item["type"] == "reasoning":
            text = str(thinking)
        else:
            return None
        self._parts.append(text)
        return self._delta_event(json.dumps(text, ensure_ascii=False).encode())

    def literal_delta(self, thinking: bool, literal: bytes) -> bytes | None:
        """`next_delta` for a chunk that only adds `literal` (a JSON string as the server
        wrote it) to the open message (or reasoning) item, or to the one opened ahead
        for it (`open_ahead`); None otherwise."""
        item = self._open
        kind = "reasoning" if thinking else "message"
        opening = b""
        if item is None:
            ahead = self._ahead.get(kind)
            if ahead is None or literal == b'""' or ahead[0] != self._state():
                return None
            self._ahead.clear()
            _, after, opening = ahead
            self._set_state(after)
        elif item["type"] != kind:
            return None
        self._parts.append(json.loads(literal))
        return opening + self._delta_event(literal) if opening else self._delta_event(literal)

    def open_ahead(self) -> None:
        """Build the events that open a message and a reasoning item now, while the
        server works on the first token (encoding them takes longer than the rest of
        the first token's way); `literal_delta` uses one if nothing changed meanwhile."""
        if self._open is not None:
            return
        before = self._state()
        for kind in ("message", "reasoning"):
            opening = _sse(self._begin(kind))
            self._ahead[kind] = (before, self._state(), opening)
            self._set_state(before)

    def _state(self) -> tuple[Any, ...]:
        """What `_begin` changes (and what it reads: the sequence, the output so far)."""
        return (self._seq, len(self.output), self._open, self._parts, self._delta_head,
                self._delta_middle, self._delta_tail)

    def _set_state(self, state: tuple[Any, ...]) -> None:
        (self._seq, _, self._open, self._parts, self._delta_head, self._delta_middle,
         self._delta_tail) = state

    def _delta_event(self, literal: bytes) -> bytes:
        """The next delta event of the open item, adding `literal` (a JSON string)."""
        seq, self._seq = self._seq, self._seq + 1
        return b"".join((self._delta_head, str(seq).encode(), self._delta_middle, literal,
                         self._delta_tail))

    def finish(self) -> Iterator[Event]:
        if not self._started:
            yield from self.start()
        yield from self._close()
        status, reason = status_of(self._finish_reason)
        self.response = self._snapshot(status, incomplete_reason=reason)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        yield self._event(kind, response=self.response)

    def fail(self, code: str, message: str) -> Iterator[Event]:
        """The model server failed after the stream began: `error`, then the response
        as it stood, failed (items that were open stay incomplete)."""
        if not self._started:
            yield from self.start()
        if self._open is not None:
            self.output.append({**self._finished(), "status": "incomplete"})
            self._open = None
        yield self._event("error", code=code, message=message, param=None)
        # The Response's error code is one of OpenAI's few; the `error` event has ours.
        self.response = self._snapshot("failed", error={"code": "server_error",
                                                        "message": message})
        yield self._event("response.failed", response=self.response)

    # -- items ----------------------------------------------------------------------------

    def _append(self, kind: str, text: str) -> Iterator[Event]:
        if self._open is None or self._open["type"] != kind:
            yield from self._close()
            yield from self._begin(kind)
        self._parts.append(text)
        ids = self._ids()
        if kind == "reasoning":
            yield self._event("response.reasoning_summary_text.delta", **ids,
                              summary_index=0, delta=text)
        else:
            yield self._event("response.output_text.delta", **ids, content_index=0,
                              delta=text, logprobs=[])

    def _tool_call(self, call: Mapping[str, Any]) -> Iterator[Event]:
        function = call.get("function") or {}
        slot = call.get("index", 0)
        if self._open is None or self._open["type"] != "function_call" \
                or self._tool_slot != slot or function.get("name"):
            yield from self._close()
            item = function_call_item({"id": call.get("id"),
                                       "function": {"name": function.get("name"),
                                                    "arguments": ""}})
            yield from self._begin("function_call", item)
            self._tool_slot = slot
        arguments = function.get("arguments")
        if arguments:
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            self._parts.append(text)
            yield self._event("response.function_call_arguments.delta", **self._ids(),
                              delta=text)

    def _begin(self, kind: str, item: Item | None = None) -> Iterator[Event]:
        if item is None:
            item = reasoning_item("") if kind == "reasoning" else message_item("")
            item["summary" if kind == "reasoning" else "content"] = []
        item["status"] = "in_progress"
        self._open, self._parts = item, []
        self._delta_template(kind)
        yield self._event("response.output_item.added", output_index=len(self.output),
                          item=_copy(item))
        ids = self._ids()
        if kind == "reasoning":
            yield self._event("response.reasoning_summary_part.added", **ids,
                              summary_index=0, part={"type": "summary_text", "text": ""})
        elif kind == "message":
            yield self._event("response.content_part.added", **ids, content_index=0,
                              part={"type": "output_text", "text": "", "annotations": [],
                                    "logprobs": []})

    def _close(self) -> Iterator[Event]:
        item = self._open
        if item is None:
            return
        ids, text = self._ids(), self._text()
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            yield self._event("response.reasoning_summary_text.done", **ids, summary_index=0,
                              text=text)
            yield self._event("response.reasoning_summary_part.done", **ids,
                              summary_index=0, part=part)
        elif item["type"] == "message":
            yield self._event("response.output_text.done", **ids, content_index=0, text=text,
                              logprobs=[])
            yield self._event("response.content_part.done", **ids, content_index=0,
                              part=self._finished()["content"][0])
        else:
            yield self._event("response.function_call_arguments.done", **ids, arguments=text,
                              name=item["name"])
        done = self._finished()
        yield self._event("response.output_item.done", output_index=ids["output_index"],
                          item=done)
        self.output.append(done)
        self._open, self._parts, self._tool_slot = None, [], None

    # -- helpers --------------------------------------------------------------------------

    def _finished(self) -> Item:
        """The open item with its text, as output_item.done and the response carry it."""
        item = self._open
        if item is None:
            raise RuntimeError("no output item is open")
        if item["type"] == "reasoning":
            return reasoning_item(self._text(), item["id"])
        if item["type"] == "message":
            return message_item(self._text(), item["id"])
        return {**item, "arguments": self._text(), "status": "completed"}

    def _delta_template(self, kind: str) -> None:
        """The byte pieces of the open item's delta events (see next_delta), in the
        order `_event` writes their fields."""
        name, index = (("response.reasoning_summary_text.delta", "summary_index")
                       if kind == "reasoning" else ("response.output_text.delta",
                                                    "content_index"))
        ids = self._ids()
        self._delta_head = (f'event: {name}\ndata: {{"type":"{name}","sequence_number":'
                            ).encode()
        self._delta_middle = (f',"item_id":{json.dumps(ids["item_id"])},"output_index":'
                              f'{ids["output_index"]},"{index}":0,"delta":').encode()
        self._delta_tail = (b',"logprobs":[]}\n\n' if kind == "message" else b"}\n\n")

    def _text(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def _ids(self) -> dict[str, Any]:
        if self._open is None:
            raise RuntimeError("no output item is open")
        return {"item_id": self._open["id"], "output_index": len(self.output)}

    def _event(self, kind: str, **fields: Any) -> Event:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def _snapshot(self, status: str, *, incomplete_reason: str | None = None,
                  error: Mapping[str, Any] | None = None) -> dict[str, Any]:
        done = status in ("completed", "incomplete", "failed")
        return response_object(
            self.response_id, self.model, self.echo, created_at=self.created_at,
            status=status, output=[_copy(item) for item in self.output],
            usage=self._usage if done else None, error=error,
            incomplete_reason=incomplete_reason)


def _copy(item: Item) -> Item:
    return loads(encode(item))


class ResponsesFormat(ChunkFormat):
    """The relay's stream format for /v1/responses (manager/api/relay.py): `start` when
    the server accepted the request, each chunk through `ResponsesStream`, and the
    finished response handed to `on_done` before its last event goes out (so a client
    may continue from it at once)."""

    def __init__(self, stream: ResponsesStream,
                 on_done: Callable[[dict[str, Any]], None]) -> None:
        self.stream = stream
        self._on_done = on_done
        self._started = False

    def start(self) -> bytes:
        self._started = True
        head = _sse(self.stream.start())
        self.stream.open_ahead()
        return head

    def feed(self, chunk: dict[str, Any]) -> bytes:
        quick = self.stream.next_delta(chunk)
        return quick if quick is not None else _sse(self.stream.feed(chunk))

    def plain_delta(self, thinking: bool, literal: bytes) -> bytes | None:
        return self.stream.literal_delta(thinking, literal)

    def finish(self) -> bytes:
        last = list(self.stream.finish())
        self._on_done(self.stream.response)
        return _sse(last)

    def error(self, failure: Failure) -> bytes:
        if not self._started:
            # Nothing was created yet (the model failed to load): the plain OpenAI error
            # event, which the openai SDK raises as an APIError.
            return stream_error(ApiFormat.OPENAI, failure)
        log.warning("a /v1/responses stream failed after it began: %s", failure.message)
        return _sse(self.stream.fail(failure.code, failure.message))


def _sse(events: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(sse(event) for event in events)

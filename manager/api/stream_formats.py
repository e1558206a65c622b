"""How a model server's stream is written to a client, one class per wire format.

The relay (manager/api/relay.py) reads the server on the event loop and hands each read
to a `StreamFormat` as a `Batch` (manager/servers/server_stream.py): whole OpenAI
`data:` events as the server wrote them, plus the decoded usage chunk.

- `OpenAIPassthrough` relays those bytes as they are: the model path becomes the profile
  name (a bytes replace) and the usage chunk reaches only clients that asked for it.
  Nothing else is decoded.
- `ChunkFormat` is the base of formats that translate: it decodes each chunk and calls
  `feed(chunk) -> bytes` (start / feed / finish, like anthropic.StreamTranslator).
  `AnthropicFormat` is one; the Responses and Ollama streams are others. Most chunks
  only add a piece of text or thinking: in mlx_lm's own layout (`_PLAIN_DELTA`) they are
  not decoded, their JSON string goes into the format's template as it is
  (`plain_delta`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any, Protocol

from manager.api.anthropic import Event, StreamTranslator, sse
from manager.api.wire import (
    SYSTEM_FINGERPRINT,
    ApiFormat,
    Failure,
    FieldSwap,
    fingerprint_swap,
    stream_error,
)
from manager.servers.server_stream import Batch, decode_event

log = logging.getLogger(__name__)

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
#: A chunk that only adds text (or thinking) as mlx_lm writes it (`json.dumps`); group 2
#: is the text's JSON string. Any other field (logprobs, tool calls, a finish reason)
#: and any other layout does not match, and the chunk is decoded.
_PLAIN_DELTA = re.compile(rb'"finish_reason": null, "delta": \{"role": "assistant", '
                          rb'"(content|reasoning)": ("(?:[^"\\]|\\.)*")\}\}\]\}$')


class StreamFormat(Protocol):
    """What the relay writes. Each method returns the bytes to send (b"" for none)."""

    media_type: str

    def start(self) -> bytes:
        """Right after the server accepted the request (before its first token)."""
        ...

    def batch(self, batch: Batch) -> bytes:
        """One read of the server's answer."""
        ...

    def finish(self) -> bytes:
        """After the server's [DONE]: the last bytes of a complete answer."""
        ...

    def error(self, failure: Failure) -> bytes:
        """The end of a stream that failed after its status line went out."""
        ...

    def comment(self, text: str) -> bytes:
        """A keepalive while the model loads (b"" where the format has no comments)."""
        ...


def sse_comment(text: str) -> bytes:
    return b": " + " ".join(text.splitlines()).encode() + b"\n\n"


class ChunkFormat:
    """Base of the translating formats: override `feed` (and `start`, `finish`,
    `error`). Each chunk is one OpenAI `chat.completion.chunk` as a dict; the usage
    chunk (`choices: []`, `usage: {...}`) comes last, before `finish`."""

    media_type = SSE

    def start(self) -> bytes:
        return b""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def plain_delta(self, thinking: bool, literal: bytes) -> bytes | None:
        """The bytes for a chunk that only adds `literal` (a JSON string as the server
        wrote it) to the answer (or its thinking); None when it must be fed decoded
        (nothing open to add to yet, say). The same JSON `feed` would write."""
        return None

    def finish(self) -> bytes:
        return b""

    def error(self, failure: Failure) -> bytes:
        return stream_error(ApiFormat.OPENAI, failure)

    def comment(self, text: str) -> bytes:
        return sse_comment(text) if self.media_type == SSE else b""

    def batch(self, batch: Batch) -> bytes:
        out = []
        for event in batch.data.split(b"\n\n"):
            plain = _PLAIN_DELTA.search(event)
            if plain is not None:
                quick = self.plain_delta(plain[1] == b"reasoning", plain[2])
                if quick is not None:
                    out.append(quick)
                    continue
            chunk = decode_event(event)
            if chunk is not None:
                out.append(self.feed(chunk))
        if batch.usage is not None:
            out.append(self.feed(batch.usage))
        return b"".join(out)


def _sse_events(events: Iterable[Event]) -> bytes:
    return b"".join(sse(name, data) for name, data in events)


class AnthropicFormat(ChunkFormat):
    """The Anthropic Messages event sequence (see anthropic.StreamTranslator)."""

    def __init__(self, model: str, *, input_tokens: int = 0) -> None:
        self.translator = StreamTranslator(model, input_tokens=input_tokens)

    def start(self) -> bytes:
        """message_start, sent while the server works on the first token (a client reads
        it meanwhile); `input_tokens` must be set by now."""
        return _sse_events(self.translator.start())

    def feed(self, chunk: dict[str, Any]) -> bytes:
        quick = self.translator.next_delta(chunk)
        return quick if quick is not None else _sse_events(self.translator.feed(chunk))

    def plain_delta(self, thinking: bool, literal: bytes) -> bytes | None:
        return self.translator.literal_delta(thinking, literal)

    def finish(self) -> bytes:
        return _sse_events(self.translator.finish())

    def error(self, failure: Failure) -> bytes:
        return stream_error(ApiFormat.ANTHROPIC, failure)


class OpenAIPassthrough:
    """OpenAI chat and legacy completion streams, relayed as the server wrote them."""

    media_type = SSE

    def __init__(self, public: str, *, include_usage: bool, served: str | None = None
                 ) -> None:
        self.public = public
        self.include_usage = include_usage
        self._public = b'"model": ' + json.dumps(public, ensure_ascii=False).encode()
        self._fingerprint = fingerprint_swap()
        # Matches nothing until served_as.
        self._model = FieldSwap(b'"model"', re.compile(rb"(?!)"), self._public)
        if served is not None:
            self.served_as(served)

    def served_as(self, served: str) -> None:
        """The model name the server writes (the path it loaded)."""
        # mlx_lm writes `json.dumps` (": ", ASCII escapes), mlx_vlm pydantic (":",
        # UTF-8). In JSON text a "model" key in those quotes cannot come from inside a
        # string (quotes there are escaped).
        names = {json.dumps(served).encode(), json.dumps(served, ensure_ascii=False).encode()}
        self._model = FieldSwap(b'"model"', re.compile(
            rb'"model": ?(?:' + b"|".join(re.escape(n) for n in names) + rb")"), self._public,
            seen=b'"model": ' + json.dumps(served).encode())  # as mlx_lm writes it

    def start(self) -> bytes:
        return b""

    def batch(self, batch: Batch) -> bytes:
        out = self._rename(batch.data) if batch.data else b""
        if batch.usage is None:
            return out
        if self.include_usage:
            return out + b"data: " + self._rename(batch.usage_event) + b"\n\n"
        if batch.usage.get("choices"):  # a last token and the usage in one chunk
            rest = {k: v for k, v in batch.usage.items() if k != "usage"}
            return out + b"data: " + self._encode(rest) + b"\n\n"
        return out

    def finish(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, failure: Failure) -> bytes:
        return stream_error(ApiFormat.OPENAI, failure)

    def comment(self, text: str) -> bytes:
        return sse_comment(text)

    def _rename(self, data: bytes) -> bytes:
        data, _ = self._fingerprint.swap(data)
        renamed, others = self._model.swap(data)
        if not others:
            return renamed
        # A model field written some other way: decode and write those events again.
        out = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if b'"model"' in event:
                try:
                    chunk = json.loads(event[5:])
                except ValueError:
                    log.warning("bad chunk from a model server: %r", event[:200])
                    continue
                if isinstance(chunk, dict):
                    event = b"data: " + self._encode(chunk)
            out.append(event + b"\n\n")
        return b"".join(out)

    def _encode(self, chunk: dict[str, Any]) -> bytes:
        payload = {**chunk, "model": self.public} if "model" in chunk else chunk
        if "system_fingerprint" in payload:
            payload["system_fingerprint"] = SYSTEM_FINGERPRINT
        return json.dumps(payload, ensure_ascii=False).encode()

"""The Ollama routes' part of a gateway request (gateway.py calls these): the request
to send, the stream format, the whole answer, and how each kind is told apart.

/api/chat and /api/generate go through the gateway's one request flow (API keys, limits,
on-demand start, metering, profile defaults); only the wire differs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from manager.accounts.auth import User
from manager.api.ollama import (
    chat_request,
    check_chat,
    check_generate,
    constrains_json,
    generate_request,
    parse_keep_alive,
)
from manager.api.ollama_wire import (
    CHAT,
    GENERATE,
    NDJSON,
    OllamaReply,
    Timestamps,
    dumps_line,
)
from manager.api.stream_formats import ChunkFormat
from manager.api.wire import Failure, GatewayError, resolve_profile
from manager.errors import ManagerError
from manager.models.capabilities import is_apple_silicon
from manager.servers.placement import Placement
from manager.servers.profiles import Profile
from manager.servers.server_stream import Batch
from manager.services import Services

log = logging.getLogger(__name__)


class OllamaFormat(ChunkFormat):
    """An Ollama NDJSON stream (see ollama_wire.OllamaReply). NDJSON has no comments:
    a model that loads sends nothing until its first line."""

    media_type = NDJSON

    def __init__(self, reply: OllamaReply) -> None:
        self.reply = reply
        self.model = reply.model
        self._stamp = ""
        self._timestamps = Timestamps()

    def start(self) -> bytes:
        self.reply.ready()  # the server took the request: the load is over
        self._timestamps()  # the date and time to the second, written before a token
        return b""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        return b"".join(dumps_line(line) for line in self.reply.feed(chunk))

    def batch(self, batch: Batch) -> bytes:
        self._stamp = self._timestamps()  # the lines of one read arrived together
        return super().batch(batch)

    def plain_delta(self, thinking: bool, literal: bytes) -> bytes | None:
        return self.reply.literal_line(thinking, literal, self._stamp)

    def finish(self) -> bytes:
        return b"".join(dumps_line(line) for line in self.reply.finish())

    def error(self, failure: Failure) -> bytes:
        return dumps_line({"error": failure.message})

    def comment(self, text: str) -> bytes:
        return b""


def wire_kind(generate: bool) -> str:
    return GENERATE if generate else CHAT


def check(generate: bool, body: Mapping[str, Any], *, values: bool = True) -> None:
    (check_generate if generate else check_chat)(body, values=values)


def streams(generate: bool, body: Mapping[str, Any]) -> bool:
    """Ollama streams unless told `"stream": false`; a request with nothing to generate
    (load or unload only) is answered whole."""
    return body.get("stream") is not False and not load_only(generate, body)


def load_only(generate: bool, body: Mapping[str, Any]) -> bool:
    """Nothing to generate: no messages (chat), no prompt nor image (generate)."""
    if generate:
        return not body.get("prompt") and not body.get("images")
    return not body.get("messages")


def raw(generate: bool, body: Mapping[str, Any]) -> bool:
    """A raw /api/generate: the prompt as is, to the server's /v1/completions."""
    return generate and bool(body.get("raw"))


def upstream(generate: bool, body: Mapping[str, Any], profile: Profile) -> dict[str, Any]:
    constrain = constrains_json(profile, is_apple_silicon())
    if generate:
        return generate_request(body, profile, constrain=constrain)[0]
    return chat_request(body, profile, constrain=constrain)


def stream_format(generate: bool, profile: Profile, received_ns: int) -> OllamaFormat:
    return OllamaFormat(OllamaReply(wire_kind(generate), profile.name, started_ns=received_ns))


def whole_answer(generate: bool, profile: Profile, received_ns: int, ready_ns: int,
                 response: Mapping[str, Any], ttft_s: float | None) -> dict[str, Any]:
    reply = OllamaReply(wire_kind(generate), profile.name, started_ns=received_ns)
    reply.ready(ready_ns)
    return reply.answered(response, int(ttft_s * 1e9) if ttft_s is not None else None)


def keep_alive(services: Services, user: User, model: str, body: Mapping[str, Any]) -> None:
    """The request's keep_alive, once it let go of its server (Placement.keep_alive)."""
    try:
        profile = resolve_profile(services.profiles.list(), model)
    except ManagerError as exc:  # deleted meanwhile: nothing to keep loaded
        log.info("keep_alive for %r not applied: %s", model, exc.message)
        return
    services.placement.keep_alive(user, profile.id, keep_alive_s(body))


def loaded(placement: Placement, user: User, profile: Profile, generate: bool,
           received_ns: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """The answer to a request with nothing to generate, its model loaded (the caller
    waited for it) or, with keep_alive 0, unloaded."""
    seconds = keep_alive_s(body)
    if seconds == 0 and not placement.keep_alive(user, profile.id, 0):
        raise GatewayError(403, f"{profile.name} was started by hand or serves another "
                           "request: only its owner or an administrator may unload it "
                           "(Servers tab).", "permission_denied")
    if seconds != 0:
        placement.keep_alive(user, profile.id, seconds)
    reply = OllamaReply(wire_kind(generate), profile.name, started_ns=received_ns)
    return reply.loaded("unload" if seconds == 0 else "load")


def keep_alive_s(body: Mapping[str, Any]) -> float | None:
    return parse_keep_alive(body.get("keep_alive"))

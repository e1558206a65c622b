"""Gateway limits: the request body cap, per-API-key concurrency and rate, and the cap
on how many tokens a request may ask a model for.

The body is read here chunk by chunk, so a body over the cap is refused after at most
the cap (plus one chunk) was held in memory, or before any of it when Content-Length
already says it is too big.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from manager.api.wire import Failure, GatewayError
from manager.errors import ManagerError, ValidationError
from manager.models.capabilities import Capabilities, detect
from manager.servers.profiles import Profile, ProfileService

log = logging.getLogger(__name__)

#: A body over the cap is still read (and thrown away) up to this many bytes, so the
#: client, which sends its whole body before it reads the answer, sees the 413 instead
#: of a reset connection; past it the connection is simply closed.
DRAIN_LIMIT_BYTES = 256 * 1024 * 1024
#: Seconds the rate limit counts requests over.
RATE_WINDOW_S = 60.0
#: Seconds a client over the concurrency limit is told to wait.
BUSY_RETRY_AFTER_S = 1


def _human(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB" if n >= 1024 * 1024 else f"{n:,} bytes"


def too_large(cap: int) -> GatewayError:
    return GatewayError(413, f"The request body is larger than this gateway accepts "
                        f"({_human(cap)}). Send smaller images or fewer messages.",
                        "request_too_large")


async def read_body(request: Request, cap: int) -> bytearray:
    """The request body, or a 413 GatewayError once it is known to exceed `cap` bytes.

    Content-Length is checked first; chunked bodies are counted as they arrive and
    never held beyond the cap.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise GatewayError(400, "Content-Length is not a number.", "invalid_request") \
                from None
        if length > cap:
            await _drain(request, 0)
            raise too_large(cap)
    body = bytearray()  # json.loads reads it as is: no second copy of a big body
    # The ASGI messages themselves, not Request.stream(): an async generator costs more
    # than the read on every request's way to its first token (a body is one message).
    receive = request.receive
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise GatewayError(400, "The client closed the connection before the body "
                               "arrived.", "client_disconnected")
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) + len(chunk) > cap:
            seen = len(body) + len(chunk)
            body.clear()
            if more:
                await _drain(request, seen)
            raise too_large(cap)
        body += chunk
    return body


async def _drain(request: Request, seen: int) -> None:
    """Read and drop the rest of a refused body (bounded), see DRAIN_LIMIT_BYTES.
    A client that asked `Expect: 100-continue` never sent it: nothing to drain."""
    if request.headers.get("expect", "").lower() == "100-continue" and seen == 0:
        return
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_LIMIT_BYTES:
                log.info("stopped reading a refused request body after %s", _human(seen))
                return
    except ClientDisconnect:
        log.debug("client left while its refused body was drained")
    except RuntimeError as exc:  # the stream was already consumed
        log.debug("nothing left to drain: %s", exc)


# --- per-key concurrency and rate ---------------------------------------------------


class KeyLimiter:
    """How many requests each API key has in flight and started in the last minute.

    `admit` (event loop) either takes a slot, returning None, or returns the Failure to
    answer with (429 and Retry-After); every admitted request `release`s its slot once
    (any thread). A limit of 0 or below turns that limit off.
    """

    def __init__(self, max_concurrent: int, per_minute: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_concurrent = max_concurrent
        self._per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[int, int] = {}
        self._recent: dict[int, deque[float]] = {}

    def admit(self, key_id: int) -> Failure | None:
        now = self._clock()
        with self._lock:
            recent = self._recent.setdefault(key_id, deque())
            while recent and recent[0] <= now - RATE_WINDOW_S:
                recent.popleft()
            if 0 < self._per_minute <= len(recent):
                wait = max(1, math.ceil(recent[0] + RATE_WINDOW_S - now))
                return Failure(429, f"This API key sent more than {self._per_minute} requests "
                               f"in a minute. Try again in {wait} s.", "rate_limited",
                               retry=True, retry_after_s=wait)
            active = self._active.get(key_id, 0)
            if 0 < self._max_concurrent <= active:
                return Failure(429, f"This API key already has {active} requests in flight "
                               f"(the limit is {self._max_concurrent}). Wait for one to "
                               "finish.", "too_many_concurrent_requests", retry=True,
                               retry_after_s=BUSY_RETRY_AFTER_S)
            recent.append(now)
            self._active[key_id] = active + 1
        return None

    def release(self, key_id: int) -> None:
        with self._lock:
            left = self._active.get(key_id, 0) - 1
            if left > 0:
                self._active[key_id] = left
            else:
                self._active.pop(key_id, None)

    def in_flight(self, key_id: int) -> int:
        with self._lock:
            return self._active.get(key_id, 0)


# --- max_tokens ----------------------------------------------------------------------


def token_limit(*limits: int | None, fallback: int) -> int:
    """The smallest of the known limits (profile max_tokens, context length)."""
    known = [n for n in limits if isinstance(n, int) and n > 0]
    return min(known) if known else fallback


def cap_max_tokens(body: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """The request with `max_tokens` at most `limit`; OpenAI's `max_completion_tokens`
    becomes `max_tokens` (both servers read that one). A request that names none is
    left to the profile's default (inference.prepare_body) or the server's."""
    out = dict(body)
    asked = out.pop("max_completion_tokens", None)
    if asked is None:
        asked = out.get("max_tokens")
    if asked is None:
        out.pop("max_tokens", None)
        return out
    # Already validated as a whole, positive number (1e12 arrives as a float).
    out["max_tokens"] = min(int(asked), limit)
    return out


class ModelFacts:
    """What each profile's model can do, read from the model's files once per model
    (the gateway's token caps and Ollama's /api/tags, /api/ps and /api/show share it)."""

    def __init__(self, profiles: ProfileService) -> None:
        self._profiles = profiles
        self._known: dict[str, Capabilities | None] = {}
        self._lock = threading.Lock()

    def caps(self, profile: Profile) -> Capabilities | None:
        with self._lock:
            if profile.model in self._known:
                return self._known[profile.model]
        try:
            found: Capabilities | None = detect(self._profiles.resolve_model(profile.model))
        except ManagerError as exc:
            log.info("capabilities of %s unknown: %s", profile.name, exc.message)
            found = None
        with self._lock:
            self._known[profile.model] = found
        return found

    def vocab_size(self, profile: Profile) -> int | None:
        caps = self.caps(profile)
        return caps.vocab_size if caps else None

    def context_length(self, profile: Profile) -> int | None:
        """The profile's context length, else the model's own."""
        if profile.context_length:
            return profile.context_length
        caps = self.caps(profile)
        return caps.context_length if caps else None


def check_token_ids(body: Mapping[str, Any], vocab_size: int | None, model: str) -> None:
    """A logit_bias id past the vocabulary kills mlx_lm's server process (mlx-lm 0.32),
    ending every other caller's answer too, so it is refused before it gets there."""
    bias = body.get("logit_bias")
    if not bias:
        return
    if vocab_size is None:
        raise ValidationError(f"logit_bias: the vocabulary size of {model!r} is unknown, so "
                              "its token ids cannot be checked; send the request without it",
                              "logit_bias")
    for key in bias:
        if int(key) >= vocab_size:
            raise ValidationError(f"logit_bias: token id {key} is outside {model!r}'s "
                                  f"vocabulary (ids 0 to {vocab_size - 1})", "logit_bias")

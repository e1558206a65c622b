"""A model server's streamed answer as the gateway relays it: read on the event loop,
split into whole server-sent events, and metered, parsing only what must be parsed.

`ServerStream.open(metrics, snap, body)` sends an OpenAI request (the profile's defaults
applied, see inference.prepare_body) and waits for the status line; `batches()` then
yields one `Batch` per read: the data events as the server wrote them (comments and
`[DONE]` left out) and, apart, the usage chunk. Only the usage chunk is decoded (for
the token counts); the time of each read with data is the time of its tokens. When the
stream ends the request's figures go to the MetricsStore, as InferenceClient does for
its own requests.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from manager.json_text import loads
from manager.servers.inference import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    InferenceError,
    MetricsStore,
    RequestAborted,
    RequestStats,
    Usage,
    decode_rate,
    prepare_body,
)
from manager.servers.prompt_counts import PromptCounts
from manager.servers.snapshot import ServerSnapshot
from manager.servers.upstream import Upstream, UpstreamClosed, error_message

log = logging.getLogger(__name__)

#: Once tokens flow, the relay is woken at most this often: tokens that come faster
#: travel a few at a time (each at most ~1.5x this late, see upstream._Reader) instead
#: of costing a wake-up, a format pass and a write each, which on a machine where the
#: model runs on the CPU slows the model itself (bench/gateway.py). A hand-over costs
#: ~0.3 ms of CPU on a busy small machine whatever it carries, so at 1000 tokens/s this
#: interval sets most of the CPU per token; 25 ms is still under a frame of a 30 Hz
#: display. The first token, a token after a pause longer than this, and the end of
#: the stream are never held back, so time to first token and the decode rate a client
#: measures (first to last token) are unchanged.
PACE_S = 0.025
# mlx_lm writes `"usage": {`, mlx_vlm (pydantic) `"usage":{` and `"usage":null` elsewhere.
_USAGE = re.compile(rb'"usage": ?\{')
_DONE = b"data: [DONE]"


@dataclass(frozen=True)
class Batch:
    """What one read brought: `data` holds whole `data: {...}\\n\\n` events as the server
    wrote them; `usage` is the usage chunk, decoded, when it came in this read."""

    data: bytes
    usage: dict[str, Any] | None = None
    usage_event: bytes = b""  # the usage chunk's JSON text, as sent


def decode_event(event: bytes) -> dict[str, Any] | None:
    """One `data: {...}` event's chunk; None for b"" and (logged) anything else."""
    if not event:
        return None
    try:
        chunk = loads(event[5:])
    except ValueError as exc:
        log.warning("bad chunk from a model server: %s (%r)", exc, event[:200])
        return None
    return chunk if isinstance(chunk, dict) else None


def split_events(block: bytes) -> tuple[bytes, bytes, bool]:
    """(data events, usage chunk JSON, saw [DONE]) of a block of whole events. Most
    blocks are plain data events: one scan each for what would need a closer look."""
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n")
    if not (block.startswith(b":") or b"\n:" in block or _DONE in block
            or (b'"usage"' in block and _USAGE.search(block))):
        return block, b"", False
    kept: list[bytes] = []
    usage = b""
    done = False
    for event in block.split(b"\n\n"):
        event = event.strip(b"\n")
        if not event or event.startswith(b":"):
            continue  # a comment (mlx_lm's ": keepalive N/M" during prefill)
        if event == _DONE:
            done = True
            break
        if not event.startswith(b"data:"):
            continue
        if _USAGE.search(event):
            usage = event[5:].strip()
        else:
            kept.append(event if event.startswith(b"data: ") else b"data: " + event[5:].lstrip())
    return b"".join(e + b"\n\n" for e in kept), usage, done


class ServerStream:
    """One streamed request to a READY model server, read on the event loop."""

    def __init__(self, snap: ServerSnapshot, upstream: Upstream, metrics: MetricsStore,
                 started: float) -> None:
        self._snap = snap
        self._upstream = upstream
        self._metrics = metrics
        self._started = started
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._usage: Usage | None = None
        self._aborted = False
        self._recorded = False
        self.done = False  # the server ended its answer with [DONE]

    @classmethod
    async def open(cls, metrics: MetricsStore, snap: ServerSnapshot, body: Mapping[str, Any],
                   *, completion: bool = False, prepared: Mapping[str, Any] | None = None
                   ) -> ServerStream:
        """Send the request; raises InferenceError when the server refuses it (with its
        status) or cannot be reached. Counted in the metrics either way. `prepared`: what
        prepare_body made of `body` for `snap` already (known_count's)."""
        payload = prepared if prepared is not None else \
            prepare_body(snap, body, stream=True, completion=completion)
        path = COMPLETIONS_PATH if completion else CHAT_PATH
        started = time.perf_counter()
        name = snap.profile.name
        try:
            upstream = await Upstream.open(snap.base_url, path, payload,
                                           headers=snap.profile.auth_headers())
        except (OSError, UpstreamClosed, TimeoutError) as exc:
            log.warning("request to %s failed: %s", name, exc)
            _record_failure(metrics, snap, started)
            raise InferenceError(f"{name} stopped answering ({exc or type(exc).__name__}). "
                                 "It may have crashed: see the Servers tab.") from exc
        if upstream.status >= 400:
            try:
                detail = error_message(await upstream.read_all(), f"HTTP {upstream.status}")
            finally:
                upstream.abort()
                _record_failure(metrics, snap, started)
            raise InferenceError(f"{name} refused the request: {detail}", upstream.status)
        return cls(snap, upstream, metrics, started)

    async def batches(self, pace_s: float = PACE_S) -> AsyncIterator[Batch]:
        """The answer, one Batch per read, until [DONE]. Raises InferenceError when the
        server stops before [DONE] (RequestAborted when `abort` ended it)."""
        pending = b""
        name = self._snap.profile.name
        try:
            while True:
                data = await self._upstream.read()
                if not data:
                    break
                arrived = time.perf_counter()
                pending = pending + data if pending else data
                end = pending.rfind(b"\n\n")
                if end < 0:
                    continue
                block, pending = pending[:end + 2], pending[end + 2:]
                events, usage_event, self.done = split_events(block)
                usage = None
                if usage_event:
                    usage = _decode(usage_event, name)
                    if usage is not None:
                        self._usage = Usage.parse(usage.get("usage"))
                first = False
                if events:
                    self._last_at = arrived
                    if self._first_at is None:
                        self._first_at = arrived
                        first = True
                if events or usage is not None:
                    yield Batch(events, usage, usage_event if usage is not None else b"")
                if self.done:
                    return
                if first:  # paced (the socket held) once the first token went on, not before
                    self._upstream.pace(pace_s)
            if self._aborted:
                raise RequestAborted(f"The request to {name} was cancelled.")
            # Both servers end a stream with [DONE]; mlx_lm speaks HTTP/1.0, so a server
            # that dies mid-answer looks like a normal end of the body.
            log.warning("stream from %s ended without [DONE] (%s)", name,
                        self._upstream.error or "closed")
            raise InferenceError(f"{name} stopped answering in the middle of its reply. It "
                                 "may have crashed: see the Servers tab.")
        finally:
            self.close()

    def abort(self) -> None:
        """End the request at once (its client went away); the server stops at its next
        write."""
        if not self.done:
            self._aborted = True
        self._upstream.abort()

    def close(self) -> None:
        """Close the connection and record the request's figures (once)."""
        self._upstream.abort()
        if self._recorded:
            return
        self._recorded = True
        usage = self._usage
        completion = usage.completion_tokens if usage else None
        first = self._first_at
        self._metrics.record(RequestStats(
            profile_id=self._snap.profile_id, finished_at=time.time(),
            duration_s=time.perf_counter() - self._started,
            ttft_s=(first - self._started) if first is not None else None,
            tokens_per_s=decode_rate(completion, first, self._last_at),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=completion, ok=self.done))

    @property
    def usage(self) -> Usage | None:
        return self._usage


def _decode(event: bytes, name: str) -> dict[str, Any] | None:
    try:
        chunk = json.loads(event)
    except ValueError as exc:
        log.warning("bad usage chunk from %s: %s (%r)", name, exc, event[:200])
        return None
    return chunk if isinstance(chunk, dict) else None


def _record_failure(metrics: MetricsStore, snap: ServerSnapshot, started: float) -> None:
    metrics.record(RequestStats(
        profile_id=snap.profile_id, finished_at=time.time(),
        duration_s=time.perf_counter() - started, ttft_s=None, tokens_per_s=None,
        prompt_tokens=None, completion_tokens=None, ok=False))


def known_count(counts: PromptCounts, snap: ServerSnapshot, body: Mapping[str, Any], *,
                completion: bool = False) -> tuple[bytes, int | None, dict[str, Any]]:
    """The key of `body`'s prompt in `counts`, the count kept for it (or None), and the
    request as prepared for the server (ServerStream.open's `prepared`)."""
    prepared = prepare_body(snap, body, stream=True, completion=completion)
    key = counts.key(snap, prepared, completion)
    return key, counts.get(key), prepared


async def open_counted(metrics: MetricsStore, snap: ServerSnapshot, body: Mapping[str, Any],
                       *, completion: bool = False, counts: PromptCounts | None = None
                       ) -> tuple[ServerStream, int]:
    """The stream of `body` and its prompt's tokens as the server counts them (see
    count_then_open). With `counts`, a count the server gave for the same request and
    server run is used instead, and the stream goes out at once."""
    key = b""
    if counts is not None:
        key, known, prepared = known_count(counts, snap, body, completion=completion)
        if known is not None:
            return await ServerStream.open(metrics, snap, body, completion=completion,
                                           prepared=prepared), known
    return await count_then_open(metrics, snap, body, completion=completion, counts=counts,
                                 key=key)


async def count_then_open(metrics: MetricsStore, snap: ServerSnapshot, body: Mapping[str, Any],
                          *, completion: bool = False, counts: PromptCounts | None = None,
                          key: bytes = b"") -> tuple[ServerStream, int]:
    """The stream of `body` and its prompt's tokens as the server counts them (templates,
    tools, images): a 1-token request (not metered) goes first, and the real one as soon
    as the server took the count in (its status line), so the real request's connection
    and prompt rendering overlap the count's prefill, and mlx_lm's prompt cache spares it
    most of its own. (Sent at the same moment the count could arrive second, and mlx_lm
    admits a request to a running batch only between bursts of up to 0.5 s.)
    The count is kept in `counts` under `key` (known_count's)."""
    count = await ServerStream.open(MetricsStore(), snap, {**body, "max_tokens": 1})
    try:
        stream = await ServerStream.open(metrics, snap, body, completion=completion)
    except BaseException:
        count.close()
        raise
    try:
        async for _ in count.batches(0):
            continue
    except BaseException:
        stream.abort()
        stream.close()
        raise
    finally:
        count.close()
    usage = count.usage
    prompt_tokens = usage.prompt_tokens if usage is not None else None
    if counts is not None and prompt_tokens is not None:
        counts.put(key, prompt_tokens)
    return stream, prompt_tokens or 0

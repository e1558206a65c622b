"""OpenAI-compatible client to the model servers; every chat and gateway request goes
through here, so this is where speed and token counts are measured.

- `InferenceClient.stream_chat(profile_id, body)` yields parsed `ChatChunk`s;
  `chat(profile_id, body)` returns one `ChatResult`. `body` is an OpenAI
  chat-completions request (messages, tools, max_tokens, ...); the profile's
  defaults fill what it leaves out, and its system prompt is added when the request
  has no system message of its own (PRO-02). `stream_completion` / `complete` do the
  same for legacy `/v1/completions` requests (a `prompt`, no messages).
- Before sending, the server must be READY: the client waits (bounded) while it
  loads, then raises ServerLoading ("still loading"), never a connection error.
- Each request's time to first token, tokens/s and token counts go to the
  `MetricsStore` (thread-safe) that the Servers tab, chat and the gateway read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from manager.errors import ManagerError
from manager.net import tls_context
from manager.servers.abort import Abort
from manager.servers.assemble import whole_response
from manager.servers.failure_report import (
    beyond_answering,
    broken_answer,
    log_size,
    refusal,
    stream_error,
)
from manager.servers.metering import RequestStats, StreamMeter, Usage
from manager.servers.metering import decode_rate as decode_rate  # where others import it
from manager.servers.profiles import Backend
from manager.servers.supervisor import ServerSnapshot, Supervisor
from manager.servers.vlm_requests import for_mlx_vlm

log = logging.getLogger(__name__)

#: How long a request waits for a server that is still loading its model (BUGFIX-06).
DEFAULT_WAIT_READY_S = 30.0
#: Generation can be slow on big models; reads between chunks may take this long.
READ_TIMEOUT_S = 600.0
_SYSTEM_ROLES = ("system", "developer")
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
#: A stream is read at most this often once tokens flow. Above ~500 tokens/s tokens
#: then travel two or three at a time (each at most 2 ms late) instead of costing a
#: wake-up, a read and a write each: on a machine where the model runs on the CPU that
#: per-token work of the dashboard (and the gateway) slows the model itself by ~10 %
#: (bench/gateway.py). Slower streams and the first token are never delayed.
STREAM_READ_INTERVAL_S = 0.002
#: Upper bounds (seconds) of the time-to-first-token histogram (Prometheus `le`).
TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class InferenceError(ManagerError):
    """The server answered with an error, or stopped answering."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RequestAborted(InferenceError):
    """The request was ended on purpose (its client went away) through an `Abort`."""


@dataclass(frozen=True)
class ChatChunk:
    """One streamed piece. `raw` is the server's chunk as parsed JSON and `data` its
    JSON text as sent (the gateway passes it on without encoding it again)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    data: str = ""

    @property
    def has_output(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)


# A generator, not just an iterator: closing it early drops the upstream connection.
ChunkStream = Generator[ChatChunk, None, None]


@dataclass(frozen=True)
class ChatResult:
    content: str
    reasoning: str
    tool_calls: tuple[dict[str, Any], ...]
    finish_reason: str | None
    usage: Usage | None
    stats: RequestStats
    raw: dict[str, Any]


@dataclass(frozen=True)
class ServerMetrics:
    """Totals for one server since the dashboard started."""

    requests: int = 0
    failed_requests: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    last_tokens_per_s: float | None = None
    last_ttft_s: float | None = None
    last_request_at: float | None = None
    #: Streamed requests whose first token was seen: count, sum and histogram counts
    #: per TTFT_BUCKETS_S bound (cumulative, Prometheus style; +Inf is ttft_count).
    ttft_count: int = 0
    ttft_sum_s: float = 0.0
    ttft_buckets: tuple[int, ...] = (0,) * len(TTFT_BUCKETS_S)
    #: Tokens after the first and the seconds they took, over requests with a
    #: measured decode rate: their ratio is the average tokens/s.
    decode_tokens: int = 0
    decode_seconds: float = 0.0


class MetricsStore:
    """Per-server request figures; shared by every thread that sends requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_profile: dict[int, ServerMetrics] = {}

    def record(self, stats: RequestStats) -> ServerMetrics:
        ttft = stats.ttft_s
        # Decode time only where it was measured (a stream with a first token).
        decoded = (stats.completion_tokens - 1 if stats.tokens_per_s and ttft is not None
                   and stats.completion_tokens else 0)
        with self._lock:
            old = self._by_profile.get(stats.profile_id, ServerMetrics())
            new = replace(
                old,
                requests=old.requests + 1,
                failed_requests=old.failed_requests + (0 if stats.ok else 1),
                completion_tokens=old.completion_tokens + (stats.completion_tokens or 0),
                prompt_tokens=old.prompt_tokens + (stats.prompt_tokens or 0),
                last_tokens_per_s=(stats.tokens_per_s if stats.tokens_per_s is not None
                                   else old.last_tokens_per_s),
                last_ttft_s=ttft if ttft is not None else old.last_ttft_s,
                last_request_at=stats.finished_at,
            )
            if ttft is not None:
                new = replace(new, ttft_count=old.ttft_count + 1, ttft_sum_s=old.ttft_sum_s + ttft,
                              ttft_buckets=tuple(n + (ttft <= bound) for n, bound in
                                                 zip(old.ttft_buckets, TTFT_BUCKETS_S,
                                                     strict=True)))
            if decoded and stats.tokens_per_s:
                new = replace(new, decode_tokens=old.decode_tokens + decoded,
                              decode_seconds=old.decode_seconds + decoded / stats.tokens_per_s)
            self._by_profile[stats.profile_id] = new
            return new

    def get(self, profile_id: int) -> ServerMetrics | None:
        with self._lock:
            return self._by_profile.get(profile_id)

    def all(self) -> dict[int, ServerMetrics]:
        with self._lock:
            return dict(self._by_profile)


# --- pure helpers --------------------------------------------------------------------------


def with_system_prompt(messages: Sequence[Mapping[str, Any]], prompt: str
                       ) -> list[dict[str, Any]]:
    """The messages with `prompt` as a leading system message, unless they have one."""
    out = [dict(m) for m in messages]
    if not prompt.strip() or any(m.get("role") in _SYSTEM_ROLES for m in out):
        return out
    return [{"role": "system", "content": prompt}, *out]


def prepare_body(snap: ServerSnapshot, body: Mapping[str, Any], *, stream: bool,
                 completion: bool = False) -> dict[str, Any]:
    """The request to send: profile defaults and system prompt applied, model named.
    `completion` requests (a prompt, no messages) get no system prompt."""
    profile = snap.profile
    # A shallow copy: only top-level keys change, and messages and stream_options are
    # replaced by new objects (a deep copy cost ~50 us per gateway request).
    out = dict(body)
    if not completion:
        out["messages"] = with_system_prompt(out.get("messages") or [], profile.system_prompt)
        if profile.backend is Backend.MLX_VLM:
            out["messages"] = for_mlx_vlm(out["messages"])
    # The server has one model; name it as it was loaded (mlx_vlm requires the field).
    out["model"] = snap.model_path
    if "max_tokens" not in out and "max_completion_tokens" not in out \
            and profile.max_tokens is not None:
        out["max_tokens"] = profile.max_tokens
    if "temperature" not in out and profile.temperature is not None:
        out["temperature"] = profile.temperature
    if "top_p" not in out and profile.top_p is not None:
        out["top_p"] = profile.top_p
    out["stream"] = stream
    if stream:
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True
        out["stream_options"] = options
    else:
        out.pop("stream_options", None)
    return out


def parse_chunk(payload: Mapping[str, Any], data: str = "") -> ChatChunk:
    """A streamed chunk or a whole response (chat, or completions with `text`);
    reasoning from `reasoning` or `reasoning_content` (mlx_lm uses the first, mlx_vlm
    sends both). `data` is the JSON text it was parsed from, kept for passthrough."""
    choices = payload.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], Mapping) else {}
    part = choice.get("delta") or choice.get("message") or {}
    reasoning = part.get("reasoning") or part.get("reasoning_content") or ""
    tool_calls = tuple(t for t in (part.get("tool_calls") or []) if isinstance(t, Mapping))
    return ChatChunk(
        content=part.get("content") or choice.get("text") or "", reasoning=reasoning,
        tool_calls=tuple(dict(t) for t in tool_calls),
        finish_reason=choice.get("finish_reason"), usage=Usage.parse(payload.get("usage")),
        raw=payload if type(payload) is dict else dict(payload), data=data)


def sse_data(response: httpx.Response, min_interval_s: float = STREAM_READ_INTERVAL_S
             ) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream. Comments (": keepalive N/M"
    during prefill) and blank lines are skipped. Splitting bytes here costs less than
    httpx's text line decoder, and this runs once per token.

    Once data flows, the socket is read at most every `min_interval_s`: what was read
    is handed on at once, then the next read waits out the rest of the interval.
    """
    pending = b""
    flowing = False
    for block in response.iter_bytes():
        arrived = time.monotonic()
        pending += block
        if b"\n" in block:
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    flowing = True
                    yield line[5:].strip().decode()
        if flowing:
            pause = arrived + min_interval_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    if pending.startswith(b"data:"):
        yield pending[5:].strip().decode()


# --- the client ---------------------------------------------------------------------------


class InferenceClient:
    def __init__(self, supervisor: Supervisor, metrics: MetricsStore, *,
                 wait_ready_s: float = DEFAULT_WAIT_READY_S,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self._supervisor = supervisor
        self.metrics = metrics
        self._wait_ready_s = wait_ready_s
        timeout = httpx.Timeout(read_timeout_s, connect=5.0)
        self._http = httpx.Client(timeout=timeout, verify=tls_context())
        # Abortable requests: one connection each, see Abort.
        self._http_own = httpx.Client(timeout=timeout, verify=tls_context(),
                                      limits=httpx.Limits(max_keepalive_connections=0))

    def close(self) -> None:
        self._http.close()
        self._http_own.close()

    def ready_server(self, profile_id: int, wait_s: float | None = None) -> ServerSnapshot:
        """The READY server of a profile (waits while it loads; see Supervisor.wait_ready)."""
        return self._supervisor.wait_ready(
            profile_id, self._wait_ready_s if wait_s is None else wait_s)

    def _busy(self, profile_id: int) -> AbstractContextManager[None]:
        # The supervisor's one lease count: idle stop and eviction leave the server be.
        return self._supervisor.lease(profile_id)

    def stream_chat(self, profile_id: int, body: Mapping[str, Any], *,
                    wait_s: float | None = None,
                    on_stats: Callable[[RequestStats], None] | None = None,
                    on_open: Callable[[], None] | None = None,
                    abort: Abort | None = None) -> ChunkStream:
        """Chunks as the server sends them; the last one carries `usage`. `on_stats`
        receives the request's measured figures when the stream ends (the chat shows them);
        `on_open` is called once the server accepted the request, before the prompt is
        processed (the gateway sends its client the status line then). Setting `abort`
        ends the request at once (RequestAborted)."""
        return self._stream(profile_id, body, CHAT_PATH, wait_s, on_stats, on_open=on_open,
                            abort=abort)

    def stream_completion(self, profile_id: int, body: Mapping[str, Any], *,
                          wait_s: float | None = None,
                          on_open: Callable[[], None] | None = None,
                          abort: Abort | None = None) -> ChunkStream:
        """A legacy completion (`prompt`), streamed; the text is in `content`."""
        return self._stream(profile_id, body, COMPLETIONS_PATH, wait_s, on_open=on_open,
                            abort=abort)

    def chat(self, profile_id: int, body: Mapping[str, Any], *, wait_s: float | None = None,
             abort: Abort | None = None) -> ChatResult:
        """One whole answer. Without streaming there is no time to first token; tokens/s
        is then completion tokens over the whole request (prefill included)."""
        return self._once(profile_id, body, CHAT_PATH, wait_s, abort)

    def complete(self, profile_id: int, body: Mapping[str, Any], *,
                 wait_s: float | None = None, abort: Abort | None = None) -> ChatResult:
        """A legacy completion (`prompt`) in one answer; the text is in `content`."""
        return self._once(profile_id, body, COMPLETIONS_PATH, wait_s, abort)

    def _client(self, abort: Abort | None) -> tuple[httpx.Client, dict[str, Any]]:
        """The client and request extensions for a request, abortable or not."""
        if abort is None:
            return self._http, {}
        if abort.is_set():
            raise RequestAborted("The request was cancelled before it was sent.")
        return self._http_own, {"trace": abort.trace}

    @staticmethod
    def _failed(snap: ServerSnapshot, exc: httpx.HTTPError, abort: Abort | None,
                log_from: int = 0) -> InferenceError:
        if abort is not None and abort.is_set():
            log.info("request to %s cancelled: its client went away", snap.profile.name)
            return RequestAborted(f"The request to {snap.profile.name} was cancelled.")
        message = broken_answer(snap.profile.name, snap.pid, snap.log_path, log_from,
                                f"the connection failed ({exc})")
        log.warning("request to %s failed: %s", snap.profile.name, message)
        return InferenceError(message)

    def _refused(self, snap: ServerSnapshot, response: httpx.Response, log_from: int
                 ) -> InferenceError:
        said = refusal(snap.profile.name, response, snap.log_path, log_from)
        broken = beyond_answering(said)
        if broken is not None:
            self._supervisor.end_broken(snap, broken)
        return InferenceError(said, response.status_code)

    def _stream(self, profile_id: int, body: Mapping[str, Any], path: str,
                wait_s: float | None,
                on_stats: Callable[[RequestStats], None] | None = None, *,
                on_open: Callable[[], None] | None = None,
                abort: Abort | None = None) -> ChunkStream:
        # The lease before the server is looked for: an idle stop either sees it or the
        # request sees the server stopping (Supervisor.stop).
        with self._busy(profile_id):
            yield from self._stream_leased(profile_id, body, path, wait_s, on_stats,
                                           on_open=on_open, abort=abort)

    def _stream_leased(self, profile_id: int, body: Mapping[str, Any], path: str,
                       wait_s: float | None,
                       on_stats: Callable[[RequestStats], None] | None = None, *,
                       on_open: Callable[[], None] | None = None,
                       abort: Abort | None = None) -> ChunkStream:
        snap = self.ready_server(profile_id, wait_s)
        payload = prepare_body(snap, body, stream=True, completion=path == COMPLETIONS_PATH)
        url = snap.base_url + path
        log_from = log_size(snap.log_path)
        meter = StreamMeter(profile_id)
        ok = False
        http, extensions = self._client(abort)
        try:
            with http.stream("POST", url, json=payload, extensions=extensions,
                             headers=snap.profile.auth_headers()) as response:
                if abort is not None and "network_stream" in response.extensions:
                    abort.attach(response.extensions["network_stream"])
                if response.status_code >= 400:
                    response.read()
                    raise self._refused(snap, response, log_from)
                if on_open is not None:
                    on_open()
                for data in sse_data(response):
                    if data == "[DONE]":
                        ok = True
                        break
                    try:
                        decoded = json.loads(data)
                        chunk = parse_chunk(decoded, data)
                    except (ValueError, AttributeError) as exc:
                        log.warning("bad chunk from %s: %s (%r)", snap.profile.name, exc,
                                    data[:200])
                        continue
                    error = stream_error(decoded)
                    if error is not None:  # mlx_vlm's way to fail after the 200 header
                        log.warning("%s failed while answering: %s", snap.profile.name, error)
                        raise InferenceError(f"{snap.profile.name} could not answer: {error}")
                    meter.saw(chunk.has_output, chunk.usage, decoded)
                    yield chunk
                if not ok:
                    if abort is not None and abort.is_set():
                        raise RequestAborted(f"The request to {snap.profile.name} was "
                                             "cancelled.")
                    # Both servers end a stream with [DONE]; they speak HTTP/1.0, so a
                    # server that dies mid-answer looks like a normal end of the body.
                    message = broken_answer(snap.profile.name, snap.pid, snap.log_path,
                                            log_from, "its reply ended early")
                    log.warning("stream from %s ended without [DONE]: %s", snap.profile.name,
                                message)
                    raise InferenceError(message)
        except httpx.HTTPError as exc:
            raise self._failed(snap, exc, abort, log_from) from exc
        finally:
            stats = meter.stats(ok)
            self.metrics.record(stats)
            if on_stats is not None:
                on_stats(stats)

    def _once_streamed(self, profile_id: int, body: Mapping[str, Any], path: str,
                       abort: Abort) -> ChatResult:
        """A whole answer read as a stream, so that `abort` stops mlx_lm at its next
        token (see manager/servers/assemble.py)."""
        measured: list[RequestStats] = []
        raw = whole_response(chunk.raw for chunk in self._stream_leased(  # leased by _once
            profile_id, body, path, 0, measured.append, abort=abort))
        parsed = parse_chunk(raw)
        return ChatResult(parsed.content, parsed.reasoning, parsed.tool_calls,
                          parsed.finish_reason, parsed.usage, measured[0], raw)

    def _once(self, profile_id: int, body: Mapping[str, Any], path: str,
              wait_s: float | None, abort: Abort | None = None) -> ChatResult:
        with self._busy(profile_id):  # before the server is looked for, as in _stream
            return self._once_leased(profile_id, body, path, wait_s, abort)

    def _once_leased(self, profile_id: int, body: Mapping[str, Any], path: str,
                     wait_s: float | None, abort: Abort | None = None) -> ChatResult:
        snap = self.ready_server(profile_id, wait_s)
        if abort is not None and snap.profile.backend is Backend.MLX_LM:
            return self._once_streamed(profile_id, body, path, abort)
        payload = prepare_body(snap, body, stream=False, completion=path == COMPLETIONS_PATH)
        started = time.perf_counter()
        log_from = log_size(snap.log_path)
        ok, usage, parsed = False, None, ChatChunk()
        http, extensions = self._client(abort)
        try:
            response = http.post(snap.base_url + path, json=payload, extensions=extensions,
                                 headers=snap.profile.auth_headers())
            if response.status_code >= 400:
                raise self._refused(snap, response, log_from)
            try:
                parsed = parse_chunk(response.json())
            except (ValueError, AttributeError) as exc:
                raise InferenceError(f"{snap.profile.name} sent an answer that is not JSON.",
                                     response.status_code) from exc
            usage, ok = parsed.usage, True
        except httpx.HTTPError as exc:
            raise self._failed(snap, exc, abort, log_from) from exc
        finally:
            duration = time.perf_counter() - started
            completion = usage.completion_tokens if usage else None
            stats = RequestStats(
                profile_id=profile_id, finished_at=time.time(), duration_s=duration,
                ttft_s=None,
                tokens_per_s=(completion / duration) if completion and duration > 0 else None,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=completion, ok=ok)
            self.metrics.record(stats)
        return ChatResult(parsed.content, parsed.reasoning, parsed.tool_calls,
                          parsed.finish_reason, usage, stats, parsed.raw)

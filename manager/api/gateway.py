"""One URL for every model: OpenAI, Anthropic and Ollama APIs in front of all profiles.

    GET  /v1/models                  the profiles (id = profile name), both SDKs' formats
    GET  /v1/models/{name}
    POST /v1/chat/completions        OpenAI, streaming or not (tools, images, usage)
    POST /v1/completions             OpenAI legacy completions (mlx_lm profiles)
    POST /v1/messages                Anthropic Messages, streaming or not
    POST /v1/messages/count_tokens   a 1-token request reading usage.prompt_tokens
    POST /v1/responses               OpenAI Responses (and stored ones: responses_routes.py)
    POST /api/chat, /api/generate    Ollama (the rest of /api: ollama_routes.py)
    GET  /metrics                    Prometheus text (admin keys only)

The routes are registered in gateway_routes.py. Auth (manager/api/key_auth.py): every
gateway path answers to the API key's user (`Authorization: Bearer` or `x-api-key`),
never to a session cookie; no key is a 401 in the API's own error format.

Limits (manager/api/limits.py, schema.py, images.py): the body is read up to a cap
(413), each API key has a concurrency and a per-minute limit (429 + Retry-After), the
body's shape is checked field by field (400 naming the field), max_tokens is capped by
the profile and the model's context, images become data the gateway checked itself,
and a client that leaves aborts its model server request at once (servers/abort.py).

A stopped profile is started on demand (manager/servers/placement.py) and waited for
(bounded, on the supervisor's Condition); streams get keepalive comments. A server that
refuses everything from then on (mlx_lm's dead generation thread) is ended.

Streams (manager/api/relay.py has the contract): for a READY server everything up to the
request to the server runs on the event loop, and the answer is read and relayed there
too, as bytes for OpenAI clients and through a `StreamFormat` for the others. Worker
threads only for blocking work: a start on demand and the wait for it (the status line
goes out at once with a keepalive), large bodies (image checks), whole answers. Errors
before the status line get their own HTTP status; later ones an error event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from typing import Any

from anyio import CapacityLimiter, to_thread
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from manager.api import ollama_flow, prometheus
from manager.api.anthropic import from_openai_response, to_openai_request
from manager.api.gateway_job import OLLAMA, Job, Kind
from manager.api.images import MediaGate
from manager.api.key_auth import api_checked, api_key_id, api_user, log_refusal, refusal
from manager.api.limits import (
    KeyLimiter,
    ModelFacts,
    cap_max_tokens,
    check_token_ids,
    read_body,
    token_limit,
)
from manager.api.ollama_routes import not_found
from manager.api.relay import Loading, Once, RelayResponse, done_unless_gone, unless_gone
from manager.api.responses import left_out_tools, warning_header
from manager.api.responses_routes import ResponsesApi
from manager.api.schema import (
    Checker,
    check_chat,
    check_completion,
    check_messages,
    check_responses,
    check_values,
    values_known_good,
)
from manager.api.stream_formats import AnthropicFormat, OpenAIPassthrough, StreamFormat
from manager.api.wire import (
    ApiFormat,
    Failure,
    GatewayError,
    Methods,
    ModelRenamer,
    api_format,
    dumps,
    error_body,
    failure_for,
    model_entry,
    model_list,
    parse_body_strict,
    requested_model,
    resolve_profile,
    with_developer_as_system,
    with_thinking_switch,
)
from manager.errors import ValidationError
from manager.read_cache import Checked
from manager.servers.abort import Abort
from manager.servers.failure_report import beyond_answering
from manager.servers.inference import InferenceError
from manager.servers.profiles import MAX_TOKENS_LIMIT, Backend, Profile
from manager.servers.prompt_counts import PromptCounts
from manager.servers.server_stream import ServerStream, count_then_open, known_count
from manager.servers.snapshot import CancelEvent
from manager.servers.supervisor import ServerSnapshot, ServerState
from manager.services import Services

log = logging.getLogger(__name__)

#: How long a request waits for a model that is loading before answering 503.
WAIT_READY_S = 300.0
#: Worker threads for blocking gateway work (a start, a wait, a whole answer).
MAX_CONCURRENT = 256
#: Bodies up to this size are checked on the event loop (text, small images); larger
#: ones, and any when remote images may be fetched, in a worker thread.
INLINE_BODY_BYTES = 64 * 1024


_CHECKS: dict[Kind, Checker] = {Kind.CHAT: check_chat, Kind.COMPLETION: check_completion,
                                Kind.MESSAGES: check_messages,
                                Kind.COUNT_TOKENS: check_messages,
                                Kind.RESPONSES: check_responses}


def _fit(fmt: StreamFormat, snap: ServerSnapshot, prompt_tokens: int) -> None:
    """What a format learns from the server: its model's name, the prompt's tokens."""
    if isinstance(fmt, OpenAIPassthrough):
        fmt.served_as(snap.model_path)
    elif isinstance(fmt, AnthropicFormat):
        fmt.translator.input_tokens = prompt_tokens


def _openai_format(job: Job, profile: Profile) -> StreamFormat:
    options = job.body.get("stream_options")
    return OpenAIPassthrough(profile.name, include_usage=isinstance(options, dict)
                             and bool(options.get("include_usage")))


def _responses_format(job: Job, profile: Profile) -> StreamFormat:
    if job.responses is None:
        raise RuntimeError("a Responses stream without its prepared request")
    return job.responses.format(profile.name)


#: The stream format of each route that streams.
_FORMATS: dict[Kind, Callable[[Job, Profile], StreamFormat]] = {
    Kind.CHAT: _openai_format, Kind.COMPLETION: _openai_format,
    Kind.MESSAGES: lambda job, profile: AnthropicFormat(profile.name),
    Kind.RESPONSES: _responses_format,
    Kind.OLLAMA_CHAT: lambda job, profile: ollama_flow.stream_format(
        False, profile, job.received_ns),
    Kind.OLLAMA_GENERATE: lambda job, profile: ollama_flow.stream_format(
        True, profile, job.received_ns),
}


def error_response(fmt: ApiFormat, failure: Failure, request: Request | None = None,
                   model: str | None = None) -> JSONResponse:
    """A refusal in the API's format; with the request, logged once (key name, route,
    model, reason)."""
    if fmt is ApiFormat.OLLAMA and failure.code == "model_not_found" and model:
        failure = not_found(model)
    if request is not None:
        log_refusal(request, failure, model)
    return JSONResponse(error_body(fmt, failure), status_code=failure.status,
                        headers=failure.headers())


class Gateway:
    """The request flow behind the routes; one per app."""

    def __init__(self, services: Services, *, wait_ready_s: float = WAIT_READY_S,
                 limiter: CapacityLimiter | None = None) -> None:
        self._services = services
        self._wait_ready_s = wait_ready_s
        self._limiter = limiter or CapacityLimiter(MAX_CONCURRENT)
        self.limiter = self._limiter  # shared with the /api routes (ollama_routes.py)
        self._tasks: set[asyncio.Future[Any]] = set()
        settings = services.settings
        self._max_body = settings.gateway_max_body_bytes
        self._keys = KeyLimiter(settings.gateway_concurrent_per_key,
                                settings.gateway_requests_per_minute)
        self._media = MediaGate(max_bytes=settings.gateway_max_image_bytes,
                                allow_remote=settings.gateway_remote_images)
        self.facts = ModelFacts(services.profiles)  # shared with the /api routes
        self.responses = ResponsesApi(services.responses)
        self.methods = Methods()  # what the /v1 routes take (gateway_routes.py)
        self._counts = PromptCounts()  # an Anthropic stream's prompt, counted once

    # -- entry points (event loop) ----------------------------------------------------------

    async def models(self, request: Request, name: str | None = None) -> Response:
        fmt = ApiFormat.ANTHROPIC if "anthropic-version" in request.headers \
            else ApiFormat.OPENAI
        user = api_user(request)
        if user is None:
            return error_response(fmt, refusal(request), request)
        try:
            payload = await to_thread.run_sync(self._model_payload, fmt, name,
                                               limiter=self._limiter)
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the API's format
            return error_response(fmt, failure_for(exc), request, name)
        return Response(dumps(payload), media_type="application/json")

    async def serve(self, request: Request, kind: Kind) -> Response:
        fmt = api_format(request.scope["path"])  # not request.url: built per request
        user = api_user(request)
        key_id = api_key_id(request)
        if user is None or key_id is None:
            return error_response(fmt, refusal(request), request)
        refused = self._keys.admit(key_id)
        if refused is not None:
            return error_response(fmt, refused, request)
        release = Once(partial(self._keys.release, key_id))
        streaming = False
        received = time.perf_counter_ns()
        body: dict[str, Any] = {}
        try:
            try:
                raw = await read_body(request, self._max_body)

                def checked() -> Job:
                    nonlocal body
                    body, strict = parse_body_strict(raw)
                    values = not values_known_good(raw, strict)  # still to check
                    if kind in OLLAMA:  # its own words for a missing model (values first)
                        ollama_flow.check(kind is Kind.OLLAMA_GENERATE, body, values=values)
                    elif values:
                        check_values(body)
                    made = Job(kind, user, requested_model(body), body, len(raw),
                               received_ns=received)
                    if kind not in OLLAMA:
                        _CHECKS[kind](body)
                    return made

                # Seconds of parsing for megabytes of JSON: not on the loop every request
                # and stream of the dashboard waits on.
                job = checked() if len(raw) <= INLINE_BODY_BYTES else \
                    await to_thread.run_sync(checked, limiter=self._limiter)
                if kind is Kind.RESPONSES:  # served as the chat request it becomes
                    prepared = await self.responses.prepare_async(user, body, self._limiter)
                    job = replace(job, body=prepared.chat, responses=prepared,
                                  size=job.size + prepared.history_size)
            except (GatewayError, ValidationError) as exc:
                model = body.get("model")
                return error_response(fmt, failure_for(exc), request,
                                      model if isinstance(model, str) else None)
            if job.streams():
                streaming = True  # the stream frees the key's slot (RelayResponse)
                response = await self._stream(request, job, release)
            else:
                response = await self._answer_unless_gone(request, job)
            if kind is Kind.RESPONSES:  # hosted tools it left out (web search...)
                response.headers.update(warning_header(left_out_tools(body)))
            return response
        finally:
            if not streaming:
                release()

    async def _answer_unless_gone(self, request: Request, job: Job) -> Response:
        """The whole answer; a client that leaves first aborts the model's request."""
        abort = Abort()
        work = asyncio.ensure_future(to_thread.run_sync(self._answer, job, abort,
                                                        limiter=self._limiter))
        await done_unless_gone(request, work, abort.set)
        try:
            payload = await work
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the API's format
            return error_response(job.fmt, failure_for(exc), request, job.model)
        return Response(payload, media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        user = api_user(request)
        if user is None:
            return error_response(ApiFormat.OPENAI, refusal(request), request)
        if not user.is_admin:
            return error_response(ApiFormat.OPENAI, Failure(
                403, "Only an administrator's API key can read /metrics.", "admin_only"),
                request)
        if request.method not in ("GET", "HEAD"):
            return error_response(ApiFormat.OPENAI, Failure(
                405, "Use GET for /metrics.", "method_not_allowed", allow=("GET", "HEAD")),
                request)
        text = await to_thread.run_sync(self._metrics_text, limiter=self._limiter)
        return Response(text, media_type=prometheus.CONTENT_TYPE)

    async def unknown(self, request: Request) -> Response:
        fmt = api_format(request.url.path)
        if api_user(request) is None:
            return error_response(fmt, refusal(request), request)
        wrong = self.methods.refusal(request.method, request.url.path)
        return error_response(fmt, wrong or Failure(
            404, f"No such endpoint: {request.method} {request.url.path}. This gateway "
            "serves /v1/models, /v1/chat/completions, /v1/completions, /v1/messages and "
            "/v1/responses.",
            "unknown_endpoint"), request)

    async def _stream(self, request: Request, job: Job, release: Once) -> Response:
        """A stream (see manager/api/relay.py for the contract)."""
        held = ExitStack()
        held.callback(release)
        # Runs once the lease below is released (an ExitStack unwinds last in, first out).
        held.callback(self._keep_alive, job)
        try:
            profile = self._profile(job, api_checked(request))
            if job.size <= INLINE_BODY_BYTES and not self._media.fetches_remote:
                body = self._upstream_body(profile, job)
            else:
                body = await to_thread.run_sync(self._upstream_body, profile, job,
                                                limiter=self._limiter)
            held.callback(self._services.placement.hold(profile.id))
            snap = self._services.supervisor.snapshot(profile.id)
            if snap is not None and snap.state is ServerState.READY:
                return await self._relay_ready(request, job, profile, body, snap, held)
            fmt = _FORMATS[job.kind](job, profile)
            started = await to_thread.run_sync(partial(
                self._services.placement.ensure_started, job.user, profile,
                by=f"gateway ({job.user.email})"), limiter=self._limiter)
            return RelayResponse(fmt, held, loading=Loading(
                f"{profile.name} is {'starting' if started else 'loading'}",
                partial(self._wait_ready, profile), partial(self._connect, job, fmt, body),
                self._limiter), model=job.model)
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the API's format
            held.close()
            return error_response(job.fmt, failure_for(exc), request, job.model)

    async def _relay_ready(self, request: Request, job: Job, profile: Profile,
                           body: dict[str, Any], snap: ServerSnapshot, held: ExitStack
                           ) -> RelayResponse:
        """The request goes out first, then the stream format is made (regexes, names,
        templates) while the server works on it: off the time to first token."""
        stream, prompt_tokens = await self._open(job, body, snap, request)
        try:
            fmt = _FORMATS[job.kind](job, profile)
            _fit(fmt, snap, prompt_tokens)
        except BaseException:
            stream.abort()
            stream.close()
            raise
        return RelayResponse(fmt, held, stream=stream, model=job.model)

    async def _connect(self, job: Job, fmt: StreamFormat, body: dict[str, Any],
                       snap: ServerSnapshot) -> ServerStream:
        stream, prompt_tokens = await self._open(job, body, snap)
        _fit(fmt, snap, prompt_tokens)
        return stream

    async def _open(self, job: Job, body: dict[str, Any], snap: ServerSnapshot,
                    request: Request | None = None) -> tuple[ServerStream, int]:
        """The stream, and for an Anthropic one its prompt's tokens (message_start
        carries them; 0 for the others). With `request`, a prompt still to be counted
        (which can take a while) is given up when its client leaves."""
        metrics = self._services.metrics
        try:
            if job.kind is Kind.MESSAGES:
                key, known, prepared = known_count(self._counts, snap, body)
                if known is None:
                    opening = count_then_open(metrics, snap, body, counts=self._counts,
                                              key=key)
                    return await (opening if request is None
                                  else unless_gone(request, opening))
                return await ServerStream.open(metrics, snap, body, prepared=prepared), known
            return await ServerStream.open(metrics, snap, body, completion=job.completion), 0
        except InferenceError as exc:
            broken = beyond_answering(exc.message)
            if broken is not None:
                self._services.supervisor.end_broken(snap, broken)
            raise

    def _wait_ready(self, profile: Profile, cancel: CancelEvent) -> ServerSnapshot:
        # Woken by the server's transition, or at once when the client goes away.
        return self._services.placement.wait_ready(profile.id, self._wait_ready_s, cancel)

    # -- the blocking part (a worker thread) ----------------------------------------------

    def _model_payload(self, fmt: ApiFormat, name: str | None) -> dict[str, Any]:
        profiles = self._services.profiles.list()
        snaps = {s.profile_id: s for s in self._services.supervisor.snapshots()}
        checks = self._services.tool_check.metadata(profiles)
        if name is None:
            return model_list(fmt, profiles, snaps, checks)
        profile = resolve_profile(profiles, name)
        return model_entry(fmt, profile, snaps.get(profile.id), checks.get(profile.id))

    def _metrics_text(self) -> str:
        services = self._services
        return prometheus.render(
            services.profiles.list(),
            {s.profile_id: s for s in services.supervisor.snapshots()},
            services.metrics.all(), services.placement.stats())

    def _profile(self, job: Job, checked: Checked | None = None) -> Profile:
        profile = resolve_profile(self._services.profiles.list(checked), job.model)
        if job.kind is Kind.COMPLETION and profile.backend is Backend.MLX_VLM:
            raise GatewayError(400, f"{profile.name} runs on mlx_vlm, which only answers chat "
                               "requests: use /v1/chat/completions.", "unsupported_endpoint")
        return profile

    def _ready(self, profile: Profile, job: Job, abort: Abort) -> ServerSnapshot:
        """Start the profile's server if needed and wait (bounded) until it is READY."""
        placement = self._services.placement
        placement.ensure_started(job.user, profile, by=f"gateway ({job.user.email})")
        # Woken by the server's transition, or at once when the client goes away.
        return placement.wait_ready(profile.id, self._wait_ready_s, abort)

    def _upstream_body(self, profile: Profile, job: Job) -> dict[str, Any]:
        """The OpenAI request to send, checked before any server is started for it:
        max_tokens capped, images turned into data the gateway checked itself."""
        body = job.body
        if job.kind in OLLAMA:
            body = ollama_flow.upstream(job.generate, body, profile)
        elif job.kind in (Kind.MESSAGES, Kind.COUNT_TOKENS):
            if job.kind is Kind.COUNT_TOKENS:
                body = {**body, "max_tokens": 1, "stream": False}
            body = with_thinking_switch(to_openai_request(body, profile.name), body)
        elif job.kind is Kind.COMPLETION:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:  # (schema.check_completion)
                body = {**body, "prompt": prompt[0]}
            elif not isinstance(prompt, str):
                raise ValidationError("prompt: a string is required", "prompt")
        elif not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ValidationError("messages: a non-empty list is required", "messages")
        else:
            body = with_developer_as_system(dict(body))
        seed = body.get("seed")
        if isinstance(seed, (int, float)) and seed < 0:  # -1 as clients mean it: random
            body = {name: value for name, value in body.items() if name != "seed"}
        body = cap_max_tokens(body, token_limit(profile.max_tokens, self.facts.context_length(profile),
                                                fallback=MAX_TOKENS_LIMIT))
        check_token_ids(body, self.facts.vocab_size(profile), profile.name)
        if not job.completion:
            caps = self.facts.caps(profile) if profile.backend is Backend.MLX_LM else None
            # mlx_lm reads images for some vision models: a part that is not text is
            # refused only where the model's files say it reads text only.
            text_only = profile.name if caps is not None and not caps.multimodal else None
            body["messages"] = self._media.messages(body["messages"], text_only=text_only)
        return body

    def _keep_alive(self, job: Job) -> None:
        """Ollama's keep_alive, once the request let go of its server (placement.py)."""
        if job.kind in OLLAMA:
            ollama_flow.keep_alive(self._services, job.user, job.model, job.body)

    def _load(self, job: Job, abort: Abort) -> bytes:
        """An Ollama request with nothing to generate: load the model (or unload it)."""
        profile = self._profile(job)
        if ollama_flow.keep_alive_s(job.body) != 0:
            with self._services.placement.lease(profile.id):
                self._ready(profile, job, abort)
        return dumps(ollama_flow.loaded(self._services.placement, job.user, profile,
                                        job.generate, job.received_ns, job.body))

    def _answer(self, job: Job, abort: Abort) -> bytes:
        inference = self._services.inference
        if job.kind in OLLAMA and ollama_flow.load_only(job.generate, job.body):
            return self._load(job, abort)
        profile = self._profile(job)
        body = self._upstream_body(profile, job)
        with self._services.placement.lease(profile.id):
            snap = self._ready(profile, job, abort)
            ready_ns = time.perf_counter_ns()
            if job.completion:
                result = inference.complete(profile.id, body, wait_s=0, abort=abort)
            else:
                result = inference.chat(profile.id, body, wait_s=0, abort=abort)
        if job.kind in OLLAMA:
            self._keep_alive(job)
            return dumps(ollama_flow.whole_answer(job.generate, profile, job.received_ns,
                                                  ready_ns, result.raw, result.stats.ttft_s))
        if job.kind is Kind.COUNT_TOKENS:
            # The server counts: the prompt tokens of a 1-token answer (templates, tools
            # and the profile's system prompt included, as in the real request).
            if result.usage is None or result.usage.prompt_tokens is None:
                raise GatewayError(502, f"{profile.name} did not report token counts.",
                                   "backend_error")
            return dumps({"input_tokens": result.usage.prompt_tokens})
        if job.kind is Kind.MESSAGES:
            return dumps(from_openai_response(result.raw, profile.name))
        if job.responses is not None:
            return job.responses.answer(profile.name, result.raw)
        return dumps(ModelRenamer(snap.model_path, profile.name).payload(result.raw))

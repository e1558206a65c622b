"""Ollama's API: the routes under /api, for clients that speak only Ollama.

    GET  /api/version                 the Ollama API level this gateway answers as
    GET  /api/tags                    the profiles, as models (name = profile name)
    GET  /api/ps                      the profiles whose server is ready
    POST /api/show                    one profile: details, capabilities, context
    POST /api/chat, /api/generate     through the gateway's request flow (gateway.py)
    /api/pull, push, create, copy, delete, blobs: refused; models are managed on the
    dashboard.

Same API keys as /v1 (`Authorization: Bearer`), refusals and errors as Ollama writes
them (`{"error": "..."}` with the HTTP status), wire mapping in ollama.py and
ollama_wire.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from manager.api.key_auth import api_user, log_refusal, one_line, refusal
from manager.api.limits import ModelFacts, read_body
from manager.api.ollama import NEVER_S, OLLAMA_VERSION
from manager.api.ollama_wire import ps_entry, show_payload, tags_entry, timestamp
from manager.api.wire import (
    ALL_METHODS,
    Failure,
    GatewayError,
    Methods,
    dumps,
    parse_body,
    resolve_profile,
)
from manager.errors import ManagerError, NotFound
from manager.models.capabilities import is_apple_silicon
from manager.servers.states import ServerState
from manager.services import Services

log = logging.getLogger(__name__)

MANAGED_ON_DASHBOARD = (
    "Models are managed on the MLX Model Manager dashboard (Models and Profiles tabs), not "
    "through {path}. Every profile is served as a model: GET /api/tags lists them.")
Handler = Callable[[Request], Awaitable[Response]]


def ollama_error(request: Request, failure: Failure, model: str | None = None
                 ) -> JSONResponse:
    """An Ollama-shaped refusal, logged once with the key's name, route and model."""
    log_refusal(request, failure, model)
    return JSONResponse({"error": failure.message}, status_code=failure.status,
                        headers=failure.headers())


def not_found(name: str) -> Failure:
    return Failure(404, f"model {name!r} not found: GET /api/tags lists the models "
                   "(profiles) this gateway serves", "model_not_found")


class OllamaModels:
    """What /api/tags, /api/ps and /api/show read: profiles, their servers and what
    their models can do (the gateway's `ModelFacts`, read once per model)."""

    def __init__(self, services: Services, facts: ModelFacts) -> None:
        self._services = services
        self.caps = facts.caps
        self.context_length = facts.context_length

    def tags(self) -> dict[str, Any]:
        return {"models": [tags_entry(p, self.caps(p))
                           for p in self._services.profiles.list()]}

    def ps(self) -> dict[str, Any]:
        supervisor = self._services.supervisor
        models = []
        for snap in supervisor.snapshots():
            if snap.state is not ServerState.READY:
                continue
            profile = snap.profile
            models.append(ps_entry(
                profile, self.caps(profile), self._services.placement.need_bytes(profile),
                self._expires_at(profile.id), self.context_length(profile),
                unified_memory=is_apple_silicon()))
        return {"models": models}

    def _expires_at(self, profile_id: int) -> str:
        """When the server stops for being idle, if no request comes."""
        supervisor = self._services.supervisor
        limit = supervisor.idle_limit(profile_id)
        if limit is None:
            return timestamp(time.time() + NEVER_S)
        activity = supervisor.activity(profile_id)
        clock = supervisor.clock
        idle = 0.0 if activity.leases else max(0.0, clock.monotonic() - activity.last_used)
        return timestamp(clock.time() + min(NEVER_S, max(0.0, limit - idle)))

    def show(self, name: str) -> dict[str, Any]:
        profile = resolve_profile(self._services.profiles.list(), name)
        return show_payload(profile, self.caps(profile), self.context_length(profile))


class OllamaRoutes:
    """The /api handlers; chat and generate are the gateway's (`serve_chat`,
    `serve_generate`)."""

    def __init__(self, services: Services, limiter: CapacityLimiter, facts: ModelFacts, *,
                 serve_chat: Handler | None = None,
                 serve_generate: Handler | None = None) -> None:
        self._services = services
        self._models = OllamaModels(services, facts)
        self._limiter = limiter
        self._max_body = services.settings.gateway_max_body_bytes
        self.serve_chat = serve_chat
        self.serve_generate = serve_generate
        self.methods = Methods()  # what the router's paths take (gateway_routes.py)

    async def version(self, request: Request) -> Response:
        if api_user(request) is None:
            return ollama_error(request, refusal(request))
        return Response(dumps({"version": OLLAMA_VERSION}), media_type="application/json")

    async def tags(self, request: Request) -> Response:
        return await self._read(request, self._models.tags)

    async def ps(self, request: Request) -> Response:
        return await self._read(request, self._models.ps)

    async def _read(self, request: Request, read: Callable[[], dict[str, Any]]) -> Response:
        if api_user(request) is None:
            return ollama_error(request, refusal(request))
        try:
            payload = await to_thread.run_sync(read, limiter=self._limiter)
        except ManagerError as exc:
            log.warning("%s failed: %s", one_line(request.url.path), exc.message)
            return ollama_error(request, Failure(503, exc.message, "unavailable"))
        return Response(dumps(payload), media_type="application/json")

    async def show(self, request: Request) -> Response:
        if api_user(request) is None:
            return ollama_error(request, refusal(request))
        name: str | None = None
        try:
            body = parse_body(await read_body(request, self._max_body))
            # Older clients send `name`.
            name = body.get("model") if body.get("model") is not None else body.get("name")
            if not isinstance(name, str) or not name.strip():
                raise GatewayError(400, "model is required: name a model from GET /api/tags.",
                                   "model_required")
            payload = await to_thread.run_sync(self._models.show, name.strip(),
                                               limiter=self._limiter)
        except GatewayError as exc:
            return ollama_error(request, exc.failure, name)
        except NotFound:
            return ollama_error(request, not_found(str(name)), name)
        return Response(dumps(payload), media_type="application/json")

    async def manage(self, request: Request) -> Response:
        if api_user(request) is None:
            return ollama_error(request, refusal(request))
        return ollama_error(request, Failure(
            403, MANAGED_ON_DASHBOARD.format(path=request.url.path), "managed_on_dashboard"))

    async def unknown(self, request: Request) -> Response:
        if api_user(request) is None:
            return ollama_error(request, refusal(request))
        wrong = self.methods.refusal(request.method, request.url.path)
        return ollama_error(request, wrong or Failure(
            404, f"No such endpoint: {request.method} {request.url.path}. This gateway serves "
            "Ollama's /api/version, /api/tags, /api/ps, /api/show, /api/chat and "
            "/api/generate (no embeddings).", "unknown_endpoint"))

    async def chat(self, request: Request) -> Response:
        if self.serve_chat is None:
            return await self.unknown(request)
        return await self.serve_chat(request)

    async def generate(self, request: Request) -> Response:
        if self.serve_generate is None:
            return await self.unknown(request)
        return await self.serve_generate(request)


def add_ollama_routes(router: APIRouter, routes: OllamaRoutes) -> None:
    """Register /api (before Gradio is mounted at '/')."""
    table: list[tuple[str, Handler, list[str]]] = [
        ("/api/version", routes.version, ["GET", "HEAD"]),
        ("/api/tags", routes.tags, ["GET", "HEAD"]),
        ("/api/ps", routes.ps, ["GET", "HEAD"]),
        ("/api/show", routes.show, ["POST"]),
        ("/api/chat", routes.chat, ["POST"]),
        ("/api/generate", routes.generate, ["POST"]),
    ]
    for name in ("pull", "push", "create", "copy", "delete"):
        table.append((f"/api/{name}", routes.manage, ALL_METHODS))
    table.append(("/api/blobs/{digest:path}", routes.manage, ALL_METHODS))
    # Anything else under /api: an Ollama-shaped 404 (a 405 for a known path asked with
    # another method: Methods).
    table += [("/api", routes.unknown, ALL_METHODS),
              ("/api/{rest:path}", routes.unknown, ALL_METHODS)]
    for path, endpoint, methods in table:
        router.add_route(path, endpoint, methods=methods, include_in_schema=False)

"""The gateway's routes: each path and method to its handler on the `Gateway`
(gateway.py), the Responses API's stored responses (responses_routes.py) and Ollama's
/api (ollama_routes.py).

The POSTs that can stream are also served past the router (`GatewayRoutes.direct`, used
by gateway_front.py): one dict lookup instead of matching the path against each route
in turn and Starlette's per-route wrappers, on every request's way to its first token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from manager.api.gateway import WAIT_READY_S, Gateway
from manager.api.gateway_job import Kind
from manager.api.ollama_routes import OllamaRoutes, add_ollama_routes
from manager.api.wire import ALL_METHODS, ApiFormat, Methods, api_format
from manager.services import Services

#: The POST routes served by `Gateway.serve`, by path.
SERVED: Mapping[str, Kind] = {
    "/v1/chat/completions": Kind.CHAT, "/v1/completions": Kind.COMPLETION,
    "/v1/messages": Kind.MESSAGES, "/v1/messages/count_tokens": Kind.COUNT_TOKENS,
    "/v1/responses": Kind.RESPONSES,
    "/api/chat": Kind.OLLAMA_CHAT, "/api/generate": Kind.OLLAMA_GENERATE,
}


@dataclass(frozen=True)
class GatewayRoutes:
    """Every gateway route (`router`), and the POSTs of `SERVED` as plain ASGI apps by
    path (`direct`): what the router would run for them, without the router."""

    router: APIRouter
    direct: Mapping[str, ASGIApp]


def _served(gateway: Gateway, kind: Kind) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await gateway.serve(Request(scope, receive, send), kind)
        await response(scope, receive, send)
    return app


def build_gateway_router(services: Services, *, wait_ready_s: float = WAIT_READY_S
                         ) -> APIRouter:
    """The gateway's routes; include it before Gradio is mounted at '/'."""
    return build_gateway_routes(services, wait_ready_s=wait_ready_s).router


def build_gateway_routes(services: Services, *, wait_ready_s: float = WAIT_READY_S
                         ) -> GatewayRoutes:
    """The gateway's routes and its direct way to the POSTs that stream.

    Plain Starlette routes (`add_route`): the handlers read the request themselves, so
    FastAPI's per-request dependency and response-model machinery (~0.1 ms) is skipped.
    """
    gateway = Gateway(services, wait_ready_s=wait_ready_s)
    router = APIRouter(include_in_schema=False)

    async def ollama_chat(request: Request) -> Response:
        return await gateway.serve(request, Kind.OLLAMA_CHAT)

    async def ollama_generate(request: Request) -> Response:
        return await gateway.serve(request, Kind.OLLAMA_GENERATE)

    ollama = OllamaRoutes(services, gateway.limiter, gateway.facts, serve_chat=ollama_chat,
                          serve_generate=ollama_generate)
    add_ollama_routes(router, ollama)

    async def list_models(request: Request) -> Response:
        return await gateway.models(request)

    async def get_model(request: Request) -> Response:
        return await gateway.models(request, request.path_params["name"])

    async def chat_completions(request: Request) -> Response:
        return await gateway.serve(request, Kind.CHAT)

    async def completions(request: Request) -> Response:
        return await gateway.serve(request, Kind.COMPLETION)

    async def messages(request: Request) -> Response:
        return await gateway.serve(request, Kind.MESSAGES)

    async def count_tokens(request: Request) -> Response:
        return await gateway.serve(request, Kind.COUNT_TOKENS)

    async def metrics(request: Request) -> Response:
        return await gateway.metrics(request)

    async def unknown(request: Request) -> Response:
        return await gateway.unknown(request)

    for path, endpoint, methods in (
        ("/v1/models", list_models, ["GET"]),
        ("/v1/models/{name:path}", get_model, ["GET"]),
        ("/v1/chat/completions", chat_completions, ["POST"]),
        ("/v1/completions", completions, ["POST"]),
        ("/v1/messages", messages, ["POST"]),
        ("/v1/messages/count_tokens", count_tokens, ["POST"]),
        ("/v1/responses", partial(gateway.serve, kind=Kind.RESPONSES), ["POST"]),
        ("/v1/responses/{response_id}", gateway.responses.retrieve, ["GET"]),
        ("/v1/responses/{response_id}", gateway.responses.delete, ["DELETE"]),
        ("/v1/responses/{response_id}/input_items", gateway.responses.input_items, ["GET"]),
        ("/metrics", metrics, ALL_METHODS),
        # Any other /v1 path or method: an answer in the API's format (never Gradio).
        ("/v1", unknown, ALL_METHODS),
        ("/v1/{rest:path}", unknown, ALL_METHODS),
    ):
        router.add_route(path, endpoint, methods=methods, include_in_schema=False)
    # What each path takes, read once: both catch-alls (/v1 and /api) answer 405s from it.
    gateway.methods = ollama.methods = Methods.of(router.routes)

    async def unmatched(scope: Scope, receive: Receive, send: Send) -> None:
        """A gateway path that no route's pattern takes, for GatewayFront: one with a
        newline (%0a) in it, which Starlette's patterns stop at. The same 404 in the
        API's own format as any unknown path, not Starlette's plain-text one."""
        request = Request(scope, receive, send)
        under_api = api_format(scope["path"]) is ApiFormat.OLLAMA
        response = await (ollama.unknown(request) if under_api else unknown(request))
        await response(scope, receive, send)

    router.default = unmatched
    return GatewayRoutes(router, {path: _served(gateway, kind) for path, kind in SERVED.items()})

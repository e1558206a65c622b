"""The gateway's routes: each path and method to its handler on the `Gateway`
(gateway.py), the Responses API's stored responses (responses_routes.py) and Ollama's
/api (ollama_routes.py)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response

from manager.api.gateway import WAIT_READY_S, Gateway, Kind
from manager.api.ollama_routes import OllamaRoutes, add_ollama_routes
from manager.services import Services

_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def build_gateway_router(services: Services, *, wait_ready_s: float = WAIT_READY_S
                         ) -> APIRouter:
    """The gateway's routes; include it before Gradio is mounted at '/'.

    Plain Starlette routes (`add_route`): the handlers read the request themselves, so
    FastAPI's per-request dependency and response-model machinery (~0.1 ms) is skipped.
    """
    gateway = Gateway(services, wait_ready_s=wait_ready_s)
    router = APIRouter(include_in_schema=False)

    async def ollama_chat(request: Request) -> Response:
        return await gateway.serve(request, Kind.OLLAMA_CHAT)

    async def ollama_generate(request: Request) -> Response:
        return await gateway.serve(request, Kind.OLLAMA_GENERATE)

    add_ollama_routes(router, OllamaRoutes(services, gateway.limiter, gateway.facts,
                                           serve_chat=ollama_chat,
                                           serve_generate=ollama_generate))

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
        ("/metrics", metrics, _ALL_METHODS),
        # Any other /v1 path or method: an answer in the API's format (never Gradio).
        ("/v1", unknown, _ALL_METHODS),
        ("/v1/{rest:path}", unknown, _ALL_METHODS),
    ):
        router.add_route(path, endpoint, methods=methods, include_in_schema=False)
    return router

"""The gateway's own way in: an API request skips the dashboard's whole ASGI stack.

Every gateway path (/v1, /api, /metrics) answers to API keys only, never to a session
(key_auth.py). The dashboard's stack in front of its routes (FastAPI's telemetry and
body-limit layers, Starlette's error middleware, CORS, the session gate, the exception
and exit-stack middlewares, then routing past Gradio's mount) serves the pages; for a
gateway request it only adds work before the first token (on this small machine each
layer runs cold, ~10-20 us) and wrapper coroutines per streamed write.

`DashboardApp` is the FastAPI app with a door in front: `GatewayFront` claims a gateway
request with the same `gateway_auth` hook the session gate uses and hands it to the
gateway at once: a POST that can stream straight to its handler
(gateway_routes.GatewayRoutes.direct), the rest to the gateway's router. An exception
that escapes is uvicorn's to answer (a 500 if nothing was sent yet, as Starlette's error
middleware would). A request that carries an `Origin` header (a browser) takes the full
path, so the CORS middleware answers it exactly as before; so does everything that is
not a gateway path.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from manager.api.session_gate import ExtraAuth
from manager.api.wire import is_gateway_path


def _from_browser(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope.get("headers", ()))


class GatewayFront:
    """Gateway requests straight to `gateway` (a router) or, for the POSTs in `direct`
    (by path), to their handler."""

    def __init__(self, gateway: ASGIApp, claim: ExtraAuth,
                 direct: Mapping[str, ASGIApp] | None = None) -> None:
        self.gateway = gateway
        self.claim = claim
        self.direct = dict(direct or {})

    def takes(self, scope: Scope) -> bool:
        """An API client's request to a gateway path (not a browser's)."""
        return scope["type"] == "http" and is_gateway_path(scope["path"]) \
            and not _from_browser(scope)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.claim(HTTPConnection(scope))
        handler = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
        await (handler or self.gateway)(scope, receive, send)


class DashboardApp(FastAPI):
    """The dashboard's FastAPI app; with `front` set, the requests it takes go to it
    before anything of FastAPI's or Starlette's runs."""

    front: GatewayFront | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is not None and front.takes(scope):
            await front(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

"""The gateway's own way in: an API request skips the dashboard's middleware stack.

Every gateway path (/v1, /api, /metrics) answers to API keys only, never to a session
(key_auth.py). The dashboard's stack in front of its routes (CORS, the session gate,
the exception and exit-stack middlewares, then routing past Gradio's mount) serves the
pages; for a gateway request it only adds work: layers per request and wrapper
coroutines per streamed write (bench/gateway.py measures the CPU per token).

`GatewayFront` sits outermost (inside Starlette's own error middleware, which turns an
escaped exception into a 500 as before): it claims a gateway request with the same
`gateway_auth` hook the session gate uses and hands it to the gateway's router at once.
A request that carries an `Origin` header (a browser) takes the full path, so the CORS
middleware answers it exactly as before; so does everything that is not a gateway path.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from manager.api.session_gate import ExtraAuth
from manager.api.wire import is_gateway_path


def _from_browser(scope: Scope) -> bool:
    return any(name == b"origin" for name, _ in scope.get("headers", ()))


class GatewayFront:
    """ASGI middleware: gateway requests straight to `gateway` (a router), the rest to
    `app`."""

    def __init__(self, app: ASGIApp, gateway: ASGIApp, claim: ExtraAuth) -> None:
        self.app = app
        self.gateway = gateway
        self.claim = claim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_gateway_path(scope["path"]) \
                and not _from_browser(scope):
            await self.claim(HTTPConnection(scope))
            await self.gateway(scope, receive, send)
            return
        await self.app(scope, receive, send)

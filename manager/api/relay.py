"""The gateway's streaming core: a model server's answer relayed to the client on the
event loop, with no thread per chunk.

The contract (what a route that streams uses; the Responses and Ollama routes too):

1. Before the status line, the route resolves the profile, builds the OpenAI request
   for the server and holds what must be released at the end (the key's slot, the
   server's lease) in an `ExitStack`. Errors so far get their own HTTP status.
2. A READY server: `ServerStream.open(...)` (manager/servers/server_stream.py) sends the
   request; a refusal (4xx/5xx from the server) still gets its own status. Then
   `RelayResponse(fmt, held, stream=...)`.
   A server still starting: `RelayResponse(fmt, held, loading=Loading(...))`; the
   status line goes out at once with `fmt.comment(...)`, keepalives follow every
   KEEPALIVE_S while `Loading.ready` waits in a worker thread (woken at once when the
   client leaves), then `Loading.connect` opens the stream.
3. `fmt` is a `StreamFormat` (manager/api/stream_formats.py): `start()` (its events go
   out at once, so a client has read them by the first token), `batch(Batch)` per read
   of the server, `finish()` after [DONE], `error(Failure)` for a failure
   after the status line, `comment(text)` for keepalives. OpenAI streams are relayed as
   bytes (`OpenAIPassthrough`); translating formats subclass `ChunkFormat` and
   implement `feed(chunk) -> bytes` on decoded OpenAI chunks (`AnthropicFormat`).
4. `held` is closed (the key's slot freed) before the last bytes go out, so a client's
   next request is admitted. A client that leaves aborts the server's request at once
   (its connection is closed; mlx_lm stops at its next write) and the request is
   metered as not finished.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from anyio import CapacityLimiter, to_thread
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from manager.api.key_auth import log_refusal
from manager.api.stream_formats import StreamFormat
from manager.api.wire import failure_for
from manager.servers.abort import Abort
from manager.servers.inference import RequestAborted
from manager.servers.server_stream import PACE_S, ServerStream
from manager.servers.snapshot import CancelEvent, ServerSnapshot

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between keepalive comments while a model loads.
KEEPALIVE_S = 5.0
_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


@dataclass(frozen=True)
class Loading:
    """A server that is not READY yet: what to say, how to wait, how to connect."""

    message: str
    #: Blocking (run in a worker thread): the READY snapshot, or raises
    #: ServerLoading / ServerNotReady. Returns early once the CancelEvent is set.
    ready: Callable[[CancelEvent], ServerSnapshot]
    connect: Callable[[ServerSnapshot], Awaitable[ServerStream]]
    limiter: CapacityLimiter | None = None


class RelayResponse(Response):
    """An ASGI response that relays one model server stream in `fmt` (a Response only
    for the routing's types: like Starlette's StreamingResponse it has no body)."""

    def __init__(self, fmt: StreamFormat, held: ExitStack, *,
                 stream: ServerStream | None = None, loading: Loading | None = None,
                 pace_s: float = PACE_S, model: str | None = None) -> None:
        if (stream is None) == (loading is None):
            raise ValueError("a relay needs an open stream or a loading server")
        self.fmt = fmt
        self.status_code = 200
        self.background = None
        self.raw_headers = [(b"content-type", fmt.media_type.encode()), *_HEADERS]
        self._held = held
        self._model = model  # as the request named it (for the log of a failure)
        self._scope: Scope = {}
        self._connecting: asyncio.Future[ServerStream] | None = None
        self._stream = stream
        self._loading = loading
        self._pace_s = pace_s
        self._cancel = Abort()
        self.gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope = scope
        watcher = asyncio.ensure_future(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": self.raw_headers})
            last = await self._pump(send)
            self._held.close()  # before the last bytes: the client may ask again at once
            await send({"type": "http.response.body", "body": last, "more_body": False})
        finally:
            watcher.cancel()
            self._held.close()
            if self._stream is not None:
                self._stream.close()

    async def _pump(self, send: Send) -> bytes:
        """Everything but the last piece; returns the last piece."""
        fmt = self.fmt
        try:
            if self._stream is None:
                self._stream = await self._wait_and_connect(send)
                if self._stream is None:
                    return b""
            stream = self._stream
            head = fmt.start()
            if head:  # read by the client while the server works on the first token
                await send({"type": "http.response.body", "body": head, "more_body": True})
            async for batch in stream.batches(self._pace_s):
                piece = fmt.batch(batch)
                if piece:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            return fmt.finish()
        except Exception as exc:  # noqa: BLE001 - every failure ends the stream in its format
            if self.gone:
                log.info("stream cancelled: its client went away (%s)", exc)
                return b""
            failure = failure_for(exc)
            log_refusal(HTTPConnection(self._scope), failure, self._model)
            return fmt.error(failure)

    async def _wait_and_connect(self, send: Send) -> ServerStream | None:
        loading = self._loading
        if loading is None:
            raise RuntimeError("nothing to relay")
        comment = self.fmt.comment(loading.message)
        if comment:
            await send({"type": "http.response.body", "body": comment, "more_body": True})
        waiting = asyncio.ensure_future(to_thread.run_sync(
            loading.ready, self._cancel, limiter=loading.limiter, abandon_on_cancel=True))
        try:
            while True:
                done, _ = await asyncio.wait((waiting,), timeout=KEEPALIVE_S)
                if done:
                    break
                keepalive = self.fmt.comment("keepalive")
                if keepalive and not self.gone:
                    await send({"type": "http.response.body", "body": keepalive,
                                "more_body": True})
        except asyncio.CancelledError:
            self._cancel.set()
            raise
        snap = waiting.result()
        if self.gone:
            return None
        # A task, so a client that leaves cancels it (a prompt count can take a while).
        self._connecting = asyncio.ensure_future(loading.connect(snap))
        try:
            stream = await self._connecting
        except asyncio.CancelledError:
            if self.gone:
                return None
            raise
        if self.gone:  # left while the request was sent
            stream.abort()
        return stream

    async def _watch(self, receive: Receive) -> None:
        """Until the client disconnects; then end the server's request at once."""
        while (await receive())["type"] != "http.disconnect":
            continue
        self.gone = True
        self._cancel.set()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._stream is not None:
            self._stream.abort()


class Once:
    """A callable that runs its function once however often it is called (a key's slot
    is released by whichever of the request or its stream ends first)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._fn()


async def client_gone(request: Request) -> None:
    """Returns once the client closed its connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        continue


async def done_unless_gone(request: Request, work: asyncio.Future[Any],
                           stop: Callable[[], object]) -> bool:
    """Wait for `work` or for the client to leave, whichever comes first, and call `stop`
    if `work` is still running then (the client left, or this wait was cancelled).
    True when the client left."""
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left = gone.done() and not gone.cancelled()
        gone.cancel()
        if not work.done():
            stop()
    return left


async def unless_gone(request: Request, opening: Awaitable[T]) -> T:
    """Open a stream, or cancel the opening (closing its requests to the server) when the
    client leaves first: an Anthropic stream counts its prompt first, which can take a
    while on a long prompt."""
    task = asyncio.ensure_future(opening)
    left = await done_unless_gone(request, task, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled from outside, not by the client leaving
        raise RequestAborted("The request was cancelled: its client went away.") from None

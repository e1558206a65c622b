"""Files named in Gradio API requests must be this dashboard's own uploads.

Gradio copies every `FileData` path a request names into its cache before any handler
runs, and it checks that path only once `launch()` has run; a mounted app never
launches (RECIPES.md section 6). So a signed-in user could name any file on the host,
the database included (opening and closing it drops SQLite's POSIX locks). This ASGI
middleware reads the JSON body of every POST to Gradio's API and refuses the request,
before Gradio sees it, if a file object in it names anything but a file inside the
upload folders (symlinks resolved, URLs refused). Uploads themselves (multipart) pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from manager.chat.attachments import NotUploaded, uploaded_file

log = logging.getLogger(__name__)

GRADIO_API_PREFIX = "/gradio_api/"


def named_paths(value: Any) -> Iterator[str]:
    """Every `path` of a file object in a request body (Gradio's test for a file object:
    a dict whose "path" is a string), at any depth."""
    if isinstance(value, dict):
        path = value.get("path")
        if isinstance(path, str):
            yield path
        for item in value.values():
            yield from named_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from named_paths(item)


class UploadedFilesOnly:
    """ASGI middleware: a Gradio API request may name only files inside `upload_roots`."""

    def __init__(self, app: ASGIApp, upload_roots: Sequence[Path],
                 prefix: str = GRADIO_API_PREFIX) -> None:
        self.app = app
        self.upload_roots = tuple(upload_roots)
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or not scope["path"].startswith(self.prefix) or _is_multipart(scope)):
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        refusal = self._refusal(scope, body)
        if refusal is not None:
            response = JSONResponse({"detail": refusal, "error": refusal}, status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(body, more, receive), send)

    def _refusal(self, scope: Scope, body: bytes) -> str | None:
        try:
            data = json.loads(body) if body else None
        except ValueError as exc:  # not JSON: Gradio refuses it itself, nothing names a file
            log.debug("non-JSON body to %s: %s", scope["path"], exc)
            return None
        for path in named_paths(data):
            try:
                uploaded_file(path, self.upload_roots)
            except NotUploaded as exc:
                log.warning("refused %s: it names %r, which was not uploaded here",
                            scope["path"], path)
                return exc.message
        return None


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.lower().startswith(b"multipart/")
    return False


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body; any non-body message met on the way is kept to replay."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), [message]
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), []


def _replay(body: bytes, pending: list[Message], receive: Receive) -> Receive:
    queue: list[Message] = [{"type": "http.request", "body": body, "more_body": False},
                            *pending]

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed

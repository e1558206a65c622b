"""A translated stream's opening events (Anthropic's message_start, the Responses API's
response.created) reach the client while the model server still works on the first
token, so the client has read them by then (manager/api/relay.py), against a real
model-server connection that holds its first token back.

Each test runs its event loop on a thread of its own (see test_upstream.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest

from manager.api.relay import RelayResponse
from manager.api.responses_stream import ResponsesFormat, ResponsesStream
from manager.api.stream_formats import AnthropicFormat, ChunkFormat
from manager.servers.inference import MetricsStore
from manager.servers.server_stream import ServerStream
from tests.test_upstream import DONE, HEAD, TOKEN, on_own_loop, ready_snapshot

FORMATS: dict[str, tuple[Callable[[], ChunkFormat], bytes, bytes]] = {
    # format, its opening event, its first text
    "messages": (lambda: AnthropicFormat("tiny", input_tokens=5),
                 b"event: message_start", b"event: content_block_delta"),
    "responses": (lambda: ResponsesFormat(ResponsesStream("resp_1", "tiny", {}),
                                          on_done=lambda _: None),
                  b"event: response.created", b"event: response.output_text.delta"),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_the_opening_events_go_out_before_the_first_token(name: str) -> None:
    make, opening, text = FORMATS[name]

    async def go() -> tuple[bytes, bytes]:
        release = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(HEAD)  # accepted: the model works on the first token
            await writer.drain()
            await release.wait()
            writer.write(TOKEN + DONE)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        snap = ready_snapshot(server.sockets[0].getsockname()[1])
        stream = await ServerStream.open(MetricsStore(), snap, {"messages": []})
        sent: list[bytes] = []
        first_body = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message["body"]:
                sent.append(message["body"])
                first_body.set()

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client stays
            return {"type": "http.disconnect"}

        relay = RelayResponse(make(), ExitStack(), stream=stream)
        relaying = asyncio.ensure_future(relay({"type": "http"}, receive, send))
        try:
            await asyncio.wait_for(first_body.wait(), 30)
            before_token = b"".join(sent)
            release.set()
            await asyncio.wait_for(relaying, 30)
        finally:
            server.close()
        return before_token, b"".join(sent)

    before_token, everything = on_own_loop(go)
    assert before_token.startswith(opening) and text not in before_token
    assert everything.startswith(before_token) and text in everything

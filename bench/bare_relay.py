"""The floor for the gateway's CPU per token: a bare asyncio TCP relay, no HTTP, no parsing.

Every connection it accepts is joined to a new connection to the target and bytes are
copied both ways by two `asyncio.Protocol`s (flow control honoured, nothing parsed, no
coroutine per chunk): the least work a Python process on the event loop can do per
chunk it relays. bench/gateway.py runs it in front of the model server (`--floor`) and
measures its CPU per streamed token the same way it measures the dashboard's.

Run: .venv/bin/python -m bench.bare_relay LISTEN_PORT TARGET_HOST TARGET_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection: what it reads goes to `peer` unchanged."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending = bytearray()  # read before the peer connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending += data
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(listen_port: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    joining: set[asyncio.Task[None]] = set()

    def accepted() -> _Pipe:
        client = _Pipe()

        async def join() -> None:
            _, upstream = await loop.create_connection(_Pipe, host, port)
            upstream.peer, client.peer = client, upstream
            if client.pending and upstream.transport is not None:
                upstream.transport.write(bytes(client.pending))
                client.pending.clear()

        task = loop.create_task(join())
        joining.add(task)
        task.add_done_callback(joining.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))

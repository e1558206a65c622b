"""A loopback model server's next connection is opened ahead of its request
(manager/servers/standby.py), against a real `http.server.ThreadingHTTPServer` (the
server class mlx_lm uses: HTTP/1.0, a thread per accepted connection).

Each test runs its event loop on a thread of its own (see test_upstream.py).
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from manager.net import free_port
from manager.servers import standby as standby_module
from manager.servers.connect import open_ahead
from manager.servers.standby import standby
from manager.servers.upstream import Upstream
from tests.test_upstream import on_own_loop

DONE = b"data: [DONE]\n\n"


class Recorder(ThreadingHTTPServer):
    """Which connections it accepted (by the client's port), in order, and on which one
    each request came."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.hold_until = 0  # no answer until this many requests came (concurrent ones)
        self.accepted: list[int] = []
        self.requests: list[int] = []
        self.connections: dict[int, socket.socket] = {}
        self.changed = threading.Condition()
        super().__init__(("127.0.0.1", port), Handler)

    def process_request(self, request: object, client_address: tuple[str, int]) -> None:
        with self.changed:
            self.accepted.append(client_address[1])
            self.connections[client_address[1]] = request  # type: ignore[assignment]
            self.changed.notify_all()
        super().process_request(request, client_address)  # type: ignore[arg-type]

    def wait_for(self, accepted: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.accepted) >= accepted, timeout=30)


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.changed:
            self.server.requests.append(self.client_address[1])
            self.server.changed.notify_all()
            held = self.server.changed.wait_for(
                lambda: len(self.server.requests) >= self.server.hold_until, timeout=30)
        assert held, "the concurrent requests did not all come"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n" + DONE)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet: the test reads what it recorded instead


@contextmanager
def recording() -> Iterator[Recorder]:
    """A Recorder serving on a thread of its own, until the block ends."""
    recorder = Recorder(free_port())
    thread = threading.Thread(target=recorder.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder.shutdown()
        recorder.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[Recorder]:
    with recording() as recorder:
        yield recorder


def url(server: Recorder) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


async def ask(base: str, n: int) -> bytes:
    """A request read to its end, then closed (as the gateway's ServerStream.close does)."""
    upstream = await Upstream.open(base, "/v1/chat/completions", {"n": n})
    try:
        return await upstream.read_all()
    finally:
        upstream.abort()
        # What ends with the connection (the next one opened ahead) runs in the loop's
        # next pass, after the reader heard of the end (upstream._Reader._closed).
        await asyncio.sleep(0)


async def in_thread(fn: object, *args: object) -> object:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)  # type: ignore[arg-type]


def test_the_next_request_goes_out_on_the_connection_opened_when_the_last_one_ended(
        server: Recorder) -> None:
    async def go() -> tuple[bytes, bytes, bool, bool, int]:
        first = await ask(url(server), 1)
        opened_ahead = await in_thread(server.wait_for, 2)  # the standby, before any request
        second = await ask(url(server), 2)
        next_one = await in_thread(server.wait_for, 3)
        return first, second, bool(opened_ahead), bool(next_one), len(standby())

    first, second, opened_ahead, next_one, held = on_own_loop(go)
    assert first == b'data: {"n": 1}\n\n' + DONE and second == b'data: {"n": 2}\n\n' + DONE
    assert opened_ahead and next_one and held == 1
    # Request 1 on its own connection; request 2 on the one opened when 1 ended; and
    # again a connection waits for the next request.
    assert server.requests == server.accepted[:2]
    assert len(server.accepted) == 3 and len(set(server.accepted)) == 3


def test_as_many_connections_wait_as_requests_were_open_at_once(server: Recorder) -> None:
    """Three agents at once: after their requests, three connections wait, and their next
    three requests all go out on them. Then one request alone: one is kept."""
    async def burst(first: int) -> list[bytes]:
        return list(await asyncio.gather(*(ask(url(server), first + n) for n in range(3))))

    async def go() -> tuple[list[bytes], list[bytes], list[int], bool]:
        # No answer until all three requests are in, so all three connections are open
        # at once (each is counted when its transport is made, before the loop can read
        # an answer that ends it).
        server.hold_until = 3
        first = await burst(0)
        waited = [await in_thread(server.wait_for, 6)]
        waiting = [len(standby())]
        server.hold_until = 6
        second = await burst(3)
        waited.append(await in_thread(server.wait_for, 9))
        waiting.append(len(standby()))
        await ask(url(server), 6)
        waiting.append(len(standby()))
        return first, second, waiting, all(waited)

    first, second, waiting, waited = on_own_loop(go)
    assert waited, "the connections opened ahead were not accepted"
    assert sorted(first + second) == [
        b'data: {"n": %d}\n\n' % n + DONE for n in range(6)]
    assert waiting == [3, 3, 1]  # after each burst, then after the lone request
    with server.changed:
        assert set(server.requests[3:6]) == set(server.accepted[3:6])  # opened ahead
        assert server.requests[6] in server.accepted[6:9]  # opened after the second


def test_no_more_than_most_idle_connections_wait(server: Recorder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standby_module, "MOST_IDLE", 2)

    async def go() -> int:
        server.hold_until = 3
        await asyncio.gather(*(ask(url(server), n) for n in range(3)))
        assert await in_thread(server.wait_for, 5), "the connections were not accepted"
        return len(standby())

    assert on_own_loop(go) == 2


def test_a_server_that_closed_the_waiting_connection_gets_the_request_on_a_new_one(
        server: Recorder) -> None:
    """A server that restarted (or stopped) closes its end of the idle connection; the
    request still goes out whole, on a connection of its own, even when the loop has
    not yet seen the close."""
    address = ("127.0.0.1", server.server_address[1])

    async def go() -> tuple[bytes, int]:
        await ask(url(server), 1)
        await in_thread(server.wait_for, 2)
        with server.changed:
            idle_port = server.accepted[1]
        server.connections[idle_port].shutdown(socket.SHUT_RDWR)  # as a dying process
        # The close has reached this end (readable), but the loop has not run since.
        waiting = standby()._pools[address].idle[-1]  # noqa: SLF001 - the test looks inside
        readable, _, _ = select.select([waiting], [], [], 30)
        assert readable
        return await ask(url(server), 3), idle_port

    answer, idle_port = on_own_loop(go)
    assert answer == b'data: {"n": 3}\n\n' + DONE
    assert server.requests == [server.accepted[0], server.accepted[2]]
    assert idle_port == server.accepted[1]


def test_a_waiting_connection_the_server_closes_is_let_go_at_once(server: Recorder) -> None:
    """Not kept (a socket in CLOSE_WAIT) until some later request finds it closed."""
    async def go() -> tuple[int, int]:
        await ask(url(server), 1)
        await in_thread(server.wait_for, 2)
        before = len(standby())
        with server.changed:
            server.connections[server.accepted[1]].shutdown(socket.SHUT_RDWR)
        for _ in range(5):
            await asyncio.sleep(0)  # a yield to the loop: it sees the close
        return before, len(standby())

    assert on_own_loop(go) == (1, 0)


def test_a_refused_connection_is_not_kept() -> None:
    port = free_port()  # nothing listens there

    async def go() -> int:
        open_ahead("127.0.0.1", port)
        for _ in range(5):
            await asyncio.sleep(0)  # a yield to the loop: the refusal arrives meanwhile
        return len(standby())

    assert on_own_loop(go) == 0


@pytest.mark.parametrize("host", ["192.0.2.1", "localhost"])
def test_only_a_loopback_address_gets_a_waiting_connection(host: str) -> None:
    """Idle across a network a connection can be dropped silently; a host name is
    resolved on each request."""
    async def go() -> int:
        open_ahead(host, 9)
        return len(standby())

    assert on_own_loop(go) == 0


def test_a_uvicorn_server_mlx_vlm_runs_on_gets_the_next_request_on_the_waiting_one() -> None:
    """mlx_vlm's server is uvicorn (HTTP/1.1): it keeps a connection that has not sent a
    request yet open, and answers the request that comes on it later."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from tests.conftest import run_uvicorn

    async def stream(request: Request) -> StreamingResponse:
        body = await request.json()
        client = request.client.port if request.client else 0

        async def events() -> AsyncIterator[bytes]:
            yield b"data: " + json.dumps({**body, "client": client}).encode() + b"\n\n"
            yield DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", stream, methods=["POST"])])
    server, thread = run_uvicorn(app, port)
    base = f"http://127.0.0.1:{port}"

    async def go() -> tuple[int, int, int]:
        first = json.loads((await ask(base, 1))[6:].split(b"\n\n")[0])["client"]
        waiting = standby()._pools[("127.0.0.1", port)].idle[-1]  # noqa: SLF001
        opened_ahead = waiting.getsockname()[1]
        second = json.loads((await ask(base, 2))[6:].split(b"\n\n")[0])["client"]
        return first, opened_ahead, second

    try:
        first, opened_ahead, second = on_own_loop(go)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert second == opened_ahead and first != second

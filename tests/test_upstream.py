"""The gateway's HTTP client to the model servers (servers/upstream.py): every body
framing the servers use, read however the bytes are cut, against a real uvicorn
stream, and a request ended early closes its connection at once.

Each test runs its event loop on a thread of its own (a Playwright session elsewhere in
the run may hold a running loop on the main thread).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import pytest

from manager.net import free_port
from manager.servers.inference import InferenceError, MetricsStore
from manager.servers.profiles import Backend, Profile
from manager.servers.prompt_counts import PromptCounts
from manager.servers.server_stream import ServerStream, open_counted
from manager.servers.snapshot import ServerSnapshot, ServerState
from manager.servers.upstream import Upstream, _Reader, error_message
from tests.conftest import run_uvicorn

T = TypeVar("T")
EVENTS = [b'data: {"model": "m", "n": %d}\n\n' % n for n in range(5)] + [b"data: [DONE]\n\n"]
BODY = b"".join(EVENTS)


def on_own_loop(make: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=60)


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


FRAMINGS = {
    # mlx_vlm (uvicorn): chunked
    "chunked": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n" + chunked(EVENTS),
    # mlx_lm (http.server, HTTP/1.0): the body ends when the connection closes
    "until close": b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + BODY,
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY + b"extra",
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
@pytest.mark.parametrize("cut", [1, 2, 5, 13, 4096])
def test_every_framing_reads_the_same_body_however_the_bytes_are_cut(framing: str,
                                                                     cut: int) -> None:
    raw = FRAMINGS[framing]

    async def read() -> tuple[int, bytes, bool]:
        reader = _Reader(asyncio.get_running_loop(), 600)
        for start in range(0, len(raw), cut):
            reader.data_received(raw[start:start + cut])
        reader.eof_received()
        status, _ = await reader.head
        body = b""
        while data := await reader.read():
            body += data
        return status, body, reader.complete

    status, body, complete = on_own_loop(read)
    assert (status, body) == (200, BODY)
    # A body with framing must have ended as its framing says; one read until the
    # connection closed cannot tell (the SSE [DONE] does).
    assert complete is (framing != "until close")


def test_a_truncated_chunked_body_is_not_complete() -> None:
    raw = FRAMINGS["chunked"][:-20]

    async def read() -> tuple[bytes, bool]:
        reader = _Reader(asyncio.get_running_loop(), 600)
        reader.data_received(raw)
        reader.connection_lost(ConnectionResetError("reset by peer"))
        await reader.head
        body = b""
        while data := await reader.read():
            body += data
        return body, reader.complete

    body, complete = on_own_loop(read)
    assert BODY.startswith(body) and body != BODY
    assert complete is False


@pytest.fixture(scope="module")
def sse_server() -> Iterator[str]:
    """A real uvicorn app streaming server-sent events (chunked, as mlx_vlm's)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def stream(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        if request.headers.get("authorization") != "Bearer sk-test":
            return JSONResponse({"error": {"message": "wrong key"}}, status_code=401)

        async def events() -> AsyncIterator[bytes]:
            for n in range(body["n"]):
                yield b"data: " + json.dumps({"n": n, "echo": body["echo"]}).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    port = free_port()
    server, thread = run_uvicorn(Starlette(routes=[Route("/v1/x", stream, methods=["POST"])]),
                                 port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


def test_a_uvicorn_stream_and_its_refusal(sse_server: str) -> None:
    async def go() -> tuple[int, bytes, bool, int, str]:
        ok = await Upstream.open(sse_server, "/v1/x", {"n": 50, "echo": "zürich"},
                                 headers={"Authorization": "Bearer sk-test"})
        body = b""
        while data := await ok.read():
            body += data
        refused = await Upstream.open(sse_server, "/v1/x", {"n": 1, "echo": ""})
        message = error_message(await refused.read_all(), "?")
        return ok.status, body, ok.complete, refused.status, message

    status, body, complete, refused, message = on_own_loop(go)
    events = body.split(b"\n\n")
    assert status == 200 and complete
    assert [json.loads(e[6:])["n"] for e in events[:-2]] == list(range(50))
    assert json.loads(events[0][6:])["echo"] == "zürich"
    assert events[-2] == b"data: [DONE]"
    assert (refused, message) == (401, "wrong key")


def test_abort_closes_the_connection_at_once() -> None:
    async def go() -> tuple[bytes, bytes]:
        closed = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)  # the body, {}
            writer.write(b"HTTP/1.0 200 OK\r\n\r\ndata: {}\n\n")
            await writer.drain()
            # A server mid-answer: it learns the client is gone when its read ends.
            closed.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = await Upstream.open(f"http://127.0.0.1:{port}", "/v1/x", {})
        first = await upstream.read()
        upstream.abort()
        rest = await asyncio.wait_for(closed, 30)
        server.close()
        return first, rest

    first, rest = on_own_loop(go)
    assert first == b"data: {}\n\n"
    assert rest == b""  # the end of the connection, nothing more sent


def test_an_unreachable_server_fails_to_open() -> None:
    port = free_port()

    async def go() -> None:
        await Upstream.open(f"http://127.0.0.1:{port}", "/v1/x", {})

    with pytest.raises(OSError):
        on_own_loop(go)


HEAD = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
TOKEN = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


async def paced_reader(pace_s: float) -> _Reader:
    """A reader past the head whose first token was handed over, paced from then on."""
    reader = _Reader(asyncio.get_running_loop(), 600)
    reader.data_received(HEAD + TOKEN)
    await reader.head
    assert await reader.read() == TOKEN
    reader.pace(pace_s)
    return reader


async def pending(reader: _Reader) -> asyncio.Task[bytes]:
    """A read in progress, after the loop ran everything that was ready."""
    task = asyncio.ensure_future(reader.read())
    for _ in range(5):
        await asyncio.sleep(0)  # a yield to the loop, not a wait for time to pass
    return task


@pytest.mark.parametrize("end", [
    [DONE],  # the end in one read
    [DONE[:9], DONE[9:]],  # "[DONE]" cut across two reads
    [b"data: [DONE]\r\n\r\n"],
])
def test_tokens_within_a_pace_interval_travel_together_and_the_end_at_once(
        end: list[bytes]) -> None:
    async def go() -> tuple[bool, bool, bytes, bytes]:
        reader = await paced_reader(3600.0)  # no paced wake-up comes during the test
        read = await pending(reader)
        reader.data_received(TOKEN)
        reader.data_received(TOKEN)
        held = not read.done()
        for part in end[:-1]:
            reader.data_received(part)
        still_held = not read.done()
        reader.data_received(end[-1])
        together = await read
        reader.eof_received()
        return held, still_held, together, await reader.read()

    held, still_held, together, rest = on_own_loop(go)
    assert held and still_held
    assert together == TOKEN + TOKEN + b"".join(end)
    assert rest == b""  # nothing was left behind


def test_a_paced_read_is_handed_over_once_the_interval_is_over() -> None:
    async def go() -> bytes:
        reader = await paced_reader(0.01)
        reader.data_received(TOKEN)
        reader.data_received(TOKEN)
        return await reader.read()

    assert on_own_loop(go) == TOKEN + TOKEN


def test_streams_paced_at_different_moments_are_handed_over_in_the_same_loop_pass(
        ) -> None:
    """Every stream's paced hand-overs fall on one grid of times: two streams whose
    tokens keep coming share their wake-ups instead of waking the loop once each."""
    async def go() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        passes = 0
        done = False

        def each_pass() -> None:  # runs once per pass of the loop; the tokens keep coming
            nonlocal passes
            passes += 1
            if passes % 20 == 0:
                for reader in readers:
                    reader.data_received(TOKEN)
            if not done:
                loop.call_soon(each_pass)

        async def consume(reader: _Reader, seen: list[int]) -> None:
            while len(seen) < 8:
                await reader.read()
                seen.append(passes)

        first = await paced_reader(0.02)
        await asyncio.sleep(0.007)  # paced a part of an interval later
        readers = [first, await paced_reader(0.02)]
        each_pass()
        seen: tuple[list[int], list[int]] = ([], [])
        await asyncio.gather(*(consume(r, s) for r, s in zip(readers, seen, strict=True)))
        done = True
        return seen

    first, second = on_own_loop(go)
    shared = set(first) & set(second)
    assert len(shared) >= 4  # each stream's own interval would share none


def test_a_closed_connection_hands_over_what_was_held_at_once() -> None:
    async def go() -> tuple[bytes, bytes, bool]:
        reader = await paced_reader(3600.0)
        read = await pending(reader)
        reader.data_received(TOKEN[:20])  # the server dies in the middle of a chunk
        reader.connection_lost(ConnectionResetError("reset by peer"))
        return await read, await reader.read(), reader.complete

    held, rest, complete = on_own_loop(go)
    assert (held, rest, complete) == (TOKEN[:20], b"", False)


def test_the_reader_hears_of_the_end_before_what_ends_with_the_connection_runs() -> None:
    """The relay hands the stream's end to its client before the next connection is
    opened ahead (a connect wakes the server, which can take the core from the relay)."""
    async def run() -> list[str]:
        reader = _Reader(asyncio.get_running_loop(), 600)
        order: list[str] = []
        reader.on_closed = lambda: order.append("connection ended")
        reader.data_received(b"HTTP/1.0 200 OK\r\n\r\ndata: [DONE]\n\n")
        assert await reader.read() == b"data: [DONE]\n\n"

        async def relay() -> None:
            assert await reader.read() == b""
            order.append("relay saw the end")

        task = asyncio.ensure_future(relay())
        await asyncio.sleep(0)  # the relay waits for more
        reader.eof_received()
        await task
        await asyncio.sleep(0)
        return order

    assert on_own_loop(run) == ["relay saw the end", "connection ended"]


def test_unpaced_reads_hand_over_every_read_at_once() -> None:
    async def go() -> list[bytes]:
        reader = await paced_reader(0.0)
        out = []
        for _ in range(3):
            read = await pending(reader)
            reader.data_received(TOKEN)
            out.append(await read)
        return out

    assert on_own_loop(go) == [TOKEN] * 3


def ready_snapshot(port: int) -> ServerSnapshot:
    profile = Profile(id=1, name="tiny", model="m", backend=Backend.MLX_LM,
                      host="127.0.0.1", port=port)
    return ServerSnapshot(profile=profile, state=ServerState.READY, state_since=0.0,
                          model_path="/models/m")


@pytest.mark.parametrize("count_fails", [False, True])
def test_the_prompt_count_goes_first_and_the_stream_only_once_it_was_taken_in(
        count_fails: bool) -> None:
    """As mlx_lm does, this server sends a status line once a request joined its batch;
    the real request must not reach it before the count's status line (it would run
    first, and the count would wait for its whole stream), and a count that fails
    after that closes the real request too."""
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 1}}\n\n'

    async def go() -> tuple[list[int], int | None, bytes]:
        arrived: list[int] = []
        count_answered = asyncio.Event()
        stream_closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            request = json.loads(await reader.readexactly(length))
            arrived.append(request["max_tokens"])
            if request["max_tokens"] == 1:  # the count
                writer.write(HEAD)
                await writer.drain()
                await count_answered.wait()  # until the real request arrived
                writer.write(b"data: {broken" if count_fails else TOKEN + usage + DONE)
            else:
                count_answered.set()
                writer.write(HEAD + TOKEN)
                await writer.drain()
                if count_fails:
                    stream_closed.set_result(await reader.read())
                    writer.close()
                    return
                writer.write(usage + DONE)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        snap = ready_snapshot(server.sockets[0].getsockname()[1])
        metrics = MetricsStore()
        try:
            stream, count = await open_counted(metrics, snap,
                                               {"messages": [], "max_tokens": 9})
            body = b"".join([batch.data async for batch in stream.batches()])
        except InferenceError:
            return arrived, None, await asyncio.wait_for(stream_closed, 30)
        finally:
            server.close()
        return arrived, count, body

    arrived, count, body = on_own_loop(go)
    assert arrived == [1, 9]  # the count first, the real request after its status line
    if count_fails:
        assert (count, body) == (None, b"")  # the real request's connection was closed
    else:
        assert (count, body) == (17, TOKEN)


@pytest.mark.parametrize("cut", [7, 30, 61])
@pytest.mark.parametrize("pace_s", [0.0, 0.01])
def test_a_stream_cut_anywhere_gives_the_same_tokens_and_usage(cut: int,
                                                               pace_s: float) -> None:
    """A usage chunk split mid-JSON, events split across reads, paced or not: the
    relay sees the same data events and the same decoded usage."""
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}\n\n'
    raw = TOKEN * 3 + usage + DONE

    async def go() -> tuple[bytes, list[dict[str, object]], bool]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(HEAD)
            for start in range(0, len(raw), cut):
                writer.write(raw[start:start + cut])
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            snap = ready_snapshot(server.sockets[0].getsockname()[1])
            stream = await ServerStream.open(MetricsStore(), snap, {"messages": []})
            batches = [batch async for batch in stream.batches(pace_s)]
        finally:
            server.close()
        usages = [b.usage for b in batches if b.usage is not None]
        return b"".join(b.data for b in batches), usages, stream.done

    data, usages, done = on_own_loop(go)
    assert data == TOKEN * 3
    assert [u["usage"] for u in usages] == [{"prompt_tokens": 4, "completion_tokens": 3}]
    assert done


class CountingReader(_Reader):
    """A reader that counts how often the event loop handed it bytes."""

    reads = 0

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        super().data_received(data)


async def held_stream(pace_s: float, close_after: bool) -> tuple[bytes, int, int, bool]:
    """A real connection whose first token was handed over, then paced: the server
    writes three tokens (three sends), and closes when told to. Returns the next read,
    how often the loop read the socket after the first token, before `close`, and
    whether the socket was held."""
    loop = asyncio.get_running_loop()
    go, written, close = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + TOKEN)
        await go.wait()
        for _ in range(3):
            writer.write(TOKEN)  # each its own send() and TCP segment
        await writer.drain()
        written.set()
        await close.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, reader = await loop.create_connection(lambda: CountingReader(loop, 600),
                                             "127.0.0.1", port)
    assert reader.transport is not None
    reader.transport.write(b"POST /v1/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    await reader.head
    assert await reader.read() == TOKEN
    reader.pace(pace_s)
    held = reader.held
    before = reader.reads
    read = await pending(reader)
    go.set()
    await written.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # the loop polls its sockets once per iteration
    woken = reader.reads - before
    if close_after:
        close.set()
    together = await read
    close.set()
    server.close()
    return together, woken, reader.reads - before, held


def test_tokens_sent_while_the_socket_is_held_stay_in_the_kernel_and_the_end_wakes_it(
        ) -> None:
    """Three writes of the server while the hand-over is not due wake nobody; the
    server's close (the end of an HTTP/1.0 stream) is read at once, with the tokens."""
    together, woken, reads, held = on_own_loop(lambda: held_stream(3600.0, True))
    assert held and woken == 0
    assert together == TOKEN * 3
    assert reads == 1  # the three tokens came in one read


def test_tokens_held_in_the_kernel_are_read_together_when_the_interval_is_over() -> None:
    """Read by the paced hand-over itself on Linux (the transport is not woken at all);
    a BSD kernel says "would block" below the mark: the hold ends and the transport
    reads them, once."""
    together, woken, reads, held = on_own_loop(lambda: held_stream(0.05, False))
    assert held and together == TOKEN * 3
    assert reads == (0 if sys.platform == "linux" else 1)


def test_a_prompt_counted_once_is_not_counted_again_for_the_same_request_and_server_run(
        ) -> None:
    """The second identical request goes out without a count (the count kept for it);
    another prompt, or the same one to a restarted server, is counted again."""
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": %d, "completion_tokens": 1}}\n\n'

    async def go() -> tuple[list[tuple[int, str]], list[int]]:
        arrived: list[tuple[int, str]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            request = json.loads(await reader.readexactly(length))
            text = request["messages"][-1]["content"]
            arrived.append((request["max_tokens"], text))
            writer.write(HEAD + TOKEN + usage % (10 + len(text)) + DONE)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        snap = ready_snapshot(server.sockets[0].getsockname()[1])
        counts = PromptCounts()
        reported = []
        try:
            for text, run in (("hi", snap), ("hi", snap), ("hello", snap),
                              ("hi", replace(snap, pid=4242))):
                body = {"messages": [{"role": "user", "content": text}], "max_tokens": 9}
                stream, count = await open_counted(MetricsStore(), snap=run, body=body,
                                                   counts=counts)
                reported.append(count)
                async for _ in stream.batches():
                    continue
        finally:
            server.close()
        return arrived, reported

    arrived, reported = on_own_loop(go)
    assert reported == [12, 12, 15, 12]
    assert arrived == [(1, "hi"), (9, "hi"), (9, "hi"), (1, "hello"), (9, "hello"),
                       (1, "hi"), (9, "hi")]


def test_the_first_token_goes_on_before_the_socket_is_held() -> None:
    """Holding the socket (a setsockopt and a timer) is for the tokens after the first:
    the first batch is handed on unpaced and unheld, the hold starts with the next."""

    async def go() -> list[tuple[bytes, bool]]:
        more = asyncio.Event()
        end = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(HEAD + TOKEN)
            await more.wait()
            writer.write(TOKEN)
            await end.wait()
            writer.write(DONE)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        snap = ready_snapshot(server.sockets[0].getsockname()[1])
        seen = []
        try:
            stream = await ServerStream.open(MetricsStore(), snap, {"messages": []})
            async for batch in stream.batches(0.01):
                seen.append((batch.data, stream._upstream.held))
                (end if more.is_set() else more).set()
        finally:
            server.close()
        return seen

    seen = on_own_loop(go)
    assert seen == [(TOKEN, False), (TOKEN, True)]


async def answer_one(server: socket.socket) -> bytes:
    """Accept one connection on `server`, read its whole request, answer with one event
    and [DONE], and close; returns the request's body."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(server)
    data = b""
    while b"\r\n\r\n" not in data:
        data += await loop.sock_recv(conn, 65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += await loop.sock_recv(conn, 1 << 20)
    await loop.sock_sendall(conn, HEAD + TOKEN + DONE)
    conn.close()
    return body


def listening(backlog: int = 8) -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(backlog)
    server.setblocking(False)
    return server


@pytest.mark.parametrize(("host", "size"), [
    ("127.0.0.1", 10),  # sent on the socket before asyncio's transport exists
    ("127.0.0.1", 8 << 20),  # more than the socket takes at once: the transport sends the rest
    ("localhost", 10),  # a host name: asyncio resolves and connects
])
def test_a_request_reaches_the_server_whole(host: str, size: int) -> None:
    async def go() -> tuple[int, bytes, int]:
        server = listening()
        port = server.getsockname()[1]
        served = asyncio.ensure_future(answer_one(server))
        try:
            upstream = await Upstream.open(f"http://{host}:{port}", "/v1/x", {"pad": "x" * size})
            body = await upstream.read_all()
            return upstream.status, body, len(json.loads(await served)["pad"])
        finally:
            server.close()

    assert on_own_loop(go) == (200, TOKEN + DONE, size)


async def opening_in_a_full_queue() -> tuple[socket.socket, socket.socket,
                                             asyncio.Future[Upstream], bool]:
    """A server whose accept queue is full (a filler connection takes its one place),
    an `Upstream.open` to it under way (its SYN dropped, the kernel retries it), and
    whether that open was still waiting after a few loop passes."""
    server = listening(backlog=0)
    address = server.getsockname()
    filler = socket.create_connection(address)
    opening = asyncio.ensure_future(
        Upstream.open(f"http://127.0.0.1:{address[1]}", "/v1/x", {"n": 1}))
    for _ in range(5):
        await asyncio.sleep(0)
    return server, filler, opening, not opening.done()


def test_a_connection_not_established_at_once_still_sends_its_request() -> None:
    """The server's accept queue is full: the handshake waits for room (the kernel
    retries the SYN), and the request goes out once the connection is there."""
    async def go() -> tuple[int, object, bool]:
        server, filler, opening, waiting = await opening_in_a_full_queue()
        first, _ = await asyncio.get_running_loop().sock_accept(server)  # room again
        first.close()
        filler.close()
        served = asyncio.ensure_future(answer_one(server))
        try:
            upstream = await opening
            return upstream.status, json.loads(await served), waiting
        finally:
            server.close()

    assert on_own_loop(go) == (200, {"n": 1}, True)

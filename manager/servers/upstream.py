"""A streamed request to a model server, read on the event loop (no worker thread).

The gateway relays thousands of small writes a second from a model server; a thread per
stream and a general HTTP client cost more CPU per token than the model server can spare
on a small machine (bench/gateway.py). So this is the least HTTP/1.1 client that does
the job: one connection per request (mlx_lm speaks HTTP/1.0 and closes it anyway, and
closing it is how a request is ended early; the next one is opened as this one ends,
standby.py), an `asyncio.Protocol` that hands on every
byte read so far in one piece, chunked bodies decoded (mlx_vlm runs on uvicorn), and
hand-overs paced once data flows (`pace`): the reader is woken at most once per pace
interval, so one wake-up of the relay (a task step, a format pass, a write to the
client) carries every token that came meanwhile. Between hand-overs the socket is
"held" (SO_RCVLOWAT raised): the kernel keeps the tokens and wakes nobody, and when
the interval is over the hand-over reads them itself, all in one read (instead of an
epoll wake-up and a recv per token). A closed connection wakes the loop whatever the
low-water mark (the server's end of an HTTP/1.0 stream), so the stream's end waits at
most for that close: mlx_lm writes its last chunks and `[DONE]`, tidies up and closes,
0.2-0.5 ms later here. A first token after a pause is not held (the hold is released
when an interval passes without data).

Paced hand-overs fall on one grid of loop times shared by every stream (multiples of
the interval): concurrent streams are handed over in the same wake-up of the loop, not
one wake-up each (on a small machine a wake-up, not the bytes, is most of the cost).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from manager.json_text import encode
from manager.servers.connect import connect_and_send, connection_open
from manager.servers.socket_transport import READ_BYTES

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
#: Longest silence between two reads of a stream (big models can be slow).
READ_TIMEOUT_S = 600.0
_MAX_HEAD_BYTES = 64 * 1024
_DONE = b"[DONE]"
#: A paced hand-over this close to its time is due (timers may fire a little early).
_SLACK_S = 0.0005
#: The receive low-water mark while the socket is held: far more than one pace interval
#: of tokens (so it does not wake the loop), small enough that Linux keeps its receive
#: buffer and window as they are.
HOLD_BYTES = 32 * 1024


class UpstreamClosed(Exception):
    """The connection failed or closed before the answer was complete."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, base_url: str, path: str) -> Target:
        parts = urlsplit(base_url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, path)


@functools.lru_cache(maxsize=64)
def _target(base_url: str, path: str) -> Target:
    """A server's address, parsed once (urlsplit on every request cost ~20 us)."""
    return Target.of(base_url, path)


def request_head(target: Target, body_length: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host}:{target.port}",
             "Content-Type: application/json", f"Content-Length: {body_length}",
             "Accept: text/event-stream", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Reader(asyncio.Protocol):
    """The response side of one connection: head, then the body as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self._loop = loop
        self._read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[tuple[int, dict[str, str]]] = loop.create_future()
        self._head_buf = bytearray()
        self._body = bytearray()  # decoded body bytes not handed on yet
        self._raw = bytearray()  # chunked framing not decoded yet
        self._chunked = False
        self._length: int | None = None  # Content-Length left to read
        self._need = 0  # bytes of the current chunk still to come
        self._skip = 0  # the CRLF after a chunk still to skip
        self.complete = False  # the body ended as its framing says
        self.closed = False  # the connection is gone
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pace_s = 0.0  # at most one hand-over per this many seconds (0: each read)
        self._next_at = float("-inf")  # loop time when a paced hand-over is due
        self._timer: asyncio.TimerHandle | None = None  # a paced wake-up due
        self._last_read = loop.time()
        self._watchdog: asyncio.TimerHandle | None = None
        self._sock: Any = None  # the transport's socket, to hold and release
        self.held = False  # SO_RCVLOWAT is raised: the kernel keeps what arrives
        self.on_closed: Callable[[], None] | None = None  # once, when the connection ends

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (not an asyncio.Transport instance under uvloop).
        self.transport = cast(asyncio.Transport, transport)
        self._sock = transport.get_extra_info("socket")

    def send(self, data: bytes) -> None:
        """Write the request; from now on a server silent for the read timeout is
        given up on."""
        if self.transport is None or self.closed:
            raise UpstreamClosed("the connection to the server is closed")
        self._last_read = self._loop.time()
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._read_timeout_s, self._check_silence)
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self._last_read = self._loop.time()
        if not self.head.done():
            self._head_buf += data
            end = self._head_buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head_buf) > _MAX_HEAD_BYTES:
                    self._fail(UpstreamClosed("the server's answer has no end of headers"))
                return
            self._parse_head(bytes(self._head_buf[:end]))
            data = bytes(self._head_buf[end + 4:])
            self._head_buf.clear()
            if self.head.done() and self.head.exception() is not None:
                return
        if data:
            self._take(data)
        if self._pace_s and not self.complete:
            self._paced_wake()
        else:
            self._wake()

    def eof_received(self) -> bool:
        self._closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        self._closed()

    # -- for the reader ----------------------------------------------------------------------

    async def read(self) -> bytes:
        """All body bytes that arrived since the last read, waiting for some; b"" once
        the body ended (see `complete`, `error`). Once paced, bytes wait for the next
        tick of the pace grid (`_next_tick`), except the stream's end."""
        while not (self.complete or self.closed):
            if self._body and self._due() <= _SLACK_S:
                break
            waiter = self._waiter = self._loop.create_future()
            if self._body and self._timer is None:
                self._timer = self._loop.call_at(self._next_at, self._wake)
            try:
                await waiter
            finally:
                self._waiter = None
        data = bytes(self._body)
        self._body.clear()
        if self._pace_s:
            self._next_at = self._next_tick()
            if not (self.complete or self.closed):
                self._hold()
        return data

    def pace(self, seconds: float) -> None:
        """From now on hand bytes over at most once per `seconds` (0: as they come); a
        first read after a pause is not held back, the stream's end only until the
        server closes the connection."""
        self._pace_s = max(0.0, seconds)
        self._next_at = self._next_tick()
        if self._pace_s and not (self.complete or self.closed):
            self._hold()

    def abort(self) -> None:
        """Close the connection at once (the server notices at its next write)."""
        self._sock = None
        if self.transport is not None:
            self.transport.abort()
        self._closed()

    # -- internals --------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            self._fail(UpstreamClosed(f"the server's answer is not HTTP: {lines[0][:80]!r}"))
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not self._chunked and headers.get("content-length", "").isdigit():
            self._length = int(headers["content-length"])
            self.complete = self._length == 0
        self.head.set_result((status, headers))

    def _take(self, data: bytes) -> None:
        if self._chunked:
            self._raw += data
            self._dechunk()
            return
        if self._length is not None:
            data = data[:self._length]
            self._length -= len(data)
            self.complete = self._length == 0
        self._body += data

    def _dechunk(self) -> None:
        raw = self._raw
        while raw and not self.complete:
            if self._skip:
                n = min(self._skip, len(raw))
                del raw[:n]
                self._skip -= n
            elif self._need:
                n = min(self._need, len(raw))
                self._body += raw[:n]
                del raw[:n]
                self._need -= n
                if not self._need:
                    self._skip = 2
            else:
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                try:
                    size = int(bytes(raw[:end]).split(b";")[0].strip(), 16)
                except ValueError:
                    self._fail(UpstreamClosed("the server's chunked answer is malformed"))
                    return
                del raw[:end + 2]
                if size == 0:
                    self.complete = True
                self._need = size

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        if self.transport is not None:
            self.transport.abort()
        self._closed()

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._sock = None
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not self.head.done():
            self.head.set_exception(self.error or UpstreamClosed(
                "the server closed the connection before answering"))
        self._wake()
        if self.on_closed is not None:
            # After the reader's wake-up: the relay sends the stream's end to its client
            # first; what ends with the connection (the next one opened ahead: a connect
            # that wakes the server) waits for that.
            self._loop.call_soon(self.on_closed)

    def _due(self) -> float:
        """Seconds until the bytes read so far may be handed over (<= 0: now)."""
        if not self._pace_s or _DONE in self._body[-16:]:  # the stream ends here
            return 0.0
        return self._next_at - self._loop.time()

    def _next_tick(self) -> float:
        """When the next paced hand-over is due, from now: the first multiple of the
        interval at least half an interval away (so every stream's hand-overs share the
        same loop times, and a hand-over carries at least half an interval of tokens)."""
        pace, now = self._pace_s, self._loop.time()
        return math.ceil((now + pace / 2) / pace) * pace if pace else now

    def _paced_wake(self) -> None:
        due = self._due()
        if due <= _SLACK_S:
            self._wake()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._next_at, self._wake)

    def _wake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _hold(self) -> None:
        """Until the next hand-over is due, let the kernel keep what arrives."""
        if not self.held and self._set_low_water(HOLD_BYTES):
            self.held = True
        if self.held and self._timer is None:
            self._timer = self._loop.call_at(self._next_at, self._release)

    def _release(self) -> None:
        """The interval is over: what arrived meanwhile is read here and handed over
        (the socket stays held); with nothing there the hold ends, so the next token
        after a pause wakes the loop when it comes."""
        self._timer = None
        if self.held and self._read_held():
            return
        if self.held:
            self.held = False
            self._set_low_water(1)
        if self._body:
            self._wake()

    def _read_held(self) -> bool:
        """One read of the held socket, past the transport (which waits for the mark):
        True when it brought bytes. MSG_DONTWAIT: a BSD kernel (macOS) answers a plain
        read of a non-blocking socket below its mark with "would block", and returns
        what is there only with this flag; Linux returns it either way."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing() or self._sock is None:
            return False
        try:
            if isinstance(self._sock, socket.socket):  # ours (socket_transport.py)
                data = self._sock.recv(READ_BYTES, socket.MSG_DONTWAIT)
            else:  # asyncio's wrapper (a host name's connection) has no recv
                data = os.read(self._sock.fileno(), READ_BYTES)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._fail(exc)
            return True
        if not data:  # the end: the transport sees it too (an end wakes it at any mark)
            return False
        self._last_read = self._loop.time()
        self._take(data)
        self._wake()
        return True

    def _set_low_water(self, size: int) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
        except OSError as exc:  # a platform without it: every read wakes the loop
            log.info("cannot hold the model server's socket (%s): reading each write", exc)
            self._sock = None
            return False
        return True

    def _check_silence(self) -> None:
        silent = self._loop.time() - self._last_read
        if self.closed:
            return
        if silent >= self._read_timeout_s:
            log.warning("model server silent for %.0f s: closing the connection", silent)
            self._fail(UpstreamClosed(f"no answer for {silent:.0f} s"))
            return
        self._watchdog = self._loop.call_later(
            max(1.0, self._read_timeout_s - silent), self._check_silence)


class Upstream:
    """One request to a model server on the event loop: `await Upstream.open(...)`
    sends it and waits for the status line; then `read()` until b""."""

    def __init__(self, reader: _Reader, status: int, headers: dict[str, str]) -> None:
        self._reader = reader
        self.status = status
        self.headers = headers

    @classmethod
    async def open(cls, base_url: str, path: str, payload: Mapping[str, Any], *,
                   headers: Mapping[str, str] | None = None,
                   connect_timeout_s: float = CONNECT_TIMEOUT_S,
                   read_timeout_s: float = READ_TIMEOUT_S) -> Upstream:
        """Raises OSError / UpstreamClosed / TimeoutError when the server cannot be
        reached or closes before its status line."""
        target = _target(base_url, path)
        body = encode(payload)
        request = request_head(target, len(body), headers or {}) + body
        reader = await send_request(target, request, read_timeout_s, connect_timeout_s)
        try:
            status, answer_headers = await reader.head
        except BaseException:
            reader.abort()
            raise
        return cls(reader, status, answer_headers)

    async def read(self) -> bytes:
        return await self._reader.read()

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        """The rest of the body (an error answer), at most `limit` bytes."""
        out = bytearray()
        while len(out) < limit:
            data = await self.read()
            if not data:
                break
            out += data
        return bytes(out[:limit])

    def pace(self, seconds: float) -> None:
        self._reader.pace(seconds)

    @property
    def held(self) -> bool:
        """The socket is held (see `_Reader.held`)."""
        return self._reader.held

    def abort(self) -> None:
        self._reader.abort()

    @property
    def complete(self) -> bool:
        return self._reader.complete

    @property
    def error(self) -> BaseException | None:
        return self._reader.error


async def send_request(target: Target, request: bytes, read_timeout_s: float,
                       connect_timeout_s: float) -> _Reader:
    """Connect to `target` and send `request` (connect.py: at once on this machine);
    the reader of the answer."""
    loop = asyncio.get_running_loop()
    reader, sent = await connect_and_send(
        target.host, target.port, request, lambda: _Reader(loop, read_timeout_s),
        connect_timeout_s)
    reader.send(request[sent:])  # the rest, if any (and the read watchdog starts)
    # The server's next request goes out on a connection opened once this one ends.
    reader.on_closed = connection_open(target.host, target.port)
    return reader


def error_message(body: bytes, fallback: str) -> str:
    """The message of a model server's error answer (JSON `error`/`detail`, or text)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body[:300].decode(errors="replace") or fallback
    if isinstance(payload, Mapping):
        detail = payload.get("error") or payload.get("detail") or payload
        if isinstance(detail, Mapping):
            detail = detail.get("message") or detail
        return str(detail)[:300]
    return str(payload)[:300]

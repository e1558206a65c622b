"""A request written before its connection's handshake is over (manager/servers/connect.py),
against a real `ThreadingHTTPServer` (the server class mlx_lm uses).

On Linux a non-blocking loopback connect() has finished the handshake when it returns,
and send() on a socket still connecting fails with EAGAIN. On macOS the loopback
handshake ends on another kernel thread, and send() (or recv()) before that fails with
ENOTCONN. This machine cannot show the second, so `MacLoopbackSocket` stands in for
such a socket: a real TCP socket whose first calls fail with ENOTCONN, as macOS's do.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from manager.servers import connect
from manager.servers.standby import standby
from tests.test_standby import DONE, Recorder, ask, recording, url
from tests.test_upstream import on_own_loop, opening_in_a_full_queue


class MacLoopbackSocket(socket.socket):
    """A TCP socket whose first `fails` send()/recv() calls fail with ENOTCONN: macOS's
    answer while the handshake is still under way."""

    def __init__(self, family: socket.AddressFamily, fails: int) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self.setblocking(False)
        self.fails = fails

    def _not_connected_yet(self) -> None:
        if self.fails > 0:
            self.fails -= 1
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))

    def send(self, data: Any, flags: int = 0) -> int:
        self._not_connected_yet()
        return super().send(data, flags)

    def recv(self, size: int, flags: int = 0) -> bytes:
        self._not_connected_yet()
        return super().recv(size, flags)


@pytest.fixture
def server() -> Iterator[Recorder]:
    with recording() as recorder:
        yield recorder


def test_a_request_whose_send_finds_the_handshake_under_way_waits_for_it(
        server: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: ENOTCONN from the first send() was taken for a failed connection, so on a
    Mac a request whose loopback handshake was not over yet failed with "stopped
    answering" (found by reading; there is no Mac here to see how often)."""
    made: list[MacLoopbackSocket] = []

    def socket_for(host: str) -> socket.socket:
        made.append(MacLoopbackSocket(socket.AF_INET, fails=1))
        return made[-1]

    monkeypatch.setattr(connect, "_socket_for", socket_for)
    answer = on_own_loop(lambda: ask(url(server), 1))
    assert answer == b'data: {"n": 1}\n\n' + DONE
    assert made and made[0].fails == 0  # its send() did say ENOTCONN
    assert server.requests == server.accepted[:1]  # on that connection


def test_a_connection_opened_ahead_and_still_connecting_carries_the_next_request(
        server: Recorder) -> None:
    """Bug: a connection opened ahead (standby.py) that was still connecting read as
    refused (ENOTCONN from its check), so it was closed and the request connected anew."""
    address = ("127.0.0.1", server.server_address[1])
    ports: list[int] = []

    def connecting(to: tuple[str, int]) -> socket.socket:
        sock = MacLoopbackSocket(socket.AF_INET, fails=2)  # the check's recv(), then send()
        sock.connect_ex(to)
        ports.append(sock.getsockname()[1])
        return sock

    async def go() -> bytes:
        standby().opened(address)
        standby().refill(address, connecting)
        assert len(standby()) == 1
        return await ask(url(server), 2)

    assert on_own_loop(go) == b'data: {"n": 2}\n\n' + DONE
    assert server.requests == ports, "the request did not go out on the connection opened ahead"


def test_a_handshake_that_fails_is_told_as_the_connection_failing() -> None:
    """The server's accept queue is full, so the handshake waits (the kernel retries the
    SYN), and then the server goes away: the request fails with the connection's own
    error instead of waiting for ever."""
    async def go() -> None:
        queue, filler, opening, waiting = await opening_in_a_full_queue()
        assert waiting
        queue.close()  # the retried SYN is refused
        filler.close()
        await opening

    with pytest.raises(ConnectionRefusedError):
        on_own_loop(go)

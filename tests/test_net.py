"""Ports: free_port gives one that port_is_free agrees with; a listener makes it taken.
The shared TLS context still verifies."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from manager import net
from manager.net import LOOPBACK, ephemeral_start, free_port, port_is_free, tls_context


def test_free_port_is_free() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert port_is_free(LOOPBACK, port)


def test_free_ports_are_outside_the_range_outgoing_connections_take_theirs_from() -> None:
    """Bug (CI): free_port asked the system for a port (bind to port 0, which takes it from
    the ephemeral range); before the test's server bound it, another program's outgoing
    connection had taken it: "Port 47215 is in use by another program on this machine"."""
    start = ephemeral_start()
    assert start == int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert all(1024 <= port < start for port in ports)
    assert len(set(ports)) == len(ports)  # none handed out twice while its server starts
    with socket.socket() as listener:
        listener.bind((LOOPBACK, ports[-1]))
        listener.listen()
        with socket.create_connection((LOOPBACK, ports[-1])) as outgoing:
            assert outgoing.getsockname()[1] >= start  # where the system puts a connection


def test_a_port_something_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = free_port()
    monkeypatch.setattr(net, "_cursor", net._PortCursor(start=taken))
    with socket.socket() as listener:
        listener.bind((LOOPBACK, taken))
        listener.listen()
        assert free_port() != taken
    monkeypatch.setattr(net, "_cursor", net._PortCursor(start=taken))
    assert free_port() == taken  # nothing listens any more
    # What counts up from a port handed out (a distributed profile's ranks) stays clear.
    assert abs(free_port() - taken) >= net._STRIDE


@pytest.mark.parametrize(
    ("listen_on", "asked", "free"),
    [
        (None, LOOPBACK, True),
        (None, "0.0.0.0", True),
        (LOOPBACK, LOOPBACK, False),
        (LOOPBACK, "0.0.0.0", False),  # all interfaces include the loopback
        ("0.0.0.0", LOOPBACK, False),
        ("0.0.0.0", "0.0.0.0", False),
    ],
)
def test_port_is_free_sees_a_listener(listen_on: str | None, asked: str, free: bool) -> None:
    port = free_port()
    with socket.socket() as listener:
        if listen_on is not None:
            listener.bind((listen_on, port))
            listener.listen()
        assert port_is_free(asked, port) is free
    assert port_is_free(asked, port)  # closed again: free (TIME_WAIT does not count)


def test_a_port_left_in_time_wait_by_a_server_counts_as_free() -> None:
    # Servers (uvicorn, mlx_lm's http.server) set SO_REUSEADDR, so they can bind a port
    # whose old connections linger; port_is_free must agree with them.
    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen()
        with socket.create_connection((LOOPBACK, port)), listener.accept()[0]:
            assert not port_is_free(LOOPBACK, port)
    assert port_is_free(LOOPBACK, port)


def test_the_shared_tls_context_is_made_once_and_verifies() -> None:
    context = tls_context()
    assert tls_context() is context
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded


def test_free_port_does_not_hand_out_the_same_port_twice() -> None:
    # The kernel's port 0 picks repeat within a few hundred calls once nothing holds them;
    # a fixture that makes 17 profiles with free_port() each once got a duplicate.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)

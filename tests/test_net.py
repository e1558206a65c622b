"""Ports: free_port gives one that port_is_free agrees with; a listener makes it taken.
The shared TLS context still verifies."""

from __future__ import annotations

import socket
import ssl

import pytest

from manager.net import LOOPBACK, free_port, port_is_free, tls_context


def test_free_port_is_free() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert port_is_free(LOOPBACK, port)


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

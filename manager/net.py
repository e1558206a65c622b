"""Ports on this machine: is one free, and give me one that is; the shared TLS context."""

from __future__ import annotations

import collections
import functools
import logging
import socket
import ssl
import threading

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port now (SO_REUSEADDR ignores TIME_WAIT)."""
    bind_host = "" if host in ("0.0.0.0", "::") else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            log.debug("port %s on %s is taken: %s", port, host or "all interfaces", exc)
            return False
    return True


class _RecentPorts:
    """The ports free_port handed out lately in this process. The system may give back a
    port it just gave: nothing listens there yet, so it is "free" again. Callers that ask
    for several ports before starting anything (a test making 17 profiles) need distinct ones."""

    def __init__(self, size: int = 4096) -> None:
        self._lock = threading.Lock()
        self._ports: collections.deque[int] = collections.deque(maxlen=size)

    def claim(self, port: int) -> bool:
        """Record `port`; False when it was handed out lately."""
        with self._lock:
            if port in self._ports:
                return False
            self._ports.append(port)
            return True


_recent = _RecentPorts()


def free_port(host: str = LOOPBACK) -> int:
    """A port the system says is free on `host` now, not one this process was given lately
    (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if _recent.claim(port):
            return port
        log.debug("port %s was handed out lately; asking for another", port)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one verifying TLS context (httpx's defaults) the process's HTTP clients share:
    httpx builds a new one per client otherwise, and loading the CA bundle costs ~60 ms of
    CPU each time (three clients per Services, made again by every CLI command and test)."""
    import httpx

    return httpx.create_ssl_context()

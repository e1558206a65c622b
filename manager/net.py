"""Ports on this machine: is one free, and give me one that is."""

from __future__ import annotations

import logging
import socket

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


def free_port(host: str = LOOPBACK) -> int:
    """A port the system says is free on `host` now (another process may still take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

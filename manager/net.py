"""Ports on this machine: is one free, and give me one that is; the shared TLS context."""

from __future__ import annotations

import functools
import logging
import math
import random
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port now (SO_REUSEADDR ignores TIME_WAIT).

    A bind alone is not proof on macOS and the BSDs: there SO_REUSEADDR lets a wildcard
    bind succeed next to a program listening on 127.0.0.1 (and the reverse), and the
    model server would then share the port with it, its requests answered by the other
    program. So a port that binds is also tried with a connect."""
    wildcard = host in ("0.0.0.0", "::")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("" if wildcard else host, port))
        except OSError as exc:
            log.debug("port %s on %s is taken: %s", port, host or "all interfaces", exc)
            return False
    target = ("::1" if family == socket.AF_INET6 else LOOPBACK) if wildcard else host
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        # Connected to itself (the kernel gave the probe this very port as its own, a
        # port in the ephemeral range): nobody listens.
        if probe.connect_ex((target, port)) == 0 \
                and probe.getsockname()[:2] != probe.getpeername()[:2]:
            log.debug("port %s on %s is taken: %s answers on it", port, host, target)
            return False
    return True


#: free_port's ports start here (below it: well-known and registered services).
_FIRST_PORT = 20000
#: Ports free_port hands out one after another are this far apart (or a little more).
_STRIDE = 37
#: Where the system's ephemeral range starts when it cannot be read (Linux's default).
_EPHEMERAL_DEFAULT = 32768


def ephemeral_start() -> int:
    """The first port the system gives outgoing connections (and `bind(0)`)."""
    try:
        low = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        return int(low)
    except (OSError, ValueError, IndexError) as exc:
        log.debug("no Linux port range (%s): asking sysctl", exc)
    try:  # macOS and the BSDs
        found = subprocess.run(["sysctl", "-n", "net.inet.ip.portrange.first"],  # noqa: S607
                               capture_output=True, text=True, timeout=5, check=True)
        return int(found.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return _EPHEMERAL_DEFAULT


class _PortCursor:
    """Hands out the ports below the ephemeral range in turn, `_STRIDE` apart, from a
    random start.

    Below that range because an outgoing connection takes its local port from it: a port
    the system handed out there could be taken by any program's connection before its
    server binds it (seen in CI: "Port 47215 is in use" right after free_port gave it).
    In turn, so this process does not hand out one port twice while its server is still
    starting; apart, so the ports just above one handed out stay free for what counts up
    from it (a distributed profile's ranks); from a random start, so processes picking at
    once rarely meet."""

    def __init__(self, start: int | None = None) -> None:
        self._lock = threading.Lock()
        self._next = start  # None: a random one, on first use
        self._walk: tuple[int, int, int] | None = None  # first port, how many, step

    def candidates(self) -> Iterator[int]:
        with self._lock:
            if self._walk is None:
                end = max(_FIRST_PORT + 1024, ephemeral_start())
                span = end - _FIRST_PORT
                # A step prime to the span visits every port before coming back.
                step = next(n for n in range(_STRIDE, span) if math.gcd(n, span) == 1)
                self._walk = (_FIRST_PORT, span, step)
                if self._next is None or not _FIRST_PORT <= self._next < end:
                    self._next = random.randrange(_FIRST_PORT, end)  # noqa: S311 - not secret
        first, span, step = self._walk
        for _ in range(span):
            with self._lock:
                port = self._next if self._next is not None else first
                self._next = first + (port - first + step) % span
            yield port


_cursor = _PortCursor()


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now on `host`, outside the ephemeral range and not
    handed out lately by this process (see _PortCursor); another process may still take
    it, so whoever binds it says clearly when it is taken."""
    for port in _cursor.candidates():
        if port_is_free(host, port):
            return port
    raise OSError(f"no free port below {ephemeral_start()} on {host}")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one verifying TLS context (httpx's defaults) the process's HTTP clients share:
    httpx builds a new one per client otherwise, and loading the CA bundle costs ~60 ms of
    CPU each time (three clients per Services, made again by every CLI command and test)."""
    import httpx

    return httpx.create_ssl_context()

"""Ending a model server request from another thread, at once."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Mapping
from typing import Any

from manager.servers.snapshot import CancelEvent

log = logging.getLogger(__name__)


class Abort(CancelEvent):
    """Ends a request from another thread at once: `set()` shuts down the request's
    connection to the model server. The thread reading the answer wakes up at once, and
    the server stops generating the next time it writes (mlx_lm checks the connection
    only then), instead of finishing a long answer nobody reads (RECIPES 6).

    Requests that carry one use connections of their own (no keep-alive), so the
    connection seen opening is the one the request travels on. As a CancelEvent it also
    wakes a wait for the server to load (Supervisor.wait_for).
    """

    def __init__(self) -> None:
        super().__init__()
        self._streams_lock = threading.Lock()
        self._streams: list[Any] = []

    def set(self) -> None:
        super().set()
        with self._streams_lock:
            streams, self._streams = self._streams, []
        for stream in streams:
            _shut_down(stream)

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's `trace` extension: remembers each connection the request opens."""
        if event == "connection.connect_tcp.complete" and info.get("return_value"):
            self.attach(info["return_value"])

    def attach(self, stream: Any) -> None:
        with self._streams_lock:
            if not self.is_set():
                self._streams.append(stream)
                return
        _shut_down(stream)


def _shut_down(stream: Any) -> None:
    sock = stream.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:  # already closed by either side
        log.debug("connection to a model server already closed: %s", exc)

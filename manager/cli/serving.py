"""How the dashboard process logs, serves and stops.

Logging: INFO is for what a person running the dashboard cares about (start, stop, a
server starting, crashing or stopping, a download finished, an account approved).
Access lines (every page load and Gradio poll) and the sampler's ticks appear only with
`--log-level debug`. On a terminal, warnings and errors are coloured so they stand out.

Stopping: Ctrl-C (SIGINT) or SIGTERM closes the browsers' open streams at once (Gradio
keeps a heartbeat and a queue stream per tab, which otherwise hold uvicorn's graceful
shutdown until its timeout, then end in a CancelledError traceback), stops the model
servers this dashboard runs unless `--keep-servers` (the service mode) leaves them for
the next start to adopt, and says which are left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, TextIO

import uvicorn

from manager.servers.states import ACTIVE_STATES

if TYPE_CHECKING:  # every command configures logging here; only serving needs these
    from manager.servers.snapshot import ServerSnapshot
    from manager.services import Services

log = logging.getLogger("mlx_manager")

#: Loggers that speak per request or per tick: shown only at debug level.
CHATTY_LOGGERS = ("uvicorn.access", "uvicorn.error", "apscheduler")
#: Request URLs may carry tokens: never logged, whatever the level.
URL_LOGGERS = ("httpx", "httpx2")
_COLOURS = {logging.WARNING: "\033[33m", logging.ERROR: "\033[31m",
            logging.CRITICAL: "\033[1;31m"}
_RESET = "\033[0m"
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class LevelFormatter(logging.Formatter):
    """The house format; on a terminal, warnings and errors in colour."""

    def __init__(self, colour: bool) -> None:
        super().__init__(FORMAT)
        self._colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = _COLOURS.get(record.levelno) if self._colour else None
        return f"{colour}{text}{_RESET}" if colour else text


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """The house handler on the root logger (unless it has one already, as with
    `logging.basicConfig`: an embedding program keeps its own), and the per-request
    loggers quiet unless `level` is debug."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        stream = stream or sys.stderr
        handler = logging.StreamHandler(stream)
        handler.setFormatter(LevelFormatter(colour=stream.isatty()))
        root.addHandler(handler)
        root.setLevel(numeric)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if numeric <= logging.DEBUG
                                         else logging.WARNING)
    for name in URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


#: How often the serving loop wakes when nothing asks it to stop: uvicorn refreshes its
#: Date header once a second anyway (its own loop also wakes every 0.1 s to look for a
#: stop; here a stop wakes it at once).
MAIN_LOOP_WAKE_S = 1.0


class DashboardServer(uvicorn.Server):
    """uvicorn, ending the browsers' open streams as soon as a stop is asked for, and
    idling in between (one wake a second, not ten)."""

    wake_s = MAIN_LOOP_WAKE_S
    _stop_asked: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_asked = asyncio.Event()
        ticks = 0
        # Every pass is one of uvicorn's "once a second" ticks (counter % 10 == 0).
        while not await self.on_tick(ticks * 10):
            ticks += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_asked.wait(), self.wake_s)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop, stop_asked = self._loop, self._stop_asked
        if loop is not None and stop_asked is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop_asked.set)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Long-lived streams (Gradio's heartbeat and queue streams per tab, a chat still
        # streaming) would hold the graceful shutdown until its timeout and then be
        # cancelled with a traceback; closed now, each request sees its client go, as
        # when a tab is closed.
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        await super().shutdown(sockets=sockets)


class Shutdown:
    """Closes the services once (at the end of serving, or at interpreter exit) and says
    what became of the model servers."""

    def __init__(self, services: Services, *, keep_servers: bool) -> None:
        self._services = services
        self._keep = keep_servers
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        running = [s for s in self._services.supervisor.snapshots()
                   if s.state in ACTIVE_STATES]
        self._services.close(keep_servers=self._keep)
        if not running:
            log.info("MLX Model Manager stopped.")
        elif self._keep:
            log.warning("MLX Model Manager stopped. Left running for the next start to "
                        "adopt (they keep their memory): %s. Stop one with `mlx-manager stop "
                        "PROFILE` or from the Servers tab.", _names(running))
        else:
            log.info("MLX Model Manager stopped, and the model servers it ran: %s.",
                     _names(running))


def _names(servers: list[ServerSnapshot]) -> str:
    return ", ".join(f"{s.profile.name} (pid {s.pid}, port {s.profile.port})"
                     for s in servers)

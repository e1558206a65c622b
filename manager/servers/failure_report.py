"""What went wrong with a request, in the server's own words.

A failed request is explained by what the server said: its error body, an `error` chunk
in its stream (mlx_vlm sends `data: {"error": "..."}` and ends the stream), or the lines
its log gained while the request ran (the exception's last line), and whether its
process is still alive. So a person reads "IndexError: ..." instead of "may have crashed"
when the server is in fact fine.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from manager.servers.upstream import error_message

log = logging.getLogger(__name__)

#: mlx_lm's answer once its generation thread died (an empty prompt kills it, say): the
#: process lives on and refuses every request from then on.
DEAD_GENERATION = "generation thread died"

#: At most this much of the log written during a request is read back.
EXCERPT_BYTES = 64 * 1024
#: "ValueError: ...", "torch.OutOfMemoryError: ...", "KeyboardInterrupt", "Killed".
#: A process whose reply broke off is given this long to finish exiting (it is polled).
EXIT_GRACE_S = 0.5
EXIT_POLL_S = 0.02
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b|Killed\b|Segmentation fault)")


def refusal(name: str, response: httpx.Response, log_path: str | Path | None = None,
            since: int = 0) -> str:
    """A person's explanation of an error status in the server's words: its body, and
    the exception its log gained meanwhile if any (mlx_lm answers "generation thread
    died" and logs the reason). Logged too: a server's own failure at WARNING, a request
    it found wrong at INFO."""
    said = error_message(response.content, response.reason_phrase)
    logged = log_excerpt(log_path, since)
    if logged and logged not in said:
        said = f"{said} (its log says: {logged})"
    level = logging.WARNING if response.status_code >= 500 or logged else logging.INFO
    log.log(level, "%s refused a request (HTTP %s): %s", name, response.status_code, said)
    return f"{name} refused the request: {said}"


def stream_error(payload: Any) -> str | None:
    """The error a stream chunk reports (`{"error": "..."}` or `{"error": {"message":
    ...}}`), or None for a normal chunk."""
    if not isinstance(payload, Mapping) or "error" not in payload or "choices" in payload:
        return None
    error = payload["error"]
    if isinstance(error, Mapping):
        error = error.get("message") or error
    return str(error)[:500] or "an unnamed error"


def log_size(path: str | Path | None) -> int:
    """The log's current size: the start of what a request about to run will add."""
    if not path:
        return 0
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_excerpt(path: str | Path | None, since: int) -> str:
    """The line that explains a failure among those the log gained after `since`: the
    last exception line ('' if there is none: progress and access lines explain
    nothing)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            # A log trimmed meanwhile (logs.cap_log) restarts; read its tail instead.
            start = since if since <= size else 0
            start = max(start, size - EXCERPT_BYTES)
            handle.seek(start)
            data = handle.read()
    except OSError as exc:
        log.warning("cannot read the server log %s: %s", path, exc)
        return ""
    lines = [line.rstrip() for line in data.decode("utf-8", errors="replace").splitlines()
             if line.strip()]
    errors = [line for line in lines if _EXCEPTION_LINE.match(line.strip())]
    return errors[-1].strip() if errors else ""


def process_alive(pid: int | None, grace_s: float = EXIT_GRACE_S) -> bool | None:
    """Whether the process still runs `grace_s` after its stream ended (None when it is
    not known). A killed process closes its sockets before it is done exiting, so it is
    looked at until then. Never waits on it with waitpid: the supervisor reaps its own
    children and reads their exit codes."""
    if pid is None:
        return None
    deadline = time.monotonic() + grace_s
    try:
        process = psutil.Process(pid)
        while process.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() >= deadline:
                return True
            time.sleep(EXIT_POLL_S)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error as exc:
        log.debug("cannot tell whether pid %s runs: %s", pid, exc)
        return None
    return False


def broken_answer(name: str, pid: int | None, log_path: str | Path | None, since: int,
                  what: str) -> str:
    """A person's explanation of a reply that stopped (`what` says how, e.g. "its reply
    ended early"), naming what the server's log said and whether it still runs."""
    excerpt = log_excerpt(log_path, since)
    said = f" Its log says: {excerpt}" if excerpt else " Its log shows no error."
    alive = process_alive(pid)
    if alive:
        return f"{name} could not finish this answer: {what}; the server is still running.{said}"
    if alive is False:
        return (f"{name} stopped answering: {what}, and its process exited (it crashed or "
                f"was killed).{said} The Servers tab shows the rest.")
    return f"{name} stopped answering: {what}. It may have crashed: see the Servers tab.{said}"


def beyond_answering(said: str) -> str | None:
    """Why a READY server that refused a request with `said` must be ended (it will never
    answer again: Supervisor.end_broken), or None for a refusal of that one request."""
    if DEAD_GENERATION not in said:
        return None
    return (f"It stopped generating and refused every request ({said}); it was ended, so "
            "that a start brings it back.")

"""Is a model server READY? Only when its model answered a real 1-token completion.

mlx_lm answers /health and /v1/models before the model is loaded (and /v1/models
with an empty body when the hub cache is missing), so an open port proves nothing.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from manager.servers.profiles import Backend
from manager.servers.wakeup import ChildWatch

log = logging.getLogger(__name__)

#: Consecutive HTTP errors from the probe before a start is declared failed (mlx_lm
#: keeps running with a dead generation thread when the model cannot load).
PROBE_ERRORS_BEFORE_FAIL = 3
#: One probe waits at most this long for its answer (a big model's first token).
PROBE_TIMEOUT_S = 300.0
#: Between attempts the watch sleeps until the server's log grows or its process ends
#: (`ChildWatch`); this caps that sleep, for a server that binds without printing.
QUIET_WAIT_S = 0.5


class Probe(enum.Enum):
    READY = "ready"
    NOT_YET = "not_yet"
    ERROR = "error"


class Outcome(enum.Enum):
    READY = "ready"
    GONE = "gone"  # the process exited
    NOT_LOADED = "not_loaded"  # the server answered, with errors
    TIMED_OUT = "timed_out"
    ABANDONED = "abandoned"  # nobody waits any more (stopped, restarted, closing)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True)
class Target:
    """What to probe: the server's address, backend and the model it was given."""

    name: str
    base_url: str
    backend: Backend
    model_path: str
    #: The server's API key header, when it has one (profiles reachable from the LAN).
    headers: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: Its log and process: the watch sleeps until one of them changes.
    log_path: str | None = None
    pid: int | None = None


class Monotonic(Protocol):
    def monotonic(self) -> float: ...


def probe(http: httpx.Client, target: Target, timeout: float) -> tuple[Probe, str]:
    """One real 1-token completion. Connection problems and empty bodies mean
    "not yet"; an HTTP error with a body means the server answered and refused."""
    if target.backend is Backend.MLX_VLM:
        url = target.base_url + "/v1/chat/completions"
        body: dict[str, object] = {"model": target.model_path, "max_tokens": 1,
                                   "messages": [{"role": "user", "content": "Hi"}]}
    else:
        url = target.base_url + "/v1/completions"
        body = {"model": target.model_path, "prompt": "Hi", "max_tokens": 1}
    try:
        response = http.post(url, json=body, headers=dict(target.headers),
                             timeout=httpx.Timeout(timeout, connect=2.0))
    except httpx.HTTPError as exc:
        log.debug("readiness probe of %s: %s", target.name, exc)
        return Probe.NOT_YET, str(exc)
    if not response.content.strip():
        return Probe.NOT_YET, "empty answer"
    try:
        payload = response.json()
    except ValueError as exc:
        log.debug("readiness probe of %s: not JSON (%s)", target.name, exc)
        return Probe.NOT_YET, "not JSON"
    if response.status_code >= 400:
        detail = payload.get("error") or payload.get("detail") if isinstance(
            payload, dict) else payload
        if isinstance(detail, dict):
            detail = detail.get("message") or detail
        log.info("readiness probe of %s: HTTP %s %s", target.name, response.status_code,
                 detail)
        return Probe.ERROR, f"HTTP {response.status_code}: {detail}"
    usage = payload.get("usage") if isinstance(payload, dict) else None
    # A model whose first token is <think> answers text "", so count tokens instead.
    if isinstance(usage, dict) and (usage.get("completion_tokens") or 0) >= 1:
        return Probe.READY, ""
    return Probe.NOT_YET, "no completion tokens yet"


def watch(http: httpx.Client, target: Target, *, clock: Monotonic, timeout_s: float,
          stop: threading.Event, check: Callable[[], Outcome | None]) -> Verdict:
    """Probe until the model answers, the server fails, or `timeout_s` passes.

    `check` runs before each probe and ends the watch when it returns an outcome (the
    process exited, or the run is no longer wanted). Between probes the watch sleeps
    until the server's log grows or its process ends (at most QUIET_WAIT_S); `stop`
    (the supervisor closing) ends it.
    """
    events = ChildWatch(Path(target.log_path) if target.log_path else None, target.pid)
    try:
        return _watch(http, target, clock, timeout_s, stop, check, events)
    finally:
        events.close()


def _watch(http: httpx.Client, target: Target, clock: Monotonic, timeout_s: float,
           stop: threading.Event, check: Callable[[], Outcome | None], events: ChildWatch
           ) -> Verdict:
    deadline = clock.monotonic() + timeout_s
    errors = 0
    while not stop.is_set():
        ended = check()
        if ended is not None:
            return Verdict(ended)
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            return Verdict(Outcome.TIMED_OUT, f"Not ready after {timeout_s:g} s.")
        result, detail = probe(http, target, min(remaining, PROBE_TIMEOUT_S))
        if result is Probe.READY:
            return Verdict(Outcome.READY)
        if result is Probe.ERROR:
            errors += 1
            if errors >= PROBE_ERRORS_BEFORE_FAIL:
                return Verdict(Outcome.NOT_LOADED, f"The model did not load: {detail}")
        else:
            errors = 0
        # The server prints when it listens (and why it failed): sleep until it writes.
        events.wait(QUIET_WAIT_S)
    return Verdict(Outcome.ABANDONED)

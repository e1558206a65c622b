"""The one way tests wait: poll a real condition until it holds, or fail saying what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

FIRST_PAUSE_S = 0.01
LONGEST_PAUSE_S = 0.1


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "",
             *, ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Poll predicate() until it returns something truthy, and return that.

    After `timeout` seconds an AssertionError names `what` (and the last error, for
    exceptions listed in `ignoring`, e.g. a connection refused while a server starts).
    The pause between polls grows from 10 ms to 100 ms, so a quick condition is seen
    quickly and a slow one costs little CPU.
    """
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE_S
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignoring as exc:
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            label = what or getattr(predicate, "__name__", "the condition")
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"waited {timeout:g} s for {label}{detail}")
        time.sleep(pause)  # the poll interval of this helper, not a synchronisation
        pause = min(pause * 2, LONGEST_PAUSE_S)

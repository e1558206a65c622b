"""One-time sign-in codes: how a notebook cell's iframe arrives already signed in.

A notebook (manager/cli/notebook.py) cannot hand a browser a cookie; it can hand the
iframe a URL. That URL carries a code, not a session: the code is random, kept here only
as its SHA-256, good for one use within `CODE_SECONDS`, and the sign-in route that takes
it answers with a session cookie and a redirect, so the code leaves the address bar at
once. A code lives in the dashboard's memory: a restart forgets every unused one.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: How long a code may wait for its first (and only) use.
CODE_SECONDS = 120.0


@dataclass(frozen=True)
class _Pending:
    user_id: int
    expires: float


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


class LoginCodes:
    """Issues codes for a user and redeems each once. Thread-safe."""

    def __init__(self, ttl: float = CODE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    def issue(self, user_id: int) -> str:
        """A new code that signs `user_id` in once."""
        code = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._pending = {k: v for k, v in self._pending.items() if v.expires > now}
            self._pending[_digest(code)] = _Pending(user_id, now + self._ttl)
        return code

    def redeem(self, code: str | None) -> int | None:
        """The user id the code was issued for, or None (unknown, used or expired).
        Either way the code is gone afterwards."""
        if not code:
            return None
        with self._lock:
            pending = self._pending.pop(_digest(code), None)
        if pending is None or pending.expires <= self._clock():
            return None
        return pending.user_id

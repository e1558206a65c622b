"""Sign-in throttling and registration limits, kept in memory (a restart forgets them).

Failed sign-ins slow down the source that failed, never the account as a whole: the delay
grows per (account, source), where the source is the client address, or a browser that
signed in to that account before (its device cookie). So nobody elsewhere can lock the
owner out, and a known browser is not slowed by failures from its own address.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from manager.errors import RateLimited

# Beyond this many remembered sources, entries whose delay has run out are dropped.
MAX_ENTRIES = 10_000


def _wait_text(seconds: float) -> str:
    if seconds < 90:
        whole = max(1, round(seconds))
        return f"{whole} second{'s' if whole != 1 else ''}"
    minutes = round(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


@dataclass
class _Failures:
    count: int
    last: float


class LoginLimiter:
    """A growing delay after repeated failed sign-ins: `free` failures cost nothing, then
    each further attempt waits base * 2**n seconds after the last failure (capped).

    Two counters: per (account, source), and per address across all accounts (password
    spraying) with a larger allowance; a known device skips the second."""

    def __init__(
        self,
        *,
        free_per_account: int = 3,
        free_per_address: int = 20,
        base_delay_s: float = 1.0,
        max_delay_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = {"account": free_per_account, "address": free_per_address}
        self._base = base_delay_s
        self._max = max_delay_s
        self._clock = clock
        self._failures: dict[tuple[str, ...], _Failures] = {}
        self._lock = threading.Lock()

    def delay_after(self, failures: int, kind: str = "account") -> float:
        """Seconds an attempt must wait after the last of `failures` failures."""
        over = failures - self._free[kind]
        if over < 0:
            return 0.0
        return min(self._max, self._base * 2 ** min(over, 30))

    @staticmethod
    def _keys(account: str, address: str, device: str | None) -> list[tuple[str, ...]]:
        if device is not None:
            return [("account", account, "device:" + device)]
        return [("account", account, "address:" + address), ("address", address)]

    def check(self, account: str, address: str, device: str | None = None) -> None:
        """Raises RateLimited while this source must still wait."""
        now = self._clock()
        with self._lock:
            wait = 0.0
            for key in self._keys(account, address, device):
                entry = self._failures.get(key)
                if entry is not None:
                    wait = max(wait, entry.last + self.delay_after(entry.count, key[0]) - now)
        if wait > 0:
            raise RateLimited(
                f"Too many failed sign-in attempts. Try again in {_wait_text(wait)}.",
                retry_after=wait,
            )

    def record_failure(self, account: str, address: str, device: str | None = None) -> None:
        now = self._clock()
        with self._lock:
            for key in self._keys(account, address, device):
                entry = self._failures.setdefault(key, _Failures(0, now))
                entry.count += 1
                entry.last = now
            if len(self._failures) > MAX_ENTRIES:
                self._forget_expired(now)

    def record_success(self, account: str, address: str, device: str | None = None) -> None:
        """The source proved it knows the password: its own delay ends."""
        with self._lock:
            self._failures.pop(self._keys(account, address, device)[0], None)

    def clear(self, account: str) -> None:
        """A new password: every delay on this account ends."""
        with self._lock:
            for key in [k for k in self._failures if k[0] == "account" and k[1] == account]:
                del self._failures[key]

    def _forget_expired(self, now: float) -> None:
        for key, entry in list(self._failures.items()):
            if now - entry.last > self.delay_after(entry.count, key[0]):
                del self._failures[key]


class RegistrationLimiter:
    """At most `per_window` registrations per client address in a sliding window."""

    def __init__(self, per_window: int = 5, window_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_window
        self._window = window_s
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, address: str) -> None:
        """Counts one registration from `address`, or raises RateLimited over the limit."""
        now = self._clock()
        with self._lock:
            times = self._seen.setdefault(address, deque())
            while times and now - times[0] >= self._window:
                times.popleft()
            if len(times) >= self._limit:
                wait = self._window - (now - times[0])
                raise RateLimited(
                    "Too many registrations from this address. "
                    f"Try again in {_wait_text(wait)}.",
                    retry_after=wait,
                )
            times.append(now)
            if len(self._seen) > MAX_ENTRIES:
                for key in [k for k, v in self._seen.items() if not v or
                            now - v[-1] >= self._window]:
                    del self._seen[key]

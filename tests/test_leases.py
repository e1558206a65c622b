"""Leases: a lease taken with `hold` counts like the context manager's: busy (never idle)
from its start, just used at its end, and released once by its own call."""

from __future__ import annotations

from manager.servers.leases import Leases
from manager.servers.snapshot import Activity


def test_hold_and_lease_count_alike() -> None:
    now = [10.0]
    leases = Leases(lambda: now[0])
    release = leases.hold(7)
    assert leases.of(7) == Activity(1, 10.0)
    assert leases.idle_for(7, 50.0) is None  # in use: never idle
    with leases.lease(7):
        assert leases.of(7).leases == 2
    now[0] = 20.0
    release()
    assert leases.of(7) == Activity(0, 20.0)
    assert leases.idle_for(7, 25.0) == 5.0
    leases.forget(7)
    assert leases.of(7) == Activity(0, 0.0)

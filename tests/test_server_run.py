"""ServerRun.snapshot: kept while nothing about the run changes, made again after any
field is set, and never kept while a restart is due (its time comes from the clock)."""

from __future__ import annotations

from manager.servers.profiles import Backend, Profile
from manager.servers.run import ServerRun
from manager.servers.snapshot import Clock
from manager.servers.states import ServerState


class Moved(Clock):
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1000.0 + self.now


def test_a_snapshot_is_kept_until_the_run_changes() -> None:
    clock = Moved()
    run = ServerRun(Profile(id=1, name="tiny", model="m", backend=Backend.MLX_LM,
                            host="127.0.0.1", port=8080))
    first = run.snapshot(clock)
    assert run.snapshot(clock) is first
    run.state, run.pid = ServerState.READY, 42
    second = run.snapshot(clock)
    assert (second.state, second.pid) == (ServerState.READY, 42)
    assert (first.state, first.pid) == (ServerState.STOPPED, None)
    run.profile = Profile(id=1, name="renamed", model="m", backend=Backend.MLX_LM,
                          host="127.0.0.1", port=8080)
    assert run.snapshot(clock).profile.name == "renamed"
    run.restart_due = 110.0
    assert run.snapshot(clock).restart_at == 1110.0
    assert run.snapshot(clock) is not run.snapshot(clock)  # worked out each time
    clock.now = 100.0
    run.restart_due = None
    assert run.snapshot(clock).restart_at is None

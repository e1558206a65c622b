"""Monitor.stop() while the job is pausing itself: both finish (they used to wait for each
other forever, seen as a 300 s timeout when services closed)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED

from manager.servers.monitor import Monitor
from manager.services import Services
from tests.server_helpers import monitor_ticking_only_when_asked
from tests.waits import wait_for


def test_stop_while_a_tick_pauses_the_job_finishes(services: Services,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_pause = BackgroundScheduler.pause_job
    parked = threading.Event()

    def pause_once_stop_began(scheduler: BackgroundScheduler, job_id: str,
                              jobstore: str | None = None) -> Any:
        # The tick has decided to sleep (nobody watches, no server runs); hold it here
        # until stop() is shutting the scheduler down, then let it pause the job.
        parked.set()
        wait_for(lambda: scheduler.state == STATE_STOPPED, 30, "stop() to begin")
        return real_pause(scheduler, job_id, jobstore)

    monkeypatch.setattr(BackgroundScheduler, "pause_job", pause_once_stop_began)
    monitor = Monitor(services.supervisor, detect_gpu_reader=False)
    monitor.start()
    assert parked.wait(30), "the first tick did not try to sleep"
    stopper = threading.Thread(target=monitor.stop, daemon=True)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive(), "stop() and the tick are waiting for each other"
    assert monitor.asleep


def test_a_first_tick_that_runs_before_start_returns_still_ticks(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: start() set `_scheduler` after starting the scheduler, whose first tick runs at
    once on its pool; a tick that came first took the monitor for stopped and did
    nothing, so with a long interval the first reconcile came an interval late."""
    real_start = BackgroundScheduler.start
    real_tick = Monitor._scheduled_tick
    scheduled: list[int] = []

    def counted_tick(monitor: Monitor) -> None:
        scheduled.append(1)
        real_tick(monitor)

    def start_then_let_the_first_tick_run(scheduler: BackgroundScheduler,
                                          *args: Any, **kwargs: Any) -> None:
        real_start(scheduler, *args, **kwargs)
        wait_for(lambda: scheduled, 30, "the first scheduled tick")  # before start returns

    monkeypatch.setattr(Monitor, "_scheduled_tick", counted_tick)
    monkeypatch.setattr(BackgroundScheduler, "start", start_then_let_the_first_tick_run)
    monitor = monitor_ticking_only_when_asked(services.supervisor)
    monitor.start()
    try:
        wait_for(lambda: monitor.ticks >= 1, 10, "the first tick to do its work")
    finally:
        monitor.stop()

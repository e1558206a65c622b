"""A signal during the dashboard's start-up (process.run_beside, Services._start_servers):
its SystemExit lands in the main thread's wait, never inside the start-up's work, which
runs on to its end and lets go of every lock it took.

Raised inside the work, it could land between a lock's acquire and its `with` (a
Condition's or a @contextmanager's __enter__ is Python code): the lock stayed taken, and
the clean-up's stops waited on it until they gave up, leaving an auto-started server
running (tests/test_dashboard_process.py caught it once on a busy machine). An
auto-start the start-up tries after that clean-up is refused, and not left FAILED."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.errors import ManagerError
from manager.servers.events import Announcer
from manager.servers.process import exit_on_signals, run_beside
from manager.servers.records import read_records
from manager.servers.states import ServerState
from tests.server_helpers import server_env
from tests.waits import wait_for

ROUNDS = 200
SIGNAL_AT = 10


@pytest.fixture
def signals_exit() -> Iterator[None]:
    """The dashboard's handlers (SIGTERM and SIGHUP raise SystemExit), for this test."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    exit_on_signals()
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def taken_elsewhere(lock: threading.Condition) -> bool:
    """Can another thread take `lock` (an RLock: this thread always could)?"""
    got: list[bool] = []

    def take() -> None:
        got.append(lock.acquire(timeout=30))
        if got[0]:
            lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return got[0]


def test_a_sigterm_lands_in_the_wait_and_the_work_runs_to_its_end(signals_exit: None) -> None:
    lock = threading.Condition(threading.RLock())  # the supervisor's
    announcer = Announcer(lock)
    rounds: list[int] = []
    done = threading.Event()

    def start_up() -> None:
        for n in range(ROUNDS):
            with announcer.changing():  # what every supervisor change goes through
                rounds.append(n)
                if n == SIGNAL_AT:
                    os.kill(os.getpid(), signal.SIGTERM)  # systemd's stop, mid-change
        done.set()

    with pytest.raises(SystemExit) as raised:
        run_beside(start_up, "start-up")
    assert raised.value.code == 128 + signal.SIGTERM
    wait_for(done.is_set, 60, "the start-up to finish")
    assert rounds == list(range(ROUNDS))  # not cut short where the signal came
    assert taken_elsewhere(lock)


def test_the_works_own_failure_is_raised_in_the_waiting_thread() -> None:
    def start_up() -> None:
        raise ValueError("port 8080 is taken")

    with pytest.raises(ValueError, match="port 8080 is taken"):
        run_beside(start_up, "start-up")


def test_a_start_refused_because_the_dashboard_closes_is_not_recorded_as_failed(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """The start-up runs on after the main thread's clean-up closed the supervisor: an
    auto-start it then tries is refused, and must not be left FAILED for the next run."""
    env = server_env(tmp_path / "data")
    profile = env.profile("late", tiny_models["text"], auto_start=True)
    env.close()
    with pytest.raises(ManagerError, match="The dashboard is shutting down"):
        env.supervisor.start(profile.id)
    env.supervisor.fail_to_start(profile.id, "Auto-start failed: The dashboard is shutting "
                                             "down.")
    snap = env.supervisor.snapshot(profile.id)
    assert snap is None or snap.state is ServerState.STOPPED
    assert all(r.state is ServerState.STOPPED for r in read_records(env.store)
               if r.profile_id == profile.id)

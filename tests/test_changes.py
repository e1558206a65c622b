"""Version counters pages wait on (manager/changes.py), who moves them, and the monitor
that sleeps while nobody looks and no server runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from manager.changes import Changes, Topic, Versions
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.services import Services
from tests.waits import wait_for


def _model_folder(root: Path) -> str:
    """A folder a profile accepts (it is never started here)."""
    folder = root / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    return str(folder)


def test_versions_say_which_topics_moved() -> None:
    changes = Changes()
    first = changes.versions()
    assert first.moved(None) == frozenset(Topic)
    assert first.moved(first) == frozenset()
    changes.bump(Topic.ACCOUNTS)
    changes.bump(Topic.ACCOUNTS)
    changes.bump(Topic.SERVERS)
    now = changes.versions()
    assert now.moved(first) == {Topic.ACCOUNTS, Topic.SERVERS}
    assert now.of(Topic.ACCOUNTS) == 2 and now.of(Topic.DOWNLOADS) == 0
    assert changes.changed_at(Topic.SERVERS) > 0 and changes.changed_at(Topic.SAMPLES) == 0
    assert Versions((1,)).moved(now) == frozenset(Topic)  # a page from another layout


def test_wait_returns_when_another_thread_bumps() -> None:
    changes = Changes()
    seen = changes.versions()
    assert changes.wait(seen, 0.0) == seen  # nothing moved: no wait at all
    bumper = threading.Thread(target=changes.bump, args=(Topic.DOWNLOADS,))
    bumper.start()
    after = changes.wait(seen, 60.0)
    bumper.join()
    assert after.moved(seen) == {Topic.DOWNLOADS}


def test_listeners_hear_every_bump_and_a_failing_one_stops_nobody(
        caplog: pytest.LogCaptureFixture) -> None:
    changes = Changes()
    heard: list[Topic] = []

    def broken(_topic: Topic) -> None:
        raise RuntimeError("listener bug")

    stop_broken = changes.subscribe(broken)
    stop_heard = changes.subscribe(heard.append)
    assert changes.listeners == 2
    changes.bump(Topic.SAMPLES)
    assert heard == [Topic.SAMPLES]
    assert "change listener" in caplog.text and "listener bug" in caplog.text
    stop_broken()
    stop_heard()
    stop_heard()  # twice is harmless
    changes.bump(Topic.SAMPLES)
    assert heard == [Topic.SAMPLES] and changes.listeners == 0


def test_accounts_and_servers_move_their_counters(services: Services, tmp_path: Path) -> None:
    changes = services.changes
    before = changes.versions()
    admin = services.auth.register("admin@example.com", "correct horse battery")
    bob = services.auth.register("bob@example.com", "correct horse battery")
    after_register = changes.versions()
    assert after_register.of(Topic.ACCOUNTS) - before.of(Topic.ACCOUNTS) == 2
    services.auth.approve(admin, bob.id)
    assert changes.versions().moved(after_register) == {Topic.ACCOUNTS}

    profile = services.profiles.create(None, ProfileSpec(name="p", model=_model_folder(tmp_path),
                                                         port=free_port()))
    seen = changes.versions()
    services.supervisor.fail_to_start(profile.id, "port busy")
    assert Topic.SERVERS in changes.versions().moved(seen)


def test_the_monitor_sleeps_while_nobody_looks_and_wakes_on_a_touch_or_a_change(
        services: Services, tmp_path: Path) -> None:
    monitor = services.monitor
    profile = services.profiles.create(None, ProfileSpec(name="p", model=_model_folder(tmp_path),
                                                         port=free_port()))
    monitor.start()
    try:
        # No page has touched it and no server runs: after its first pass it pauses.
        wait_for(lambda: monitor.asleep, 30, "the monitor to fall asleep")
        assert monitor.samples_taken == 0
        ticks = monitor.ticks
        # A page opens: awake at once, and it runs its pass again.
        monitor.touch()
        assert not monitor.asleep
        wait_for(lambda: monitor.ticks > ticks, 30, "a pass after the touch")
        assert monitor.watched()
    finally:
        monitor.stop()

    # Nobody watches (a fresh monitor): a server's change wakes the sleeping job.
    from manager.servers.monitor import Monitor

    quiet = Monitor(services.supervisor, detect_gpu_reader=False)
    quiet.start()
    try:
        wait_for(lambda: quiet.asleep, 30, "the monitor to fall asleep")
        ticks = quiet.ticks
        services.supervisor.fail_to_start(profile.id, "port busy")
        wait_for(lambda: quiet.ticks > ticks, 30, "a pass after the server's change")
        # FAILED is not running: with nobody watching it goes back to sleep.
        wait_for(lambda: quiet.asleep, 30, "the monitor to sleep again")
    finally:
        quiet.stop()

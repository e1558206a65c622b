"""The supervisor when a person's action or a request lands in the middle of its own work,
with real processes (a real model server, or /bin/false as the interpreter: it exits at
once with code 1, as a crash)."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from manager.errors import ManagerError
from manager.servers.inference import InferenceClient, MetricsStore
from manager.servers.profiles import Profile
from manager.servers.states import ACTIVE_STATES
from manager.servers.supervisor import ServerNotReady, ServerState
from tests.server_helpers import ServerEnv, hf_home_env, server_env
from tests.waits import wait_for


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def _loading_script(folder: Path) -> Path:
    """An "interpreter" whose server never gets ready: it sleeps, as a big model loads."""
    script = folder / "loading"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    return script


def _backing_off(env: ServerEnv, tmp_path: Path) -> Profile:
    """A profile with auto-restart whose server crashed (/bin/false): in BACKOFF."""
    flaky = env.profile("flaky", _model(tmp_path / "model"), auto_restart=True)
    env.supervisor.start(flaky.id)
    assert wait_for(lambda: env.supervisor.snapshot(flaky.id).state is ServerState.BACKOFF,
                    10)
    return flaky


def test_a_server_dismissed_while_its_due_restart_is_on_its_way_stays_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the supervision pass took a crashed server's restart as due, let go of its
    lock, and the user's Stop (a dismissal) landed before the pass started it again: the
    server the user had just stopped came back."""
    env = server_env(tmp_path / "data", python="/bin/false")
    try:
        flaky = _backing_off(env, tmp_path)
        env.clock.advance(120)  # its restart is due
        sample = env.supervisor.spares.sample

        def stopped_meanwhile() -> None:  # runs between the due list and the restarts
            env.supervisor.stop(flaky.id, by="alice")
            sample()

        monkeypatch.setattr(env.supervisor.spares, "sample", stopped_meanwhile)
        env.supervisor.reconcile()
        snap = env.supervisor.snapshot(flaky.id)
        assert snap.state is ServerState.STOPPED, snap.reason
        assert snap.reason == "dismissed by alice"
    finally:
        env.close()


@pytest.mark.slow
def test_a_request_that_arrives_as_the_idle_stop_sets_out_keeps_its_server(
        tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the supervision pass found the server idle, and the stop it then ran never
    looked again: a request that took its lease meanwhile had its stream cut off."""
    with hf_home_env(tmp_path / "hf"):
        env = server_env(tmp_path / "data")
        try:
            profile = env.profile("idle", tiny_models["text"], idle_timeout_minutes=1)
            env.supervisor.start(profile.id)
            env.supervisor.wait_ready(profile.id, 90)
            env.clock.advance(61)  # idle for longer than its timeout
            arrived: list[Callable[[], None]] = []
            sample = env.supervisor.spares.sample

            def a_request_arrives() -> None:  # between the pass's look and its stop
                arrived.append(env.supervisor.hold(profile.id))
                sample()

            monkeypatch.setattr(env.supervisor.spares, "sample", a_request_arrives)
            env.supervisor.reconcile()
            for thread in threading.enumerate():
                if thread.name == f"idle-stop-{profile.id}":
                    thread.join(30)
            assert arrived, "the pass did not find the server idle"
            snap = env.supervisor.snapshot(profile.id)
            assert snap.state is ServerState.READY, snap.reason
            arrived[0]()  # the request ends; idle again from now
        finally:
            env.close()


def test_a_chat_request_waiting_for_its_server_holds_it(tmp_path: Path) -> None:
    """A request holds the server (idle stop and eviction leave it be) from before it
    looks for it, not only once it found it ready: else an idle stop could come between
    the two."""
    env = server_env(tmp_path / "data", python=str(_loading_script(tmp_path)))
    client = InferenceClient(env.supervisor, MetricsStore(), wait_ready_s=30)
    try:
        profile = env.profile("slow", _model(tmp_path / "model"))
        env.supervisor.start(profile.id)
        failed: list[BaseException] = []

        def ask() -> None:
            try:
                client.chat(profile.id, {"messages": [{"role": "user", "content": "hi"}]})
            except ServerNotReady as exc:  # the stop below ends the wait
                failed.append(exc)

        asking = threading.Thread(target=ask)
        asking.start()
        assert wait_for(lambda: env.supervisor.activity(profile.id).leases == 1, 10)
        env.supervisor.stop(profile.id)
        asking.join(30)
        assert failed and env.supervisor.activity(profile.id).leases == 0
    finally:
        client.close()
        env.close()


def test_a_start_while_the_dashboard_stops_its_servers_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: closing listed the running servers, stopped them, and only then refused new
    starts. A start from a request still under way in between went ahead, and its
    server outlived the dashboard with nothing managing it."""
    env = server_env(tmp_path / "data", python=str(_loading_script(tmp_path)))
    supervisor = env.supervisor
    first = env.profile("first", _model(tmp_path / "m1"))
    second = env.profile("second", _model(tmp_path / "m2"))
    supervisor.start(first.id)
    meanwhile: list[object] = []
    stop_logged = supervisor._stop_logged

    def a_start_comes_meanwhile(profile_id: int, reason: str,
                                unused_since: float | None = None) -> None:
        if not meanwhile:  # the close is under way: it listed what runs
            try:
                meanwhile.append(supervisor.start(second.id))
            except ManagerError as exc:
                meanwhile.append(exc)
        stop_logged(profile_id, reason, unused_since)

    monkeypatch.setattr(supervisor, "_stop_logged", a_start_comes_meanwhile)
    try:
        env.close()
        assert isinstance(meanwhile[0], ManagerError), "the start went ahead"
        assert "shutting down" in meanwhile[0].message
    finally:
        for snap in supervisor.snapshots():  # whatever the bug left running
            if snap.pid is not None and snap.state in ACTIVE_STATES:
                os.killpg(snap.pid, signal.SIGKILL)
    assert all(s.state not in ACTIVE_STATES for s in supervisor.snapshots())


def test_a_state_that_cannot_be_recorded_does_not_stop_the_server_moving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Bug: with the database unwritable (a full disk), a stop set STOPPING, failed to
    record it and raised: the server stayed "Stopping" for ever with its process alive.
    The record is for `mlx-manager status` and the next dashboard; the state machine
    goes on without it, and the failure is logged."""
    env = server_env(tmp_path / "data", python=str(_loading_script(tmp_path)))
    try:
        profile = env.profile("loading", _model(tmp_path / "model"))
        pid = env.supervisor.start(profile.id).pid
        assert pid is not None

        def full_disk(*_args: object, **_kwargs: object) -> object:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(env.store, "connect", full_disk)
        with caplog.at_level(logging.ERROR):
            snap = env.supervisor.stop(profile.id)
        assert snap.state is ServerState.STOPPED
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert "database or disk is full" in caplog.text
    finally:
        monkeypatch.undo()
        env.close()


def test_a_restart_that_fails_unexpectedly_is_shown_failed_not_restarting_for_ever(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the pass took the restart as due (clearing it), and an error other than the
    manager's own (the model's disk gone: an I/O error) escaped the restart: the server
    said "Restarting soon" for ever, and the rest of the pass was skipped."""
    env = server_env(tmp_path / "data", python="/bin/false")
    try:
        flaky = _backing_off(env, tmp_path)

        def disk_gone(_model: str) -> Path:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(env.profiles, "resolve_model", disk_gone)
        env.clock.advance(120)
        env.supervisor.reconcile()
        snap = env.supervisor.snapshot(flaky.id)
        assert snap.state is ServerState.FAILED
        assert "Auto-restart failed" in snap.reason and "Input/output error" in snap.reason
    finally:
        env.close()


@pytest.mark.slow
def test_a_server_a_request_kept_from_eviction_can_still_be_evicted_later(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Bug: an eviction refused because a request had just taken the server (a907884)
    still counted as an eviction and dropped the server's "started on demand" mark, so
    it was never evicted again and later starts failed as if it had been started by
    hand."""
    with hf_home_env(tmp_path / "hf"):
        env = server_env(tmp_path / "data")
        try:
            gateway_started = env.profile("on demand", tiny_models["text"])
            newcomer = env.profile("newcomer", tiny_models["text"])
            env.placement.ensure_started(None, gateway_started)
            snap = env.supervisor.wait_ready(gateway_started.id, 90)
            assert env.placement.started_on_demand(snap)
            checked = env.supervisor.clock.monotonic()
            with env.supervisor.lease(gateway_started.id):  # a request takes it
                env.placement._evict(snap, newcomer, checked)
            after = env.supervisor.snapshot(gateway_started.id)
            assert after.state is ServerState.READY
            assert env.placement.started_on_demand(after), "no longer evictable"
            assert gateway_started.id not in env.placement.stats() \
                or env.placement.stats()[gateway_started.id].evictions == 0
        finally:
            env.close()

"""The supervisor when a person's action lands in the middle of its own work: real
processes (/bin/false as the interpreter: it exits at once with code 1, as a crash)."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.servers.supervisor import ServerState
from tests.server_helpers import server_env
from tests.waits import wait_for


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def test_a_server_dismissed_while_its_due_restart_is_on_its_way_stays_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the supervision pass took a crashed server's restart as due, let go of its
    lock, and the user's Stop (a dismissal) landed before the pass started it again: the
    server the user had just stopped came back."""
    env = server_env(tmp_path / "data", python="/bin/false")
    try:
        flaky = env.profile("flaky", _model(tmp_path / "model"), auto_restart=True)
        env.supervisor.start(flaky.id)
        assert wait_for(lambda: env.supervisor.snapshot(flaky.id).state
                        is ServerState.BACKOFF, 10)
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

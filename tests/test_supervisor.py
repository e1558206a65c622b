"""The supervisor against real mlx_lm / mlx_vlm server processes on the tiny models."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from manager.errors import ValidationError
from manager.net import free_port, port_is_free
from manager.servers.monitor import Monitor
from manager.servers.process import build_command
from manager.servers.profiles import Backend, Profile
from manager.servers.records import read_records
from manager.servers.states import FAILED_STATES
from manager.servers.supervisor import (
    MAX_QUICK_FAILURES,
    ServerLoading,
    ServerNotReady,
    ServerState,
)
from manager.services import Services
from manager.settings import Settings
from tests.server_helpers import (
    ServerEnv,
    all_gone,
    exited,
    hf_home_env,
    make_broken_model,
    monitor_ticking_only_when_asked,
    server_env,
    tree_pids,
)
from tests.waits import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    root = tmp_path_factory.mktemp("supervisor")
    with hf_home_env(root / "hf_home"):
        created = server_env(root / "data")
        yield created
        created.close()


@pytest.fixture(scope="module")
def text_profile(env: ServerEnv, tiny_models: dict[str, Path]) -> Profile:
    return env.profile("tiny text", tiny_models["text"])


def ready(env: ServerEnv, profile: Profile) -> int:
    """Start the profile if it is not READY; returns the server's pid."""
    snap = env.supervisor.snapshot(profile.id)
    if snap is None or snap.state is not ServerState.READY:
        if snap is not None and snap.state is not ServerState.STOPPED:
            env.supervisor.stop(profile.id)
        env.supervisor.start(profile.id)
        snap = env.supervisor.wait_ready(profile.id, 90)
    assert snap.pid is not None
    return snap.pid


def test_start_reaches_ready_after_a_real_completion(env: ServerEnv, text_profile: Profile
                                                     ) -> None:
    snap = env.supervisor.start(text_profile.id, by="alice@example.com")
    assert snap.state is ServerState.STARTING
    # Not ready yet: a request now gets "still loading", never a connection error.
    with pytest.raises(ServerLoading, match="still loading"):
        env.supervisor.wait_ready(text_profile.id, 0)
    snap = env.supervisor.wait_ready(text_profile.id, 90)
    assert snap.state is ServerState.READY and snap.ready_at is not None
    assert "1-token completion" in snap.reason
    cmdline = psutil.Process(snap.pid).cmdline()
    assert cmdline[1:4] == ["-m", "mlx_lm", "server"]
    assert cmdline[cmdline.index("--host") + 1] == "127.0.0.1"
    # Its own session: the dashboard's Ctrl-C does not reach it.
    assert os.getpgid(snap.pid) == snap.pid
    record = next(r for r in read_records(env.store) if r.profile_id == text_profile.id)
    assert record.state is ServerState.READY and record.pid == snap.pid
    assert list(record.cmdline) == cmdline
    answer = httpx.post(f"{snap.base_url}/v1/completions",
                        json={"prompt": "Hello", "max_tokens": 3}, timeout=30).json()
    assert answer["usage"]["completion_tokens"] >= 1


def test_two_servers_at_once_text_and_vision(env: ServerEnv, text_profile: Profile,
                                             tiny_models: dict[str, Path]) -> None:
    vision = env.profile("tiny vision", tiny_models["vision"])
    assert vision.backend is Backend.MLX_VLM
    ready(env, text_profile)
    env.supervisor.start(vision.id)
    snap = env.supervisor.wait_ready(vision.id, 90)
    assert psutil.Process(snap.pid).cmdline()[1:3] == ["-m", "mlx_vlm.server"]
    both = {s.profile.name: s for s in env.supervisor.snapshots()}
    assert both["tiny text"].state is ServerState.READY
    assert both["tiny vision"].state is ServerState.READY
    assert both["tiny text"].profile.port != both["tiny vision"].profile.port
    health = httpx.get(f"{snap.base_url}/health", timeout=10).json()
    assert health["loaded_model"] == snap.model_path
    env.supervisor.stop(vision.id)


def test_stop_leaves_no_process_and_frees_the_port(env: ServerEnv,
                                                   tiny_models: dict[str, Path]) -> None:
    profile = env.profile("to stop", tiny_models["text_4bit"])
    env.supervisor.start(profile.id)
    snap = env.supervisor.wait_ready(profile.id, 90)
    pids = tree_pids(snap.pid)
    log_path = Path(snap.log_path)
    assert log_path.exists() and not port_is_free("127.0.0.1", profile.port)
    stopped = env.supervisor.stop(profile.id, by="bob@example.com")
    assert stopped.state is ServerState.STOPPED and stopped.pid is None
    assert all_gone(pids)
    assert port_is_free("127.0.0.1", profile.port)
    assert not log_path.exists(), "the log of a stopped server is cleaned up"
    with pytest.raises(ServerNotReady, match="not running"):
        env.supervisor.wait_ready(profile.id, 1)


def test_kill_9_is_failed_within_one_tick_with_exit_code_and_log(
        env: ServerEnv, text_profile: Profile) -> None:
    pid = ready(env, text_profile)
    os.kill(pid, signal.SIGKILL)
    # All its threads must be gone before the kernel lets us collect its exit code.
    assert wait_for(lambda: exited(pid), 30)
    env.monitor.tick()
    snap = env.supervisor.snapshot(text_profile.id)
    assert snap.state is ServerState.FAILED
    assert "exit code -9" in snap.reason and "SIGKILL" in snap.reason
    assert snap.exit_code == -9
    assert "mlx-manager" in snap.failure_tail  # the log's first line, written at spawn
    assert Path(snap.log_path).exists(), "the last log of a failed server is kept"
    record = next(r for r in read_records(env.store) if r.profile_id == text_profile.id)
    assert record.state is ServerState.FAILED and record.exit_code == -9
    # The tile offers Restart (a dismissal, then a start): it works.
    env.supervisor.stop(text_profile.id)
    env.supervisor.start(text_profile.id)
    assert env.supervisor.wait_ready(text_profile.id, 90).state is ServerState.READY


def test_a_crash_is_known_when_it_happens_not_at_the_next_tick(
        env: ServerEnv, text_profile: Profile) -> None:
    """Bug: a READY server's crash was noticed only by the monitor's next tick (up to
    2 s while a page watches, 5 s when nobody does), before any page could show it."""
    pid = ready(env, text_profile)  # READY since the restart above: no new start
    monitor = monitor_ticking_only_when_asked(env.supervisor)
    monitor.start()  # its first tick runs now, its next one not within this test
    try:
        wait_for(lambda: monitor.ticks >= 1, what="the monitor's first tick")
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: env.supervisor.snapshot(text_profile.id).state
                        is ServerState.FAILED, what="the crash to be noticed")
        assert "SIGKILL" in env.supervisor.snapshot(text_profile.id).reason
        # The exit asked for a tick (which counts itself after its reconcile set FAILED).
        wait_for(lambda: monitor.ticks >= 2, what="the tick the exit asked for")
    finally:
        monitor.stop()


def test_a_crash_during_a_tick_is_known_at_once_not_an_interval_later(
        env: ServerEnv, text_profile: Profile, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: the exit watch asks the job to run now; when the server died while a tick ran,
    the scheduler skipped that run (one at a time) and the tick rescheduled the job an
    interval later, so the crash waited for the next tick."""
    pid = ready(env, text_profile)
    real_sample, real_run_now = Monitor.sample_all, Monitor._run_now
    asked = threading.Event()
    killed: list[int] = []

    def run_now(monitor: Monitor) -> None:
        real_run_now(monitor)
        asked.set()

    def sample_and_kill_once(monitor: Monitor) -> None:
        real_sample(monitor)
        if not killed:  # inside the first tick, after it watched the process
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)
            assert asked.wait(30), "the exit watch did not ask for a run"

    monkeypatch.setattr(Monitor, "_run_now", run_now)
    monkeypatch.setattr(Monitor, "sample_all", sample_and_kill_once)
    monitor = monitor_ticking_only_when_asked(env.supervisor)
    monitor.start()
    try:
        assert wait_for(lambda: env.supervisor.snapshot(text_profile.id).state
                        is ServerState.FAILED, what="the crash to be noticed")
        assert killed == [pid]
    finally:
        monitor.stop()


def test_a_broken_model_is_failed_with_the_log_tail(env: ServerEnv,
                                                    tiny_models: dict[str, Path]) -> None:
    broken = make_broken_model(env.root / "broken", tiny_models["text"])
    profile = env.profile("broken text", broken)
    snap = env.supervisor.start(profile.id)
    pids = tree_pids(snap.pid)
    assert wait_for(lambda: env.supervisor.snapshot(profile.id).state is ServerState.FAILED, 90)
    snap = env.supervisor.snapshot(profile.id)
    assert "did not load" in snap.reason
    assert "Traceback" in snap.failure_tail or "Error" in snap.failure_tail
    assert all_gone(pids), "a server that cannot load is not left running"
    with pytest.raises(ServerNotReady, match="failed"):
        env.supervisor.wait_ready(profile.id, 1)


def test_a_vision_server_that_exits_while_loading_is_failed(
        env: ServerEnv, tiny_models: dict[str, Path]) -> None:
    broken = make_broken_model(env.root / "broken-vision", tiny_models["vision"])
    profile = env.profile("broken vision", broken, backend=Backend.MLX_VLM)
    env.supervisor.start(profile.id)
    assert wait_for(lambda: env.supervisor.snapshot(profile.id).state is ServerState.FAILED, 90)
    snap = env.supervisor.snapshot(profile.id)
    assert "exited while loading the model with exit code" in snap.reason
    assert snap.exit_code not in (None, 0)
    assert snap.failure_tail.strip()


def test_a_port_already_taken_gives_a_clear_error(env: ServerEnv,
                                                  tiny_models: dict[str, Path]) -> None:
    profile = env.profile("busy port", tiny_models["text"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", profile.port))
        squatter.listen()
        with pytest.raises(ValidationError) as caught:
            env.supervisor.start(profile.id)
    assert caught.value.field == "port"
    assert f"Port {profile.port} on 127.0.0.1 is already in use" in caught.value.message
    snap = env.supervisor.snapshot(profile.id)
    assert snap is None or snap.state is ServerState.STOPPED


def test_auto_restart_backs_off_and_gives_up(tmp_path: Path, tiny_models: dict[str, Path]
                                             ) -> None:
    # /bin/false as "python": a real process that exits at once with code 1.
    env = server_env(tmp_path / "data", python="/bin/false")
    try:
        profile = env.profile("flaky", tiny_models["text"], auto_restart=True)
        env.supervisor.start(profile.id)
        for attempt in range(1, MAX_QUICK_FAILURES + 1):
            gave_up = attempt == MAX_QUICK_FAILURES
            # BACKOFF while a restart is due; FAILED (FATAL) once it gives up.
            expected = ServerState.FATAL if gave_up else ServerState.BACKOFF
            assert wait_for(lambda want=expected: env.supervisor.snapshot(profile.id).state
                            is want, 10)
            snap = env.supervisor.snapshot(profile.id)
            assert "exit code 1" in snap.reason
            assert "mlx-manager" in snap.failure_tail  # the log tail, in both states
            if not gave_up:
                assert "Restarting in" in snap.reason and snap.restart_at is not None
                assert env.supervisor.transitional()
                env.monitor.tick()  # not due yet: nothing happens
                assert env.supervisor.snapshot(profile.id).state is ServerState.BACKOFF
                env.clock.advance(120)
                env.monitor.tick()
        snap = env.supervisor.snapshot(profile.id)
        assert f"Gave up restarting after {MAX_QUICK_FAILURES} failures" in snap.reason
        assert snap.restart_at is None and not env.supervisor.transitional()
        env.clock.advance(600)
        env.monitor.tick()
        assert env.supervisor.snapshot(profile.id).state is ServerState.FAILED
        record = next(r for r in read_records(env.store) if r.profile_id == profile.id)
        assert record.state is ServerState.FAILED
    finally:
        env.close()


def test_without_auto_restart_a_crash_is_failed_at_once_and_a_backoff_can_be_dismissed(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    env = server_env(tmp_path / "data", python="/bin/false")
    try:
        once = env.profile("once", tiny_models["text"])
        env.supervisor.start(once.id)
        assert wait_for(lambda: env.supervisor.snapshot(once.id).state in FAILED_STATES, 10)
        snap = env.supervisor.snapshot(once.id)
        assert snap.state is ServerState.FAILED and snap.restart_at is None
        assert "Restarting" not in snap.reason
        flaky = env.profile("flaky", tiny_models["text"], auto_restart=True)
        env.supervisor.start(flaky.id)
        assert wait_for(lambda: env.supervisor.snapshot(flaky.id).state
                        is ServerState.BACKOFF, 10)
        record = next(r for r in read_records(env.store) if r.profile_id == flaky.id)
        assert record.state is ServerState.BACKOFF  # stored as "backoff"
        # Dismissing a server that backs off cancels its restart.
        assert env.supervisor.stop(flaky.id).state is ServerState.STOPPED
        env.clock.advance(120)
        env.monitor.tick()
        assert env.supervisor.snapshot(flaky.id).state is ServerState.STOPPED
    finally:
        env.close()


def test_idle_timeout_stops_a_server(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    with hf_home_env(tmp_path / "hf"):
        env = server_env(tmp_path / "data")
        try:
            profile = env.profile("idle", tiny_models["text"], idle_timeout_minutes=1)
            env.supervisor.start(profile.id)
            pid = env.supervisor.wait_ready(profile.id, 90).pid
            env.monitor.tick()
            assert env.supervisor.snapshot(profile.id).state is ServerState.READY
            with env.supervisor.lease(profile.id):  # a request in flight: never idle
                env.clock.advance(120)
                env.monitor.tick()
                assert env.supervisor.snapshot(profile.id).state is ServerState.READY
            env.clock.advance(61)
            env.monitor.tick()
            assert wait_for(
                lambda: env.supervisor.snapshot(profile.id).state is ServerState.STOPPED, 30)
            assert "idle for 1 min" in env.supervisor.snapshot(profile.id).reason
            assert all_gone([pid])
        finally:
            env.close()


def test_dashboard_restart_adopts_a_running_server(
        tmp_path: Path, tiny_models: dict[str, Path], hf_home: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), warm_spare=False)
    first = Services.create(settings)
    second = None
    try:
        profile = first.profiles.create(None, _spec("adoptee", tiny_models["text"]))
        gone = first.profiles.create(None, _spec("gone", tiny_models["text"]))
        first.supervisor.start(profile.id)
        pid = first.supervisor.wait_ready(profile.id, 90).pid
        # A record whose process no longer exists (same pid, another create time).
        with first.store.connect() as db:
            db.execute("INSERT INTO servers (profile_id, state, pid, create_time, cmdline, "
                       "updated_at) VALUES (?, 'ready', ?, 1.0, ?, 'x')",
                       [gone.id, pid, json.dumps(["python"])])
        first.close(keep_servers=True)
        assert psutil.pid_exists(pid), "the dashboard's exit leaves servers running"

        second = Services.create(settings)
        snap = second.supervisor.snapshot(profile.id)
        assert snap.state is ServerState.READY and snap.adopted and snap.pid == pid
        assert second.supervisor.snapshot(gone.id).state is ServerState.STOPPED
        assert Path(snap.log_path).exists(), "the log of an adopted server is kept"
        # The adopted server is supervised like any other: crash detection and stop work.
        second.supervisor.stop(profile.id)
        assert all_gone([pid]) and port_is_free("127.0.0.1", profile.port)
    finally:
        first.close()
        if second is not None:
            second.close()


def test_log_cleanup_at_start_stop_crash_and_exit(tmp_path: Path, tiny_models: dict[str, Path],
                                                  hf_home: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), warm_spare=False)
    settings.ensure_dirs()
    stray = settings.logs_dir / "server-999-1.log"
    stray.write_text("a server of an earlier run that is gone\n")
    services = Services.create(settings)
    try:
        assert not stray.exists(), "logs of gone servers are removed at dashboard start"
        keep = services.profiles.create(None, _spec("keeps running", tiny_models["text"]))
        crash = services.profiles.create(None, _spec("crashes", tiny_models["text_4bit"]))
        services.supervisor.start(keep.id)
        services.supervisor.start(crash.id)
        crash_snap = services.supervisor.wait_ready(crash.id, 90)
        keep_snap = services.supervisor.wait_ready(keep.id, 90)
        # A stale log of the crashing profile from an earlier run of it.
        older = settings.logs_dir / f"server-{crash.id}-1.log"
        older.write_text("old\n")
        os.kill(crash_snap.pid, signal.SIGKILL)
        assert wait_for(lambda: services.supervisor.snapshot(crash.id).state
                        is ServerState.FAILED, 30)
        assert Path(crash_snap.log_path).exists() and not older.exists()
        services.close(keep_servers=True)
        assert Path(keep_snap.log_path).exists(), "a running server keeps its log at exit"
        assert Path(crash_snap.log_path).exists(), "the failed server's last log is kept"
        services = Services.create(settings)
        services.supervisor.stop(keep.id)
        assert not Path(keep_snap.log_path).exists()
    finally:
        services.close()


def test_signal_handlers_run_the_cleanup(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    code = textwrap.dedent(f"""
        import os, signal, time
        from pathlib import Path
        from manager.servers.process import install_exit_hooks
        install_exit_hooks(lambda: Path({str(marker)!r}).write_text("yes"))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert marker.read_text() == "yes"


def test_build_command_uses_an_argv_list_for_both_backends() -> None:
    text = Profile(id=1, name="t", model="m", backend=Backend.MLX_LM, host="0.0.0.0", port=9001,
                   max_tokens=64, temperature=0.2, top_p=0.9, thinking=False)
    argv = build_command(text, "/models/m", "py")
    assert argv[:6] == ["py", "-m", "mlx_lm", "server", "--model", "/models/m"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "9001"
    assert argv[argv.index("--temp") + 1] == "0.2"
    assert json.loads(argv[argv.index("--chat-template-args") + 1]) == {"enable_thinking": False}
    vision = Profile(id=2, name="v", model="m", backend=Backend.MLX_VLM, host="127.0.0.1",
                     port=9002, thinking=True)
    argv = build_command(vision, "/models/v", "py")
    assert argv[:3] == ["py", "-m", "mlx_vlm.server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and "--enable-thinking" in argv


def _spec(name: str, model: Path) -> object:
    from manager.servers.profiles import ProfileSpec

    return ProfileSpec(name=name, model=str(model), port=free_port())


def test_stop_during_start_and_a_second_stop(env: ServerEnv, tiny_models: dict[str, Path]
                                             ) -> None:
    profile = env.profile("stop early", tiny_models["text"])
    snap = env.supervisor.start(profile.id)
    pids = tree_pids(snap.pid)
    assert env.supervisor.snapshot(profile.id).state is ServerState.STARTING  # not ready yet
    assert env.supervisor.stop(profile.id).state is ServerState.STOPPED
    assert all_gone(pids)
    assert env.supervisor.snapshot(profile.id).state is ServerState.STOPPED
    with pytest.raises(Exception, match="not running"):
        env.supervisor.stop(profile.id)


def test_auto_start_profiles_start_with_the_dashboard(tmp_path: Path, hf_home: Path,
                                                      tiny_models: dict[str, Path]) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), warm_spare=False)
    setup = Services.create(settings, run_servers=False)
    from dataclasses import replace

    base = _spec("auto", tiny_models["text"])
    auto = setup.profiles.create(None, replace(base, auto_start=True))
    blocked = setup.profiles.create(None, replace(_spec("blocked", tiny_models["text"]),
                                                  auto_start=True))
    manual = setup.profiles.create(None, _spec("manual", tiny_models["text"]))
    setup.close()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", blocked.port))
        squatter.listen()
        services = Services.create(settings)
    try:
        assert services.supervisor.wait_ready(auto.id, 90).state is ServerState.READY
        failed = services.supervisor.snapshot(blocked.id)
        assert failed.state is ServerState.FAILED
        assert "Auto-start failed" in failed.reason and "already in use" in failed.reason
        assert services.supervisor.snapshot(manual.id) is None
    finally:
        services.close()


def test_ctrl_c_during_the_auto_starts_leaves_no_server_running(
        tmp_path: Path, hf_home: Path, tiny_models: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers run in their own sessions: started before a Ctrl-C that ends the
    dashboard's start-up, they would outlive it (nothing had installed the exit hooks)."""
    from dataclasses import replace

    from manager.servers.placement import Placement

    settings = Settings(data_dir=tmp_path / "data", port=free_port(), warm_spare=False)
    setup = Services.create(settings, run_servers=False)
    for name in ("first", "second"):
        setup.profiles.create(None, replace(_spec(name, tiny_models["text"]), auto_start=True))
    setup.close()
    started: list[int] = []
    real_start = Placement.start

    def start_then_ctrl_c(self: Placement, actor: object, profile_id: int, **kwargs: object
                          ) -> object:
        if started:  # the second auto-start: Ctrl-C arrives
            raise KeyboardInterrupt
        snap = real_start(self, actor, profile_id, **kwargs)  # type: ignore[arg-type]
        started.extend(tree_pids(snap.pid))
        return snap

    monkeypatch.setattr(Placement, "start", start_then_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            Services.create(settings)
        assert started and all_gone(started)
    finally:
        for pid in started:  # whatever the outcome, nothing is left for later tests
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

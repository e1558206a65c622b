"""The warm spare interpreter against real processes: a spare with mlx_lm imported takes
the next start and becomes that server (its own session, its log, stop, crash,
adoption), a replacement follows; off, starts spawn as before; a dead spare is
replaced; two starts at once both work; no spare outlives its dashboard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from manager.accounts.auth import Role, Status, User
from manager.errors import PermissionDenied
from manager.net import free_port
from manager.saved_settings import SavedSettings
from manager.servers.process import build_command
from manager.servers.profiles import Backend, Profile
from manager.servers.records import read_records
from manager.servers.spare import SparePool
from manager.servers.supervisor import ServerState, Supervisor
from manager.services import WARM_SPARE, Services
from manager.settings import SERVER_NICE, Settings
from tests.conftest import TEST_HASHER
from tests.server_helpers import (
    ServerEnv,
    all_gone,
    hf_home_env,
    lowered,
    lowered_group,
    server_env,
    thread_nices,
)
from tests.waits import wait_for

pytestmark = pytest.mark.slow

NEWS: list[int] = []  # the pool's "what the Servers tab shows changed"
WARM_S = 120.0  # importing mlx_lm on a busy 2-core machine
READY_S = 90.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    root = tmp_path_factory.mktemp("spare")
    with hf_home_env(root / "hf_home"):
        hub = root / "hf_home" / "hub"
        pool = SparePool(sys.executable, hub, root / "data" / "logs",
                         on_change=lambda: NEWS.append(1), nice_steps=SERVER_NICE)
        created = server_env(root / "data", spares=pool)
        pool.start({Backend.MLX_LM})
        yield created
        created.close()


@pytest.fixture(scope="module")
def pool(env: ServerEnv) -> SparePool:
    return env.supervisor.spares


@pytest.fixture(scope="module")
def profile(env: ServerEnv, tiny_models: dict[str, Path]) -> Profile:
    return env.profile("spare text", tiny_models["text"])


@pytest.fixture(autouse=True)
def nothing_left_running(env: ServerEnv) -> Iterator[None]:
    """A test that fails half-way leaves no server for the next ones to trip on."""
    yield
    for snap in env.supervisor.snapshots():
        if snap.state is not ServerState.STOPPED:
            env.supervisor.stop(snap.profile_id)


def person(uid: int, role: Role) -> User:
    return User(id=uid, email=f"{role.value}{uid}@example.com", role=role,
                status=Status.ACTIVE, token_version=0, created_at="", approved_at=None,
                last_login_at=None)


def spare_pid(pool: SparePool, not_: int | None = None) -> int:
    """The pid of the mlx_lm spare (warm or still importing), once it is not `not_`."""
    def found() -> int | None:
        pids = [v.pid for v in pool.views() if v.pid is not None and v.pid != not_]
        return pids[0] if pids else None

    return wait_for(found, WARM_S, "a spare interpreter")


def complete(port: int) -> dict:
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/completions",
                        json={"prompt": "Hello", "max_tokens": 2}, timeout=60)
    answer.raise_for_status()
    return answer.json()


def test_a_start_is_handed_to_the_spare_which_is_then_replaced(
        env: ServerEnv, pool: SparePool, profile: Profile, tiny_models: dict[str, Path]) -> None:
    spare = spare_pid(pool)
    env.supervisor.start(profile.id, by="alice@example.com")
    snap = env.supervisor.wait_ready(profile.id, READY_S)
    # The spare is the server: same pid, its own session and process group.
    assert snap.pid == spare
    assert os.getsid(spare) == spare and os.getpgid(spare) == spare
    assert complete(profile.port)["usage"]["completion_tokens"] >= 1
    # Below the dashboard's CPU priority, every thread the server started too.
    assert thread_nices(spare) == {lowered(SERVER_NICE)}
    assert wait_for(lambda: lowered_group(spare, SERVER_NICE), 30, "its session's group")
    # Its output goes to the server's log, under the usual first line.
    assert snap.log_path is not None
    text = Path(snap.log_path).read_text()
    argv = build_command(profile, str(tiny_models["text"]), sys.executable)
    assert text.startswith(f"# mlx-manager: {' '.join(argv)} (started by alice@example.com, "
                           "warm spare interpreter)\n")
    assert "Starting httpd at 127.0.0.1" in text
    # A new spare takes its place once the start settled; the Servers tab hears of it.
    news = len(NEWS)
    assert thread_nices(spare_pid(pool, not_=spare)) == {lowered(SERVER_NICE)}
    wait_for(lambda: len(NEWS) > news, WARM_S, "news of the new spare")

    # A dashboard started after this one adopts it: the record names the spare's own
    # command line (what the process is) and the server's argv (its model).
    (record,) = [r for r in read_records(env.store) if r.profile_id == profile.id]
    assert record.cmdline == tuple(psutil.Process(spare).cmdline())
    assert record.argv == tuple(argv)
    later = Supervisor(env.store, env.profiles, env.root / "logs",
                       hub_cache=Path(os.environ["HF_HOME"]) / "hub")
    later.adopt_or_reap()
    adopted = later.snapshot(profile.id)
    assert adopted is not None and adopted.state is ServerState.READY
    assert adopted.pid == spare and adopted.model_path == str(tiny_models["text"])
    later.close(keep_servers=True)
    # Stop ends it like any server.
    env.supervisor.stop(profile.id)
    assert all_gone([spare])


def test_a_spare_that_dies_is_replaced(pool: SparePool) -> None:
    spare = spare_pid(pool)
    os.kill(spare, signal.SIGKILL)
    spare_pid(pool, not_=spare)


def test_two_starts_at_once_both_work_and_a_crash_is_noticed(
        env: ServerEnv, pool: SparePool, profile: Profile, tiny_models: dict[str, Path]) -> None:
    other = env.profile("spare text 2", tiny_models["text"])
    spare = spare_pid(pool)
    threads = [threading.Thread(target=env.supervisor.start, args=(p.id,))
               for p in (profile, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snaps = [env.supervisor.wait_ready(p.id, READY_S) for p in (profile, other)]
    # One took the spare, the other was spawned the usual way; both answer.
    assert sorted(s.pid == spare for s in snaps) == [False, True]
    spawned = next(s for s in snaps if s.pid != spare)
    assert spawned.pid is not None
    assert psutil.Process(spawned.pid).cmdline()[1:4] == ["-m", "mlx_lm", "server"]
    for p in (profile, other):
        assert complete(p.port)["usage"]["completion_tokens"] >= 1

    # The one that was a spare crashes: noticed like any server's, with the signal.
    handed = next(s for s in snaps if s.pid == spare)
    os.kill(spare, signal.SIGKILL)

    def noticed() -> bool:
        env.supervisor.reconcile()  # the monitor's tick
        snap = env.supervisor.snapshot(handed.profile_id)
        return snap is not None and snap.state is ServerState.FAILED

    wait_for(noticed, 60, "the crash to be noticed")
    snap = env.supervisor.snapshot(handed.profile_id)
    assert snap is not None and "killed by SIGKILL" in snap.reason
    for p in (profile, other):
        env.supervisor.stop(p.id)  # dismisses the failed one
    env.profiles.delete(None, other.id)
    env.supervisor.forget(other.id)


def test_off_starts_the_normal_way_and_the_choice_is_saved(
        env: ServerEnv, pool: SparePool, profile: Profile, tiny_models: dict[str, Path]) -> None:
    spare = spare_pid(pool)
    admin, user = person(1, Role.ADMIN), person(2, Role.USER)
    with pytest.raises(PermissionDenied):
        pool.switch(user, False)
    saved: list[bool] = []
    pool._save = saved.append  # noqa: SLF001 - where Services would save it
    pool.switch(admin, False)
    assert all_gone([spare]) and pool.views() == [] and saved == [False]
    env.supervisor.start(profile.id)
    snap = env.supervisor.wait_ready(profile.id, READY_S)
    assert snap.pid is not None and snap.log_path is not None
    assert "warm spare" not in Path(snap.log_path).read_text()
    argv = build_command(profile, str(tiny_models["text"]), sys.executable)
    assert psutil.Process(snap.pid).cmdline() == argv
    assert thread_nices(snap.pid) == {lowered(SERVER_NICE)}  # spawned below us too
    env.supervisor.stop(profile.id)
    assert pool.views() == []  # no spare came back while off
    pool.switch(admin, True)
    assert saved == [False, True]
    spare_pid(pool)


def test_closing_the_services_ends_their_spare(tmp_path: Path,
                                               tiny_models: dict[str, Path]) -> None:
    from manager.servers.profiles import ProfileSpec

    settings = Settings(data_dir=tmp_path / "data", hf_cache_dir=tmp_path / "hub")
    setup = Services.create(settings, run_servers=False, hasher=TEST_HASHER)
    setup.profiles.create(None, ProfileSpec(name="t", model=str(tiny_models["text"]),
                                            port=free_port()))
    SavedSettings(setup.store).set_bool(WARM_SPARE, True)
    setup.close()
    services = Services.create(settings, hasher=TEST_HASHER)
    spares = services.supervisor.spares
    (view,) = spares.views()  # started for the profile's backend; no need to be warm
    assert view.pid is not None
    # The default: servers (and the spare that will be one) run below the dashboard.
    assert thread_nices(view.pid) == {lowered(SERVER_NICE)}
    assert services.supervisor.groups.nice_steps == SERVER_NICE
    services.close()
    assert all_gone([view.pid])


KILLED_DASHBOARD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from manager.servers.profiles import Backend
    from manager.servers.spare import SparePool
    pool = SparePool(sys.executable, Path(sys.argv[1]), Path(sys.argv[2]))
    pool.start({Backend.MLX_LM})
    print(pool.views()[0].pid, flush=True)
    sys.stdin.read()  # until the test kills this process
""")


def test_a_killed_dashboard_leaves_no_spare(tmp_path: Path) -> None:
    dashboard = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", KILLED_DASHBOARD, str(tmp_path / "hub"), str(tmp_path / "logs")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent)
    assert dashboard.stdout is not None
    spare = int(dashboard.stdout.readline())
    assert psutil.Process(spare).ppid() == dashboard.pid
    dashboard.kill()
    dashboard.wait()
    # The spare sees the end of its stdin, even halfway through its imports, and exits.
    wait_for(lambda: all_gone([spare]), WARM_S, "the orphaned spare to exit")

"""The one start policy: every start goes through Placement (rights, budget, single
flight), waits sleep on the supervisor's Condition, and the server states are a table.

The servers here are real processes that never become ready: a stand-in "python" that
sleeps whatever it is asked to run (a model server would only add load time)."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from manager.accounts.auth import User
from manager.errors import Conflict, PermissionDenied, ValidationError
from manager.net import free_port
from manager.servers.placement import InsufficientMemory, Placement
from manager.servers.profiles import Backend, Profile, ProfileSpec
from manager.servers.states import (
    ACTIVE_STATES,
    ALLOWED,
    FAILED_STATES,
    PLACED_STATES,
    ServerState,
    can_move,
)
from manager.servers.supervisor import (
    CancelEvent,
    ServerLoading,
    ServerSnapshot,
    Supervisor,
    Transition,
)
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, TEST_HASHER
from tests.server_helpers import all_gone

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class World:
    services: Services
    supervisor: Supervisor
    placement: Placement
    admin: User
    bob: User
    carol: User

    def profile(self, name: str, model: Path, owner: User | None) -> Profile:
        return self.services.profiles.create(owner, ProfileSpec(
            name=name, model=str(model), port=free_port()))


@pytest.fixture
def world(tmp_path: Path, tiny_models: dict[str, Path]) -> Iterator[World]:
    sleeper = tmp_path / "sleepy-python"
    sleeper.write_text("#!/bin/sh\nexec sleep 600\n")
    sleeper.chmod(0o755)
    settings = Settings(data_dir=tmp_path / "data", port=free_port(), warm_spare=False,
                        hf_cache_dir=tmp_path / "hf" / "hub")
    services = Services.create(settings, run_servers=False, hasher=TEST_HASHER)
    supervisor = Supervisor(services.store, services.profiles, settings.logs_dir,
                            hub_cache=settings.hub_cache, python=str(sleeper), stop_grace_s=5)
    auth = services.auth
    admin = auth.register("alice@example.com", PASSWORD)
    bob = auth.approve(admin, auth.register("bob@example.com", PASSWORD).id)
    carol = auth.approve(admin, auth.register("carol@example.com", PASSWORD).id)
    yield World(services, supervisor, Placement(supervisor, services.profiles), admin, bob,
                carol)
    supervisor.close(keep_servers=False)
    services.close()


def test_the_state_table_is_supervisord_shaped() -> None:
    assert ServerState.FATAL is ServerState.FAILED and ServerState.FATAL.value == "failed"
    assert ServerState("backoff") is ServerState.BACKOFF
    assert set(ALLOWED) == set(ServerState)
    assert FAILED_STATES == {ServerState.BACKOFF, ServerState.FAILED}
    assert not ACTIVE_STATES & FAILED_STATES
    assert PLACED_STATES == ACTIVE_STATES | {ServerState.BACKOFF}
    moves = {(old, new) for old in ServerState for new in ServerState if can_move(old, new)}
    assert (ServerState.STARTING, ServerState.BACKOFF) in moves
    assert (ServerState.BACKOFF, ServerState.STARTING) in moves  # the due restart
    assert (ServerState.BACKOFF, ServerState.STOPPED) in moves  # dismissed
    assert (ServerState.FAILED, ServerState.BACKOFF) not in moves  # gave up is final
    assert (ServerState.STOPPING, ServerState.STARTING) not in moves
    assert all(not can_move(ServerState.STOPPING, new) for new in ServerState
               if new is not ServerState.STOPPED)


def _calls_on_the_supervisor(path: Path) -> list[str]:
    """`<...>.supervisor.start/stop/restart/auto_start(...)` calls in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("start", "stop", "restart", "auto_start") \
                and isinstance(node.func.value, ast.Attribute) \
                and node.func.value.attr in ("supervisor", "_supervisor"):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.append(f"{where}:{node.lineno} {node.func.attr}")
    return found


def test_every_start_outside_the_servers_package_goes_through_placement(tmp_path: Path
                                                                        ) -> None:
    sources = [ROOT / "app.py", *sorted((ROOT / "components").rglob("*.py")),
               *sorted((ROOT / "manager").rglob("*.py"))]
    offenders = [hit for path in sources if path.parent != ROOT / "manager" / "servers"
                 for hit in _calls_on_the_supervisor(path)]
    assert offenders == []
    # The detector does see such calls.
    sample = tmp_path / "sample.py"
    sample.write_text("services.supervisor.start(1)\nself._supervisor.stop(2)\n"
                      "services.placement.start(None, 1)\n")
    assert [hit.split()[-1] for hit in _calls_on_the_supervisor(sample)] == ["start", "stop"]


def test_concurrent_starts_share_one_spawn(world: World, tiny_models: dict[str, Path]
                                           ) -> None:
    profile = world.profile("shared", tiny_models["text"], world.bob)
    starts: list[Transition] = []
    world.supervisor.subscribe(
        lambda change: starts.append(change) if change.new is ServerState.STARTING else None)
    barrier = threading.Barrier(6)
    results: list[bool] = []

    def request() -> None:
        barrier.wait()
        results.append(world.placement.ensure_started(world.carol, profile, by="gateway"))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [False] * 5 + [True]
    assert [(c.profile.id, c.old) for c in starts] == [(profile.id, ServerState.STOPPED)]
    assert world.placement.stats()[profile.id].starts == 1
    # An explicit start of a server that is already starting is refused, not repeated.
    with pytest.raises(Conflict, match="already starting"):
        world.placement.start(world.bob, profile.id)
    assert len(starts) == 1


def test_a_start_beyond_the_budget_is_refused_before_anything_runs(
        world: World, tiny_models: dict[str, Path]) -> None:
    profile = world.profile("too big", tiny_models["text"], world.bob)
    need = world.placement.need_bytes(profile)
    assert need is not None and need > 0
    world.placement.set_budget(need - 1)
    with pytest.raises(InsufficientMemory, match="more than the whole budget"):
        world.placement.start(world.bob, profile.id)
    assert world.supervisor.snapshot(profile.id) is None
    # Auto-start goes through the same policy and shows why it did not start.
    world.services.profiles.update(None, profile.id, replace(profile.spec(), auto_start=True))
    assert world.placement.auto_start() == []
    snap = world.supervisor.snapshot(profile.id)
    assert snap.state is ServerState.FAILED and "Auto-start failed" in snap.reason
    world.placement.set_budget(None)
    assert world.placement.start(world.bob, profile.id).state is ServerState.STARTING


def test_waits_wake_on_a_transition_and_on_cancel(world: World,
                                                  tiny_models: dict[str, Path]) -> None:
    profile = world.profile("waited", tiny_models["text"], world.bob)
    pid = world.placement.start(world.bob, profile.id).pid
    outcome: dict[str, object] = {}
    cancel = CancelEvent()

    def wait_ready() -> None:
        try:
            world.placement.wait_ready(profile.id, 600, cancel)
        except ServerLoading as exc:
            outcome["ready"] = exc.message

    def wait_stopped() -> None:
        outcome["stopped"] = world.supervisor.wait_for(
            profile.id, lambda s: s is not None and s.state is ServerState.STOPPED, 600)

    waiters = [threading.Thread(target=wait_ready), threading.Thread(target=wait_stopped)]
    for waiter in waiters:
        waiter.start()
    # Nothing else would end the first wait for ten minutes: the cancel wakes it.
    cancel.set()
    waiters[0].join(60)
    assert not waiters[0].is_alive() and "still loading" in str(outcome["ready"])
    assert waiters[1].is_alive()  # the server still starts
    world.placement.stop(world.bob, profile.id)
    waiters[1].join(60)
    assert not waiters[1].is_alive()
    stopped = outcome["stopped"]
    assert isinstance(stopped, ServerSnapshot) and stopped.state is ServerState.STOPPED
    assert all_gone([pid])


def test_a_request_while_a_restart_stops_the_server_gets_the_restarted_run(
        world: World, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """A gateway request that arrived while Restart stopped the old run started the
    server itself: Restart then failed ("already starting") and the new run counted as
    on demand (evictable)."""
    stubborn = tmp_path / "stubborn-python"  # ignores SIGTERM: its stop takes the 5 s grace
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\nexec sleep 600\n")
    stubborn.chmod(0o755)
    supervisor = Supervisor(world.services.store, world.services.profiles,
                            world.services.settings.logs_dir,
                            hub_cache=world.services.settings.hub_cache,
                            python=str(stubborn), stop_grace_s=5)
    placement = Placement(supervisor, world.services.profiles)
    profile = world.profile("restarted", tiny_models["text"], world.carol)
    try:
        first = placement.start(world.carol, profile.id)
        outcome: list[object] = []

        def restart() -> None:
            try:
                outcome.append(placement.restart(world.carol, profile.id))
            except Conflict as exc:
                outcome.append(exc)

        restarting = threading.Thread(target=restart)
        restarting.start()
        stopping = supervisor.wait_for(
            profile.id, lambda s: s is not None and s.state is ServerState.STOPPING, 60)
        assert stopping is not None and stopping.state is ServerState.STOPPING
        started_here = placement.ensure_started(world.bob, profile, by="gateway")
        restarting.join(60)
        assert not restarting.is_alive()
        [restarted] = outcome
        assert isinstance(restarted, ServerSnapshot), restarted
        assert restarted.state is ServerState.STARTING and restarted.pid != first.pid
        assert started_here is False  # the request uses the restarted run
        now = supervisor.snapshot(profile.id)
        assert now.pid == restarted.pid and not placement.started_on_demand(now)
        assert all_gone([first.pid])
    finally:
        supervisor.close(keep_servers=False)


def test_a_restart_whose_model_is_gone_leaves_the_running_server_be(
        world: World, tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    """Restart stopped the server that answered, then could not start it again."""
    model = tmp_path / "moved-away"
    model.mkdir()
    for part in tiny_models["text"].iterdir():
        (model / part.name).symlink_to(part)
    profile = world.profile("moving", model, world.carol)
    running = world.placement.start(world.carol, profile.id)
    model.rename(tmp_path / "elsewhere")
    with pytest.raises(ValidationError, match="No model folder"):
        world.placement.restart(world.carol, profile.id)
    now = world.supervisor.snapshot(profile.id)
    assert now.state is ServerState.STARTING and now.pid == running.pid


def test_only_owners_and_admins_stop_or_restart_a_server(world: World,
                                                         tiny_models: dict[str, Path]
                                                         ) -> None:
    profile = world.profile("carol's", tiny_models["text"], world.carol)
    world.placement.start(world.carol, profile.id)
    with pytest.raises(PermissionDenied, match="owner or an administrator may stop"):
        world.placement.stop(world.bob, profile.id)
    with pytest.raises(PermissionDenied, match="may restart"):
        world.placement.restart(world.bob, profile.id)
    with pytest.raises(PermissionDenied):
        world.supervisor.stop(profile.id, actor=world.bob)
    assert world.supervisor.snapshot(profile.id).state is ServerState.STARTING
    assert world.placement.restart(world.carol, profile.id).state is ServerState.STARTING
    assert world.placement.stop(world.admin, profile.id).state is ServerState.STOPPED
    # Whoever started a run may stop it too (bob starts carol's profile).
    world.placement.start(world.bob, profile.id)
    assert world.placement.stop(world.bob, profile.id).state is ServerState.STOPPED


def test_a_tile_shows_backoff_and_only_allowed_actions() -> None:
    from components.views import server_tile_html

    profile = Profile(id=7, name="flaky", model="m", backend=Backend.MLX_LM,
                      host="127.0.0.1", port=9001)
    snap = ServerSnapshot(profile=profile, state=ServerState.BACKOFF, state_since=0.0,
                          model_path="", reason="The server exited with exit code 1. "
                          "Restarting in 4 s.", failure_tail="Traceback: boom",
                          restart_at=104.0)
    tile = server_tile_html(snap, None, None, "", 100.0)
    assert "Restarting in 4" in tile and "Traceback: boom" in tile
    assert "data-action='restart'" in tile and "data-action='stop'" in tile  # Dismiss
    bare = server_tile_html(snap, None, None, "", 100.0, can_control=False)
    assert "data-action=" not in bare and "Traceback: boom" in bare


def test_a_server_backing_off_when_the_dashboard_stopped_restarts_after_it_starts(
        world: World, tiny_models: dict[str, Path]) -> None:
    flaky = world.services.profiles.create(None, ProfileSpec(
        name="flaky", model=str(tiny_models["text"]), port=free_port(), auto_restart=True))
    plain = world.profile("plain", tiny_models["text"], world.bob)
    with world.services.store.connect() as db:
        for profile_id in (flaky.id, plain.id):
            db.execute("INSERT INTO servers (profile_id, state, reason, updated_at) "
                       "VALUES (?, 'backoff', 'The server exited. Restarting in 2 s.', 'x')",
                       [profile_id])
    world.supervisor.adopt_or_reap()
    assert world.supervisor.snapshot(flaky.id).state is ServerState.BACKOFF
    # A profile that no longer asks for restarts is failed for good instead.
    assert world.supervisor.snapshot(plain.id).state is ServerState.FAILED
    assert world.supervisor.reconcile()  # the restart was due: it starts now
    assert world.supervisor.snapshot(flaky.id).state is ServerState.STARTING


def test_a_legacy_network_profile_without_a_server_key_never_starts(
        world: World, tiny_models: dict[str, Path]) -> None:
    # Saved before network binds needed a key: mlx_lm on 0.0.0.0, no server key.
    profile = world.profile("legacy lan", tiny_models["text"], world.bob)
    with world.services.store.connect() as db:
        db.execute("UPDATE profiles SET host = '0.0.0.0' WHERE id = ?", [profile.id])
    legacy = world.services.profiles.get(profile.id)
    assert legacy.host == "0.0.0.0" and legacy.server_key is None
    with pytest.raises(ValidationError, match="no API key, so anyone on the network") as info:
        world.placement.start(world.admin, profile.id)
    assert info.value.field == "host"
    assert world.supervisor.snapshot(profile.id) is None or \
        world.supervisor.snapshot(profile.id).state is not ServerState.STARTING


def test_keep_alive_is_heard_for_servers_the_gateway_loaded_or_the_caller_may_stop(
        world: World, tiny_models: dict[str, Path]) -> None:
    from tests.waits import wait_for

    placement, supervisor = world.placement, world.supervisor
    on_demand = world.profile("on-demand", tiny_models["text"], world.carol)
    assert placement.keep_alive(world.bob, on_demand.id, 0)  # not running: unloaded already
    placement.ensure_started(world.bob, on_demand, by="gateway")
    assert placement.keep_alive(world.bob, on_demand.id, 300.0)
    assert supervisor.idle_limit(on_demand.id) == 300.0
    assert placement.keep_alive(world.bob, on_demand.id, -1.0)
    assert supervisor.idle_limit(on_demand.id) is None  # never idle-stopped
    # keep_alive 0 while another request uses the server: it stays.
    with placement.lease(on_demand.id):
        assert not placement.keep_alive(world.bob, on_demand.id, 0)
    assert supervisor.snapshot(on_demand.id).state is ServerState.STARTING
    assert placement.keep_alive(world.bob, on_demand.id, 0)
    assert wait_for(lambda: supervisor.snapshot(on_demand.id).state is ServerState.STOPPED, 30)
    assert "keep_alive 0 (bob@example.com)" in supervisor.snapshot(on_demand.id).reason
    # The next run starts with the profile's idle timeout again (none here).
    placement.ensure_started(world.bob, on_demand, by="gateway")
    assert supervisor.idle_limit(on_demand.id) is None
    placement.stop(world.admin, on_demand.id)

    # Started by hand: only someone who may stop it is heard.
    by_hand = world.profile("by-hand", tiny_models["text"], world.carol)
    placement.start(world.carol, by_hand.id)
    assert not placement.keep_alive(world.bob, by_hand.id, 60.0)
    assert not placement.keep_alive(world.bob, by_hand.id, 0)
    assert supervisor.idle_limit(by_hand.id) is None
    assert supervisor.snapshot(by_hand.id).state is ServerState.STARTING
    assert placement.keep_alive(world.carol, by_hand.id, 0)
    assert wait_for(lambda: supervisor.snapshot(by_hand.id).state is ServerState.STOPPED, 30)

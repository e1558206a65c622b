"""Distributed profiles against real processes: two `mlx_lm server` ranks on 127.0.0.1
joined by MLX's ring backend, started, failed and stopped by the supervisor."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from components.group_view import rank_group_html
from manager.net import free_port, port_is_free
from manager.servers.distributed.group import GroupLauncher
from manager.servers.distributed.hostfile import HOSTFILE_ENV, RANK_ENV
from manager.servers.distributed.remote import SshRanks, find_marker
from manager.servers.distributed.spec import DistributedSpec, parse_hosts
from manager.servers.distributed.ssh import SshOptions
from manager.servers.inference import InferenceClient, MetricsStore
from manager.servers.profiles import Profile
from manager.servers.states import FAILED_STATES, ServerState
from tests.fixtures.sshd import SshServer
from tests.server_helpers import (
    ServerEnv,
    exited,
    hf_home_env,
    lowered,
    server_env,
    thread_nices,
)
from tests.waits import wait_for

pytestmark = pytest.mark.slow
RANK_NICE = 4  # local ranks' steps below the dashboard's CPU priority

# With logprobs: the random tiny model's text alone could match by luck; the tokens and
# their log-probabilities show that the sharded layers compute what one process does.
QUESTION = {"messages": [{"role": "user", "content": "Say something about rivers."}],
            "max_tokens": 8, "temperature": 0.0, "seed": 7, "logprobs": True,
            "top_logprobs": 3}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    root = tmp_path_factory.mktemp("distributed")
    with hf_home_env(root / "hf_home"):
        created = server_env(root / "data", groups=GroupLauncher(root / "data" / "logs",
                                                                  nice_steps=RANK_NICE))
        yield created
        created.close()


def two_ranks() -> DistributedSpec:
    base = free_port()
    return DistributedSpec.checked(parse_hosts("local 127.0.0.1\nlocal 127.0.0.1"),
                                   "ring", "tensor", base)


@pytest.fixture(scope="module")
def group_profile(env: ServerEnv, tiny_models: dict[str, Path]) -> Profile:
    return env.profile("tiny across two", tiny_models["text"], distributed=two_ranks(),
                       auto_restart=True)


def rank_pids(env: ServerEnv, profile: Profile) -> list[int]:
    group = env.supervisor.groups.group(profile.id)
    assert group is not None
    return [view.pid for view in group.views()]


def leftovers(pids: list[int]) -> list[psutil.Process]:
    """Any live process that is one of `pids` or in one of their process groups."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.pid in pids or os.getpgid(proc.pid) in pids:
                found.append(proc)
        except ProcessLookupError:
            continue
    return found


def ask(base_url: str) -> tuple[str, list[tuple[int, float]]]:
    """The answer's text and, per token, (token id, its log-probability)."""
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=QUESTION, timeout=60).json()
    choice = answer["choices"][0]
    steps = [(t["id"], t["logprob"]) for t in choice["logprobs"]["content"]]
    return str(choice["message"]["content"]), steps


def test_two_ranks_answer_like_one_process(env: ServerEnv, group_profile: Profile,
                                           tiny_models: dict[str, Path]) -> None:
    single = env.profile("tiny alone", tiny_models["text"])
    # The gateway's start on demand (placement, the one start policy), then its client.
    assert env.placement.ensure_started(None, group_profile, by="a gateway request")
    env.placement.start(None, single.id)
    client = InferenceClient(env.supervisor, MetricsStore())
    try:
        answer = client.chat(group_profile.id, {"messages": QUESTION["messages"],
                                                "max_tokens": 4}, wait_s=120)
    finally:
        client.close()
    assert answer.usage is not None and answer.usage.completion_tokens >= 1
    alone = env.supervisor.wait_ready(single.id, 120)
    group = env.supervisor.wait_ready(group_profile.id, 120)
    assert "1-token completion" in group.reason
    text, steps = ask(alone.base_url)
    env.supervisor.stop(single.id)
    group_text, group_steps = ask(group.base_url)
    assert group_text == text and len(steps) == 8
    assert [i for i, _ in group_steps] == [i for i, _ in steps]
    # float32 sums split over two ranks round differently in the last bits only
    assert [p for _, p in group_steps] == pytest.approx([p for _, p in steps], abs=1e-3)
    views = env.supervisor.groups.group(group_profile.id).views()  # type: ignore[union-attr]
    assert [(v.rank, v.state) for v in views] == [(0, "running"), (1, "running")]
    for view in views:
        proc = psutil.Process(view.pid)
        assert os.getpgid(proc.pid) == proc.pid, "each rank leads its own process group"
        assert thread_nices(proc.pid) == {lowered(RANK_NICE)}, "below the dashboard's CPU"
        environ = proc.environ()
        assert environ[RANK_ENV] == str(view.rank)
        assert Path(environ[HOSTFILE_ENV]).exists()
    assert views[0].pid == group.pid
    # The Servers tile: rank states, link backend, each rank's and host's memory and CPU.
    running = env.supervisor.groups.group(group_profile.id)
    assert running is not None
    env.monitor.tick()  # the one sampler: local ranks now, hosts in the background
    env.monitor.tick()
    assert wait_for(lambda: all(s is not None for s in running.host_samples()), 30)
    tile = rank_group_html(group_profile.distributed, running.views(),  # type: ignore[arg-type]
                           running.host_samples())
    assert tile.count("data-rank-state='running'") == 2 and "ring link" in tile
    assert tile.count(" of ") == 2, "each host's memory: used of total"
    assert "n/a" not in tile.split("<tr data-rank='0'>")[1].split("</tr>")[0]


def test_kill_9_of_rank_1_fails_the_group_within_one_tick(env: ServerEnv,
                                                          group_profile: Profile) -> None:
    snap = env.supervisor.snapshot(group_profile.id)
    assert snap is not None and snap.state is ServerState.READY
    pids = rank_pids(env, group_profile)
    os.kill(pids[1], signal.SIGKILL)
    assert wait_for(lambda: exited(pids[1]), 30)
    env.monitor.tick()
    snap = env.supervisor.snapshot(group_profile.id)
    assert snap.state in FAILED_STATES  # BACKOFF: the profile restarts after a crash
    assert "Rank 1 on this machine (127.0.0.1:" in snap.reason and "SIGKILL" in snap.reason
    assert "The last lines of its log" in snap.failure_tail
    assert leftovers(pids) == [], "no rank and nothing in a rank's process group survives"
    # Auto-restart applies to the group.
    env.clock.advance(120)
    env.monitor.tick()
    again = env.supervisor.wait_ready(group_profile.id, 120)
    assert again.state is ServerState.READY and again.pid not in pids


def test_stop_leaves_nothing_behind(env: ServerEnv, group_profile: Profile) -> None:
    spec = group_profile.distributed
    assert spec is not None
    snap = env.supervisor.wait_ready(group_profile.id, 120)
    pids = rank_pids(env, group_profile)
    hostfile = Path(psutil.Process(pids[0]).environ()[HOSTFILE_ENV])
    stopped = env.supervisor.stop(group_profile.id)
    assert stopped.state is ServerState.STOPPED
    assert leftovers(pids) == []
    assert port_is_free("127.0.0.1", snap.profile.port)
    assert all(port_is_free("127.0.0.1", spec.base_port + rank) for rank in range(spec.size))
    assert not hostfile.exists()


def test_ranks_left_by_an_earlier_dashboard_are_ended_not_adopted(
        env: ServerEnv, group_profile: Profile) -> None:
    env.supervisor.start(group_profile.id)
    env.supervisor.wait_ready(group_profile.id, 120)
    pids = rank_pids(env, group_profile)
    env.supervisor.close(keep_servers=True)  # Ctrl-C that keeps the servers
    assert all(psutil.pid_exists(pid) for pid in pids)
    later = server_env(env.root)  # the next dashboard on the same data dir
    try:
        snap = later.supervisor.snapshot(group_profile.id)
        assert snap is not None and snap.state is ServerState.STOPPED
        assert "left by the last dashboard were stopped" in snap.reason
        assert leftovers(pids) == []
        assert list((env.root / "logs").glob("*.group.json")) == []
    finally:
        later.close()


def test_rank_1_through_a_real_sshd_runs_fails_and_stops_with_the_group(
        tmp_path: Path, sshd: SshServer, tiny_models: dict[str, Path]) -> None:
    """Rank 1 goes through ssh (to 127.0.0.1): its process group on "that host" is what
    the group stops, and its death fails the group naming the ssh target."""
    hosts = parse_hosts(f"local 127.0.0.1\n{sshd.alias} 127.0.0.1 - python={sys.executable}")
    spec = DistributedSpec.checked(hosts, "ring", "tensor", free_port())
    with hf_home_env(tmp_path / "hf_home"):
        launcher = GroupLauncher(tmp_path / "data" / "logs",
                                 remote=SshRanks(SshOptions(config=sshd.client_config)))
        env = server_env(tmp_path / "data", groups=launcher)
        try:
            profile = env.profile("over ssh", tiny_models["text"], distributed=spec)
            env.supervisor.start(profile.id)
            snap = env.supervisor.wait_ready(profile.id, 120)
            group = launcher.group(profile.id)
            assert group is not None
            rank1 = group.views()[1]
            assert rank1.host == sshd.alias and rank1.state == "running"
            marker = find_marker(Path(rank1.log_path))
            assert marker is not None and marker.pid == marker.pgid
            remote = psutil.Process(marker.pid)  # "the remote host" is this machine
            assert remote.environ()[RANK_ENV] == "1"
            assert "mlx_lm" in remote.cmdline()
            assert len(launcher.running_rank_ids()) == 2
            env.monitor.tick()  # rank 1's host is sampled over the same ssh
            remote_host = wait_for(lambda: group.host_samples()[1], 60)
            assert remote_host.error is None and remote_host.memory_total
            ask(snap.base_url)
            env.supervisor.stop(profile.id)
            assert leftovers([marker.pgid, snap.pid]) == []
            assert not Path(marker.directory).exists(), "the rank's dir on its host is gone"
            # Started again, the remote rank's death fails the group within one tick.
            env.supervisor.start(profile.id)
            snap = env.supervisor.wait_ready(profile.id, 120)
            group = launcher.group(profile.id)
            assert group is not None
            marker = find_marker(Path(group.views()[1].log_path))
            assert marker is not None
            os.killpg(marker.pgid, signal.SIGKILL)
            ssh_client = group.views()[1].pid
            assert wait_for(lambda: exited(ssh_client), 30), "ssh ends with the remote rank"
            env.monitor.tick()
            failed = env.supervisor.snapshot(profile.id)
            assert failed.state is ServerState.FAILED
            assert f"Rank 1 on {sshd.alias} (127.0.0.1:" in failed.reason
            group.settle()
            assert leftovers([marker.pgid, snap.pid]) == []
            # Rank 0 dies: the remote rank is ended over ssh although the failed server's
            # other logs (rank 1's, with its marker) are deleted at once.
            env.supervisor.start(profile.id)
            snap = env.supervisor.wait_ready(profile.id, 120)
            group = launcher.group(profile.id)
            assert group is not None
            rank1_log = Path(group.views()[1].log_path)
            marker = find_marker(rank1_log)
            assert marker is not None
            os.kill(snap.pid, signal.SIGKILL)
            assert wait_for(lambda: exited(snap.pid), 30)
            env.monitor.tick()
            failed = env.supervisor.snapshot(profile.id)
            assert failed.state is ServerState.FAILED
            assert "Rank 0 on this machine" in failed.reason and not rank1_log.exists()
            group.settle()
            assert leftovers([marker.pgid, snap.pid]) == []
            assert not Path(marker.directory).exists()
        finally:
            env.close()


def test_a_host_ssh_cannot_reach_fails_the_group_saying_what_to_do(
        tmp_path: Path, sshd: SshServer, tiny_models: dict[str, Path]) -> None:
    hosts = parse_hosts(f"local 127.0.0.1\n{sshd.alias_refused} 127.0.0.1 - "
                        f"python={sys.executable}")
    spec = DistributedSpec.checked(hosts, "ring", "tensor", free_port())
    with hf_home_env(tmp_path / "hf_home"):
        launcher = GroupLauncher(tmp_path / "data" / "logs",
                                 remote=SshRanks(SshOptions(config=sshd.client_config)))
        env = server_env(tmp_path / "data", groups=launcher)
        try:
            profile = env.profile("unreachable", tiny_models["text"], distributed=spec)
            snap = env.supervisor.start(profile.id)
            # The start's readiness watch sees the group end (ssh exits at once).
            assert wait_for(lambda: env.supervisor.snapshot(profile.id).state
                            is ServerState.FAILED, 60)
            failed = env.supervisor.snapshot(profile.id)
            assert failed.reason.startswith("Rank 1 could not start: ")
            assert "connection refused" in failed.reason and "Remote Login" in failed.reason
            assert leftovers([snap.pid]) == []
        finally:
            env.close()

"""ssh to the hosts of a distributed profile, through a real sshd on loopback
(tests/fixtures/sshd.py): remote commands, each failure's own message, a remote rank
spawned in its own process group and stopped with nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from manager.errors import ManagerError
from manager.servers.distributed import ssh
from manager.servers.distributed.hostfile import RankLaunch
from manager.servers.distributed.remote import SshRanks, find_marker
from manager.servers.distributed.sampling import HostSampler
from manager.servers.distributed.spec import DistributedSpec, RankHost
from manager.settings import Settings
from tests.conftest import Clock
from tests.fixtures.sshd import SshServer
from tests.waits import wait_for


@pytest.fixture(scope="module")
def options(sshd: SshServer) -> Iterator[ssh.SshOptions]:
    # A ranks dir of this module's own (under the ssh user's home, this machine's): ranks
    # other tests spawn are not "stale" here; removed after.
    ranks_dir = f".mlx-manager/test-ranks-{uuid.uuid4().hex[:8]}"
    yield ssh.SshOptions(config=sshd.client_config, ranks_dir=ranks_dir)
    shutil.rmtree(Path.home() / ranks_dir, ignore_errors=True)


def test_ssh_argv_is_non_interactive_and_uses_the_configured_file(tmp_path: Path) -> None:
    argv = ssh.ssh_argv("mac2", "true", ssh.SshOptions(config=tmp_path / "cfg"))
    assert argv[:3] == ["ssh", "-F", str(tmp_path / "cfg")]
    assert "BatchMode=yes" in argv and argv[-3:] == ["--", "mac2", "true"]
    assert "-F" not in ssh.ssh_argv("mac2", "true", ssh.SshOptions())
    for bad in ("", "-oProxyCommand=x", "two words"):
        with pytest.raises(ManagerError, match="not an ssh target"):
            ssh.ssh_argv(bad, "true", ssh.SshOptions())


def test_the_ssh_config_setting_comes_from_env_and_flag(tmp_path: Path) -> None:
    from manager.cli.main import build_parser, settings_from_args

    env = {"MLX_MANAGER_SSH_CONFIG": str(tmp_path / "env_cfg")}
    assert Settings.from_env(env).ssh_config == tmp_path / "env_cfg"
    assert Settings.from_env({}).ssh_config is None
    args = build_parser().parse_args(["--ssh-config", str(tmp_path / "flag_cfg")])
    assert settings_from_args(args).ssh_config == tmp_path / "flag_cfg"
    options = ssh.SshOptions.from_settings(settings_from_args(args))
    assert options.config == tmp_path / "flag_cfg"
    # Each dashboard (data dir) keeps its remote ranks apart from another's.
    other = ssh.SshOptions.from_settings(Settings(data_dir=tmp_path / "other"))
    assert options.ranks_dir.startswith(ssh.RANKS_DIR + "/")
    assert other.ranks_dir != options.ranks_dir


def test_a_remote_command_runs_through_sshd(sshd: SshServer, options: ssh.SshOptions) -> None:
    done = ssh.run_remote(sshd.alias, "echo $((6 * 7)); cat; exit 3", options,
                          input_text="piped")
    # The command's own exit code is returned, not mistaken for a failure of ssh.
    assert (done.returncode, done.stdout) == (3, "42\npiped")


@pytest.mark.parametrize(("which", "kind", "advice"), [
    ("alias_refused", "refused", "Remote Login"),
    ("alias_bad_key", "auth", "ssh-copy-id"),
    ("alias_unknown_host", "host_key", "accept the key"),
])
def test_each_ssh_failure_says_what_to_do(sshd: SshServer, options: ssh.SshOptions,
                                          which: str, kind: str, advice: str) -> None:
    target = getattr(sshd, which)
    with pytest.raises(ssh.SshError) as caught:
        ssh.run_remote(target, "true", options)
    assert caught.value.kind == kind and caught.value.target == target
    assert advice in caught.value.message and target in caught.value.message


def test_an_unknown_host_name_is_unreachable(options: ssh.SshOptions) -> None:
    with pytest.raises(ssh.SshError) as caught:
        ssh.run_remote("no-such-host.invalid", "true", options)
    assert caught.value.kind == "unreachable" and "host name is unknown" in caught.value.message


def test_ssh_messages_for_what_loopback_cannot_show() -> None:
    timed_out = ssh.explain_failure("mac2", "ssh: connect to host 10.9.9.9 port 22: "
                                    "Connection timed out")
    changed = ssh.explain_failure("mac2", "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS "
                                  "CHANGED! @@@\nHost key verification failed.")
    assert (timed_out.kind, changed.kind) == ("unreachable", "host_key")
    assert "ssh-keygen -R" in changed.message and "same network" in timed_out.message


def test_a_remote_rank_runs_in_its_own_group_and_stops_leaving_nothing(
        sshd: SshServer, options: ssh.SshOptions, tmp_path: Path) -> None:
    program = ("import json, os, subprocess, sys, time\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
               "print(json.dumps({'rank': os.environ['MLX_RANK'], 'child': child.pid,\n"
               "                  'hostfile': json.load(open(os.environ['MLX_HOSTFILE']))}),\n"
               "      flush=True)\n"
               "time.sleep(600)\n")
    hostfile = json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"]])
    spec = DistributedSpec.checked([RankHost("local", "127.0.0.1:5000"),
                                    RankHost(sshd.alias, "127.0.0.1:5001")])
    launch = RankLaunch(rank=1, host=spec.hosts[1], argv=(sys.executable, "-c", program),
                        env={"MLX_RANK": "1", "MLX_MANAGER_GROUP": "g o"},
                        files={"MLX_HOSTFILE": hostfile})
    ranks = SshRanks(options)
    log_path = tmp_path / "rank1.log"
    with log_path.open("wb") as out:  # the rank's log, as the group writes it
        local = subprocess.Popen(ranks.argv(launch, "test-group-r1"), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        started = wait_for(lambda: _json_line(log_path), what="the rank's first output")
        rank = find_marker(log_path)
        assert rank is not None and rank.pid == rank.pgid
        assert started["rank"] == "1" and started["hostfile"] == json.loads(hostfile)
        group = [psutil.Process(rank.pid), psutil.Process(started["child"])]
        assert {_pgid(p.pid) for p in group} == {rank.pgid}
        assert Path(rank.directory, "pid").read_text().strip() == str(rank.pid)
        assert ranks.stop(launch, rank, 10.0)
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                 for p in group), what="the rank's process group to end")
        assert not Path(rank.directory).exists()
        local.wait(timeout=30)  # the session ends with its command
    finally:
        local.kill()
        local.wait()


def test_a_rank_stopped_before_its_marker_arrived_is_ended_by_its_pid_file(
        sshd: SshServer, options: ssh.SshOptions, tmp_path: Path) -> None:
    """A stop in a remote rank's first moments: the ssh client is ended (as the group
    does) with the marker unread, and the rank on the host is still ended."""
    program = ("import os, subprocess, sys, time\n"
               "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
               "print('child', child.pid, flush=True)\n"
               "time.sleep(600)\n")
    spec = DistributedSpec.checked([RankHost("local", "127.0.0.1:5000"),
                                    RankHost(sshd.alias, "127.0.0.1:5001")])
    launch = RankLaunch(rank=1, host=spec.hosts[1], argv=(sys.executable, "-c", program),
                        env={"MLX_RANK": "1"}, files={})
    ranks = SshRanks(options)
    log_path = tmp_path / "rank1.log"
    with log_path.open("wb") as out:
        local = subprocess.Popen(ranks.argv(launch, "test-early-r1"), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        child = wait_for(lambda: _child_pid(log_path), what="the rank's first output")
        rank = find_marker(log_path)
        assert rank is not None
        group = [psutil.Process(rank.pid), psutil.Process(child)]
        local.kill()  # the ssh client is gone; nothing read the marker
        local.wait(timeout=30)
        assert any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in group)
        assert ranks.stop_unlocated(launch, "test-early-r1", 10.0)
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                 for p in group), what="the rank's process group to end")
        assert not Path(rank.directory).exists()
        assert not (Path(rank.directory).parent / "test-early-r1.stop").exists()
        # A rank that never started there (no pid file) is nothing to stop.
        assert ranks.stop_unlocated(launch, "test-never-r1", 5.0)
    finally:
        local.kill()
        local.wait()


def test_a_rank_whose_shell_comes_after_its_stop_never_starts(
        sshd: SshServer, options: ssh.SshOptions, tmp_path: Path) -> None:
    """The stop ran before the rank's shell wrote its pid (ssh still connecting): the shell
    that arrives later finds the stop's note and ends without starting the rank."""
    spec = DistributedSpec.checked([RankHost("local", "127.0.0.1:5000"),
                                    RankHost(sshd.alias, "127.0.0.1:5001")])
    launch = RankLaunch(rank=1, host=spec.hosts[1],
                        argv=(sys.executable, "-c", "print('rank ran', flush=True)"),
                        env={"MLX_RANK": "1"}, files={})
    ranks = SshRanks(options)
    assert ranks.stop_unlocated(launch, "test-late-r1", 5.0)  # nothing there yet
    log_path = tmp_path / "rank1.log"
    with log_path.open("wb") as out:
        late = subprocess.run(ranks.argv(launch, "test-late-r1"), stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=60)
    said = log_path.read_text(errors="replace")
    assert late.returncode != 0 and "rank ran" not in said, said
    assert find_marker(log_path) is None
    # Neither the rank's dir nor the note is left on the host.
    ranks_dir = Path.home() / options.ranks_dir
    assert not (ranks_dir / "test-late-r1").exists()
    assert not (ranks_dir / "test-late-r1.stop").exists()


def _child_pid(path: Path) -> int | None:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("child "):
            return int(line.split()[1])
    return None

def _json_line(path: Path) -> dict[str, object] | None:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            return dict(json.loads(line))
    return None


def test_hosts_are_sampled_through_ssh_in_the_background_on_a_cadence(
        sshd: SshServer, options: ssh.SshOptions, clock: Clock) -> None:
    hosts = [(RankHost("local", "127.0.0.1"), sys.executable),
             (RankHost(sshd.alias, "127.0.0.1"), sys.executable),
             (RankHost(sshd.alias_refused, "127.0.0.1"), sys.executable)]
    sampler = HostSampler(hosts, options, interval_s=10.0, clock=clock)
    assert sampler.latest() == (None, None, None)  # nothing yet, and reading never waits
    assert sampler.refresh_due()
    assert not sampler.refresh_due()  # one refresh at a time
    sampler.wait(60)
    here, remote, refused = sampler.latest()
    assert here is not None and remote is not None and refused is not None
    # The ssh host is this machine: the same total memory, read by another process.
    assert remote.error is None and remote.memory_total == psutil.virtual_memory().total
    assert remote.memory_available is not None and 0 < remote.memory_available
    assert remote.cpu_percent is not None and 0.0 <= remote.cpu_percent <= 100.0
    assert remote.memory_used is not None and remote.memory_used > 0
    assert here.memory_total == remote.memory_total and here.host == "this machine"
    assert refused.error is not None and "Remote Login" in refused.error
    assert (refused.memory_total, refused.cpu_percent, refused.memory_used) == (None,) * 3
    clock.now += 9.0
    assert not sampler.refresh_due()  # not due before the interval
    clock.now += 1.0
    assert sampler.refresh_due()
    sampler.wait(60)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def test_rank_scripts_refuse_what_could_escape() -> None:
    with pytest.raises(ManagerError):
        ssh.rank_script("../x", ["python"], {}, {})
    with pytest.raises(ManagerError):
        ssh.rank_script("ok", ["python"], {"BAD NAME": "1"}, {})
    with pytest.raises(ManagerError):
        ssh.kill_script(1)
    assert ssh.parse_marker("hello") is None
    script = ssh.rank_script("g-r1", ["python", "-m", "mlx_lm", "server"],
                             {"MLX_RANK": "1; rm -rf /"}, {})
    assert "MLX_RANK='1; rm -rf /'" in script

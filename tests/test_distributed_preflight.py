"""The preflight of a distributed profile against real hosts: this machine as rank 0 and
the others through a real sshd on loopback (tests/fixtures/sshd.py), each running the real
probe with a real interpreter. One preflight per scenario, every host probed at once."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.errors import ManagerError
from manager.net import free_port
from manager.servers.distributed import model_copy, preflight, probe_main, ssh
from manager.servers.distributed.hostfile import RankLaunch, launches
from manager.servers.distributed.preflight import (
    PreflightReport,
    Verdict,
    jaccl_problems,
    run_preflight,
)
from manager.servers.distributed.spec import DistributedSpec, RankHost
from tests.fixtures.sshd import SshServer


@pytest.fixture(scope="module")
def options(sshd: SshServer) -> Iterator[ssh.SshOptions]:
    # A ranks dir of this module's own (under the ssh user's home, this machine's): ranks
    # other tests spawn are not "stale" here; removed after.
    ranks_dir = f".mlx-manager/test-ranks-{uuid.uuid4().hex[:8]}"
    yield ssh.SshOptions(config=sshd.client_config, ranks_dir=ranks_dir)
    shutil.rmtree(Path.home() / ranks_dir, ignore_errors=True)


def _spec(*hosts: tuple[str, str, str]) -> DistributedSpec:
    return DistributedSpec.checked(
        [RankHost(target, f"{ip}:{free_port()}" if ip == "127.0.0.1" else ip, model)
         for target, ip, model in hosts])


def _launches(spec: DistributedSpec, model: Path) -> tuple[RankLaunch, ...]:
    server = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model)]
    return launches(spec, server, "test-group", remote_python=sys.executable)


def _fake_mlx_python(root: Path) -> str:
    """A real interpreter that finds an mlx 0.0.1 distribution first on its path."""
    site = root / "fake_site"
    info = site / "mlx-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlx\nVersion: 0.0.1\n")
    script = root / "python"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def _check(report: PreflightReport, rank: int, check: str) -> tuple[Verdict, str]:
    found = report.hosts[rank].finding(check)
    assert found is not None, report.lines()
    return found.verdict, found.message


def test_each_broken_host_gets_its_own_message(sshd: SshServer, options: ssh.SshOptions,
                                               tiny_models: dict[str, Path],
                                               tmp_path: Path) -> None:
    spec = _spec(("local", "127.0.0.1", ""),
                 (sshd.alias, "127.0.0.1", ""),                      # python with mlx 0.0.1
                 (sshd.alias_refused, "127.0.0.1", ""),              # nothing answers ssh
                 (sshd.alias, "127.0.0.1", str(tmp_path / "absent")),  # no model there
                 (sshd.alias, "10.255.255.1", ""),                   # not this host's address
                 (sshd.alias, "127.0.0.1", ""))                      # no python at that path
    planned = list(_launches(spec, tiny_models["text"]))
    fake = _fake_mlx_python(tmp_path)
    planned[1] = dataclasses.replace(planned[1], argv=(fake, *planned[1].argv[1:]))
    planned[5] = dataclasses.replace(planned[5], argv=(str(tmp_path / "no-python"),
                                                       *planned[5].argv[1:]))
    report = run_preflight(spec, planned, options)
    assert not report.ok and report.hosts[0].verdict is Verdict.OK, report.lines()
    verdict, message = _check(report, 1, "versions")
    assert verdict is Verdict.FAIL and "mlx 0.0.1 (rank 0 has 0." in message
    assert "-m pip install mlx==" in message
    verdict, message = _check(report, 2, "ssh")
    assert verdict is Verdict.FAIL and "Remote Login" in message
    verdict, message = _check(report, 3, "model")
    assert verdict is Verdict.FAIL and f"no model at {tmp_path / 'absent'}" in message
    assert _check(report, 3, "versions")[0] is Verdict.OK
    verdict, message = _check(report, 4, "backend")
    assert verdict is Verdict.FAIL and "10.255.255.1 is not an address of this host" in message
    verdict, message = _check(report, 5, "python")
    assert verdict is Verdict.FAIL and "No Python at" in message
    # Every failing line is its own, different message.
    assert len({report.lines()[rank] for rank in range(1, 6)}) == 5


def test_a_stale_rank_fails_the_preflight_and_once_stopped_all_is_green(
        sshd: SshServer, options: ssh.SshOptions, tiny_models: dict[str, Path]) -> None:
    argv = ssh.remote_argv(sshd.alias, [sys.executable, "-c", "import time; time.sleep(600)"],
                           {"MLX_RANK": "1"}, {}, "old-group-r1", options)
    left = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert left.stdout is not None
        rank = ssh.parse_marker(left.stdout.readline())
        assert rank is not None
        spec = _spec(("local", "127.0.0.1", ""), (sshd.alias, "127.0.0.1", ""))
        planned = _launches(spec, tiny_models["text"])
        verdict, message = _check(run_preflight(spec, planned, options), 1, "stale")
        assert verdict is Verdict.FAIL and f"pid {rank.pid} (old-group-r1)" in message
        assert f"kill -TERM -- -{rank.pgid}" in message
        # A group running now owns its ranks: they are not stale (the probe's own scan,
        # in-process: this host is the ssh host).
        assert probe_main.stale_ranks(options.ranks_dir, ["old-group-r1"]) == []
        assert probe_main.stale_ranks(options.ranks_dir, ["old-group"]) == []
        assert [s["pid"] for s in probe_main.stale_ranks(options.ranks_dir, [])] == [rank.pid]
        assert ssh.stop_remote_rank(sshd.alias, rank, options)
        # The next preflight finds no stale rank: a correct host over ssh is all green.
        report = run_preflight(spec, planned, options)
    finally:
        left.kill()
        left.wait()
    assert report.ok, report.lines()
    assert [h.verdict for h in report.hosts] == [Verdict.OK, Verdict.OK], report.lines()
    line = report.lines()[1]
    assert line.startswith(f"rank 1 {sshd.alias}: OK: ssh ok; Python ") and "ring: " in line
    assert "reaches rank 0 at 127.0.0.1" in line  # connected to a listener on rank 0's address
    assert "no stale rank" in line


def test_jaccl_on_this_linux_host_says_to_use_ring(sshd: SshServer, options: ssh.SshOptions,
                                                   tiny_models: dict[str, Path]) -> None:
    spec = DistributedSpec.checked(
        [RankHost("local", "127.0.0.1", rdma=("", "rdma_en3")),
         RankHost(sshd.alias, "127.0.0.2", rdma=("rdma_en3", ""))], backend="jaccl")
    report = run_preflight(spec, _launches(spec, tiny_models["text"]), options)
    verdict, message = _check(report, 1, "backend")
    assert verdict is Verdict.FAIL
    assert "runs Linux" in message and "Use the ring backend" in message


IBV = ("    device                 node GUID\n    ------              ----------------\n"
       "    rdma_en3            0000000000000000\n    rdma_en4            0000000000000001\n")


@pytest.mark.parametrize(("system", "mac", "has", "ibv", "wanted", "expected"), [
    ("Darwin", "26.2", True, IBV, ["rdma_en3"], []),
    ("Darwin", "26.3.1", True, IBV, ["rdma_en3", "rdma_en4"], []),
    ("Darwin", "26.1", True, IBV, ["rdma_en3"], ["macOS 26.1 is too old"]),
    ("Darwin", "15.6", True, IBV, ["rdma_en3"], ["macOS 15.6 is too old"]),
    ("Darwin", "26.2", False, IBV, ["rdma_en3"], ["built without jaccl"]),
    ("Darwin", "26.2", True, "    device   node GUID\n", ["rdma_en3"], ["rdma_ctl enable"]),
    ("Darwin", "26.2", True, None, ["rdma_en3"], ["rdma_ctl enable"]),
    ("Darwin", "26.2", True, IBV, ["rdma_en5"], ["rdma_en5 is not on this host"]),
    ("Linux", "", False, None, ["rdma_en3"], ["runs Linux"]),
])
def test_jaccl_detection(system: str, mac: str, has: bool, ibv: str | None,
                         wanted: list[str], expected: list[str]) -> None:
    problems = jaccl_problems(system, mac, has, ibv, wanted)
    assert len(problems) == len(expected), problems
    for problem, words in zip(problems, expected, strict=True):
        assert words in problem


def test_a_missing_model_is_copied_through_ssh_with_progress(
        sshd: SshServer, options: ssh.SshOptions, tiny_models: dict[str, Path],
        tmp_path: Path) -> None:
    source = tiny_models["text"]
    # A Hugging Face cache snapshot holds symlinks: the copy must carry the files.
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (snapshot / path.name).symlink_to(path)
    dest = tmp_path / "remote" / "models" / "tiny"
    host = RankHost(sshd.alias, "127.0.0.1")
    seen: list[tuple[int, int]] = []
    model_copy.copy_model(snapshot, host, str(dest), options,
                          lambda sent, total: seen.append((sent, total)))
    total = sum(p.stat().st_size for p in source.iterdir() if p.is_file())
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [sent for sent, _ in seen] == sorted(sent for sent, _ in seen)
    copied = sorted(p.name for p in dest.iterdir())
    assert copied == sorted(p.name for p in source.iterdir() if p.is_file())
    assert not any(p.is_symlink() for p in dest.iterdir())
    assert (dest / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert not list(dest.parent.glob("*.partial-*"))
    with pytest.raises(ManagerError, match="already exists"):
        model_copy.copy_model(source, host, str(dest), options, lambda sent, total: None)
    with pytest.raises(ssh.SshError, match="Remote Login"):
        model_copy.copy_model(source, RankHost(sshd.alias_refused, "127.0.0.1"),
                              str(tmp_path / "elsewhere"), options, lambda sent, total: None)


def test_a_host_that_cannot_reach_rank_0_is_told_what_to_check() -> None:
    spec = DistributedSpec.checked([RankHost("local", "10.0.0.1"), RankHost("mac2", "10.0.0.2")])
    failed = preflight._reach(spec, {"ok": False, "error": "timed out"})
    assert failed.verdict is Verdict.FAIL and "cannot reach rank 0 at 10.0.0.1 (timed out)" in \
        failed.message and "Firewall" in failed.message
    assert preflight._reach(spec, {"ok": True}).verdict is Verdict.OK

"""Distributed profiles, the pure part: the spec's checks and JSON, the form's host lines,
each rank's argv, environment and hostfile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from manager.errors import ValidationError
from manager.servers.distributed.hostfile import (
    GROUP_ENV,
    HOSTFILE_ENV,
    IBV_DEVICES_ENV,
    JACCL_COORDINATOR_ENV,
    RANK_ENV,
    launches,
    ring_hostfile,
)
from manager.servers.distributed.spec import (
    DEFAULT_BASE_PORT,
    DistributedSpec,
    LinkBackend,
    Parallel,
    RankHost,
    parse_hosts,
)
from manager.servers.placement import Placement
from tests.server_helpers import server_env

TWO = "local 127.0.0.1\nmac2 192.168.1.11 /Users/me/models/qwen\n"
SERVER_ARGV = ["/venv/bin/python", "-m", "mlx_lm", "server", "--model", "/models/qwen",
               "--host", "127.0.0.1", "--port", "8080"]


def two(**kw: object) -> DistributedSpec:
    return DistributedSpec.checked(parse_hosts(TWO), **kw)  # type: ignore[arg-type]


def test_hosts_lines_parse_with_defaults_and_comments() -> None:
    hosts = parse_hosts("# rank 0 first\nlocal 127.0.0.1\n\nmac2 192.168.1.11 - # same path\n")
    assert hosts == (RankHost("local", "127.0.0.1"), RankHost("mac2", "192.168.1.11"))
    spec = DistributedSpec.checked(hosts)
    assert (spec.backend, spec.parallel, spec.base_port) == (
        LinkBackend.RING, Parallel.TENSOR, DEFAULT_BASE_PORT)
    assert [h.is_local for h in spec.hosts] == [True, False]
    assert spec.endpoint(0) == f"127.0.0.1:{DEFAULT_BASE_PORT}"
    assert spec.endpoint(1) == f"192.168.1.11:{DEFAULT_BASE_PORT + 1}"


def test_json_round_trip_and_form_text() -> None:
    spec = two(backend="ring", parallel="pipeline", base_port=40000)
    again = DistributedSpec.from_json(spec.to_json())
    assert again == spec
    assert DistributedSpec.checked(parse_hosts(spec.hosts_text()), spec.backend,
                                   spec.parallel, spec.base_port) == spec
    assert DistributedSpec.from_json(None) is None
    assert DistributedSpec.from_json("") is None


@pytest.mark.parametrize(("hosts", "kw", "says"), [
    ("local 127.0.0.1", {}, "at least 2 hosts"),
    ("mac2 192.168.1.11\nlocal 127.0.0.1", {}, "make it this machine"),
    ("local 127.0.0.1\nmac2 mac2.lan", {}, "is not an IP address"),
    ("local 127.0.0.1:5000\nlocal 127.0.0.1:5000", {}, "would both listen on 127.0.0.1:5000"),
    ("local 127.0.0.1\nlocal 127.0.0.1:abc", {}, "must be a number"),
    ("local 127.0.0.1\nmac2 192.168.1.11", {"backend": "mpi"}, "'ring' or 'jaccl'"),
    ("local 127.0.0.1\nmac2 192.168.1.11", {"parallel": "data"}, "'tensor' or 'pipeline'"),
    ("local 127.0.0.1\nmac2 192.168.1.11", {"base_port": "x"}, "whole number"),
    ("local 127.0.0.1\nmac2 192.168.1.11", {"base_port": 80}, "between 1024"),
    ("local 127.0.0.1\nmac2 192.168.1.11", {"backend": "jaccl"}, "RDMA device"),
    ("local 127.0.0.1\n-oProxyCommand=x 192.168.1.11", {}, "not an ssh target"),
])
def test_bad_specs_say_what_to_fix(hosts: str, kw: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says) as caught:
        DistributedSpec.checked(parse_hosts(hosts), **kw)  # type: ignore[arg-type]
    assert caught.value.field == "distributed"


def test_a_bad_line_names_its_number() -> None:
    with pytest.raises(ValidationError, match="Line 2"):
        parse_hosts("local 127.0.0.1\nmac2\n")


def test_ring_launches_carry_rank_hostfile_and_each_hosts_model() -> None:
    spec = two(base_port=40000)
    assert json.loads(ring_hostfile(spec)) == [["127.0.0.1:40000"], ["192.168.1.11:40001"]]
    first, second = launches(spec, SERVER_ARGV, "g1")
    assert first.argv == tuple(SERVER_ARGV)
    assert second.argv[0] == "python3"
    assert second.argv[second.argv.index("--model") + 1] == "/Users/me/models/qwen"
    assert first.env == {RANK_ENV: "0", GROUP_ENV: "g1"}
    assert second.env == {RANK_ENV: "1", GROUP_ENV: "g1"}
    assert first.files == {HOSTFILE_ENV: ring_hostfile(spec)} == second.files


def test_pipeline_adds_the_flag_once() -> None:
    spec = two(parallel="pipeline")
    assert all(launch.argv.count("--pipeline") == 1 for launch in launches(spec, SERVER_ARGV, "g"))


def test_jaccl_launches_name_the_coordinator_and_devices() -> None:
    hosts = parse_hosts("local 10.0.0.1 - rdma=-,rdma_en3\nmac2 10.0.0.2 - rdma=rdma_en4,-")
    spec = DistributedSpec.checked(hosts, "jaccl", base_port=40000)
    first, second = launches(spec, SERVER_ARGV, "g")
    assert second.env[JACCL_COORDINATOR_ENV] == "10.0.0.1:40000"
    assert json.loads(first.files[IBV_DEVICES_ENV]) == [[None, "rdma_en3"], ["rdma_en4", None]]
    assert DistributedSpec.from_json(spec.to_json()) == spec


def test_placement_counts_only_this_machines_share_of_a_distributed_model(
        tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    env = server_env(tmp_path / "data")
    try:
        placement = Placement(env.supervisor, env.profiles, estimate=lambda _p: 1200)
        single = env.profile("one", tiny_models["text"])
        three = DistributedSpec.checked(parse_hosts(
            "local 127.0.0.1\nmac2 192.168.1.11\nmac3 192.168.1.12"))
        spread = env.profile("three", tiny_models["text"], distributed=three)
        assert placement.need_bytes(single) == 1200
        assert placement.need_bytes(spread) == 400
    finally:
        env.close()

"""The monitor: one scheduled job, real psutil figures of real server trees, adaptive pace."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from manager.servers.monitor import Monitor, parse_ioreg_utilization
from manager.servers.profiles import Profile
from manager.servers.supervisor import ServerState
from tests.server_helpers import ServerEnv, hf_home_env, server_env
from tests.waits import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    root = tmp_path_factory.mktemp("monitor")
    with hf_home_env(root / "hf_home"):
        created = server_env(root / "data")
        yield created
        created.close()


@pytest.fixture(scope="module")
def running(env: ServerEnv, tiny_models: dict[str, Path]) -> Profile:
    profile = env.profile("watched", tiny_models["text"])
    env.supervisor.start(profile.id)
    env.supervisor.wait_ready(profile.id, 90)
    return profile


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_memory_is_within_20_percent_of_psutil_for_the_tree(env: ServerEnv, running: Profile
                                                            ) -> None:
    env.monitor.sample_all()
    sample = env.monitor.latest(running.id)
    expected = tree_rss(env.supervisor.snapshot(running.id).pid)
    assert sample is not None and sample.memory_bytes is not None
    assert abs(sample.memory_bytes - expected) <= 0.2 * expected
    assert sample.memory_total_bytes == psutil.virtual_memory().total
    assert 0 < sample.memory_fraction < 1
    # No NVIDIA device and not macOS here: unknown, not a fake 0.
    assert sample.gpu_percent is None and sample.gpu_memory_bytes is None


def test_cpu_is_above_zero_while_a_request_generates(env: ServerEnv, running: Profile) -> None:
    url = env.supervisor.snapshot(running.id).base_url + "/v1/completions"
    env.monitor.sample_all()  # cpu_percent measures from the previous sample
    busy = threading.Event()
    done = threading.Event()

    def generate() -> None:
        with httpx.Client(timeout=60) as client:
            while not done.is_set():
                client.post(url, json={"prompt": "Tell me a long story", "max_tokens": 400})
                busy.set()

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    try:
        assert busy.wait(60)
        env.monitor.sample_all()
        time.sleep(0.5)  # CPU percent is measured over time that passes between two samples
        env.monitor.sample_all()
        sample = env.monitor.latest(running.id)
    finally:
        done.set()
        worker.join(60)
    assert sample.cpu_percent is not None and sample.cpu_percent > 0
    assert sample.cpu_machine_percent > 0
    assert len(env.monitor.history(running.id)) >= 3


def test_a_crash_is_noticed_by_the_same_tick(env: ServerEnv, running: Profile) -> None:
    # Covered with kill -9 in test_supervisor; here the tick also drops the dead tree.
    assert env.monitor.latest(running.id) is not None
    env.monitor.touch()
    env.monitor.tick()
    assert env.supervisor.snapshot(running.id).state is ServerState.READY
    assert env.monitor.log_tail(running.id).strip()


def test_the_job_runs_once_at_a_time_and_adapts_its_pace(env: ServerEnv, running: Profile
                                                         ) -> None:
    monitor = Monitor(env.supervisor, fast_interval_s=0.2, steady_interval_s=0.5,
                      idle_interval_s=0.3, watch_timeout_s=1.0, detect_gpu_reader=False)
    monitor.start()
    try:
        job = monitor._scheduler.get_job("monitor")
        assert job.max_instances == 1 and job.coalesce is True
        # Nobody watching: ticks run at the idle pace (crash detection) and still sample
        # the live server, so a page that opens has the last minutes (the chart).
        assert wait_for(lambda: monitor.ticks >= 3, 10)
        assert monitor.samples_taken >= 3 and monitor.interval_s == 0.3
        assert len(monitor.history(running.id)) >= 3
        taken = monitor.samples_taken
        monitor.touch()  # a page: the steady pace
        assert wait_for(lambda: monitor.samples_taken > taken and monitor.interval_s == 0.5, 10)
        # A server starting: fast.
        env.supervisor.stop(running.id)
        env.supervisor.start(running.id)
        assert wait_for(lambda: monitor.interval_s == 0.2, 10)
        env.supervisor.wait_ready(running.id, 90)
        monitor.touch()
        assert wait_for(lambda: monitor.interval_s == 0.5, 10)
        # The tab went away: back to the idle pace, the history still growing.
        assert wait_for(lambda: monitor.interval_s == 0.3, 10)
        taken = monitor.samples_taken
        assert wait_for(lambda: monitor.samples_taken >= taken + 3, 10)
    finally:
        monitor.stop()


def test_ioreg_utilization_is_parsed() -> None:
    text = '| "PerformanceStatistics" = {"Device Utilization %"=37,"Renderer Utilization %"=5}'
    assert parse_ioreg_utilization(text) == 37.0
    assert parse_ioreg_utilization("nothing here") is None

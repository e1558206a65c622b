"""Sampler cost with 4 live servers: CPU time per sample and per tick render.

A sample is the monitor's whole job (reconcile + psutil over 4 process trees + log
tails); a tick render is what each open tab pays per timer tick (HTML from the last
snapshot). Goals: each under 5 ms of CPU, and the sampler under 1 % of one core at
the default (steady) interval.

Run: .venv/bin/python -m bench.sampler_cost [--samples 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from manager.net import free_port
from manager.servers.inference import MetricsStore
from manager.servers.monitor import STEADY_INTERVAL_S, Monitor
from manager.servers.profiles import ProfileService, ProfileSpec
from manager.servers.supervisor import Supervisor
from manager.store import Store

GOAL_MS = 5.0
GOAL_CORE_PERCENT = 1.0


def cpu_ms_per_call(fn: object, n: int) -> float:
    start = time.thread_time()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.thread_time() - start) / n * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    from components.servers_tab import render_tiles
    from tests.fixtures.tiny_models import make_text_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf_home")
        model = make_text_model(root / "model")
        store = Store(root / "manager.db")
        hub_cache = root / "hf_home" / "hub"
        profiles = ProfileService(store, hub_cache=hub_cache)
        supervisor = Supervisor(store, profiles, root / "logs", hub_cache=hub_cache)
        try:
            ids = [profiles.create(None, ProfileSpec(name=f"s{i}", model=str(model),
                                                     port=free_port())).id for i in range(4)]
            for profile_id in ids:
                supervisor.start(profile_id)
            for profile_id in ids:
                supervisor.wait_ready(profile_id, 120)
            monitor = Monitor(supervisor, detect_gpu_reader=False)
            monitor.touch()
            monitor.tick()
            monitor.tick()
            services = SimpleNamespace(supervisor=supervisor, monitor=monitor,
                                       metrics=MetricsStore())
            # Baseline: the cheapest thing a tick could do, reading the snapshots.
            baseline = cpu_ms_per_call(supervisor.snapshots, args.samples)
            sample = cpu_ms_per_call(monitor.tick, args.samples)
            render = cpu_ms_per_call(lambda: render_tiles(services, None), args.samples)
        finally:
            supervisor.close(keep_servers=False)
    core = sample / (STEADY_INTERVAL_S * 1000) * 100
    print(f"4 servers, {args.samples} runs each (CPU time of the calling thread):")
    print(f"  snapshot read (baseline): {baseline:.3f} ms")
    print(f"  sample (monitor tick):    {sample:.3f} ms  ratio to goal {sample / GOAL_MS:.3f} "
          f"(goal < {GOAL_MS} ms)  x{sample / baseline:.0f} the baseline")
    print(f"  tick render (per tab):    {render:.3f} ms  ratio to goal {render / GOAL_MS:.3f} "
          f"(goal < {GOAL_MS} ms)  x{render / baseline:.0f} the baseline")
    print(f"  sampler load at {STEADY_INTERVAL_S:g} s interval: {core:.3f} % of one core "
          f"(goal < {GOAL_CORE_PERCENT} %)")
    ok = sample < GOAL_MS and render < GOAL_MS and core < GOAL_CORE_PERCENT
    print("OK" if ok else "ABOVE GOAL")
    return 0


if __name__ == "__main__":
    sys.exit(main())

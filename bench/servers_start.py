"""Start-to-Ready through the manager vs spawning `python -m mlx_lm server` by hand.

Both sides start the same tiny model and count until the server answers its first
real 1-token completion; runs alternate so machine noise hits both. Goal: ratio
(manager / by hand) <= 1.10.

Run: .venv/bin/python -m bench.servers_start [--runs 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from manager.net import free_port
from manager.servers.profiles import ProfileService, ProfileSpec
from manager.servers.supervisor import Supervisor
from manager.store import Store

GOAL = 1.10
log = logging.getLogger(__name__)


def by_hand(model: Path) -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        with httpx.Client(timeout=httpx.Timeout(120, connect=2)) as client:
            while True:
                try:
                    answer = client.post(f"http://127.0.0.1:{port}/v1/completions",
                                         json={"prompt": "Hi", "max_tokens": 1})
                    if answer.content.strip() and \
                            answer.json().get("usage", {}).get("completion_tokens", 0) >= 1:
                        return time.perf_counter() - started
                except httpx.HTTPError as exc:
                    # Not up yet; the timeout of the caller's run bounds the wait.
                    log.debug("server not ready yet: %s", exc)
                time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def through_manager(supervisor: Supervisor, profile_id: int) -> float:
    started = time.perf_counter()
    supervisor.start(profile_id)
    supervisor.wait_ready(profile_id, 120)
    elapsed = time.perf_counter() - started
    supervisor.stop(profile_id)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from tests.fixtures.tiny_models import make_text_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf_home")
        (root / "hf_home" / "hub").mkdir(parents=True)
        model = make_text_model(root / "model")
        store = Store(root / "manager.db")
        hub_cache = root / "hf_home" / "hub"
        profiles = ProfileService(store, hub_cache=hub_cache)
        supervisor = Supervisor(store, profiles, root / "logs", hub_cache=hub_cache)
        profile = profiles.create(None, ProfileSpec(name="bench", model=str(model),
                                                    port=free_port()))
        by_hand(model)  # warm the page cache for both sides
        manager_times, hand_times = [], []
        for run in range(args.runs):
            # Alternate which side goes first.
            if run % 2:
                hand_times.append(by_hand(model))
                manager_times.append(through_manager(supervisor, profile.id))
            else:
                manager_times.append(through_manager(supervisor, profile.id))
                hand_times.append(by_hand(model))
        supervisor.close(keep_servers=False)
    manager, hand = statistics.median(manager_times), statistics.median(hand_times)
    ratio = manager / hand
    print(f"start to Ready, median of {args.runs}: manager {manager:.2f} s, "
          f"by hand {hand:.2f} s")
    print(f"ratio manager/by-hand = {ratio:.3f} (goal <= {GOAL}) "
          f"{'OK' if ratio <= GOAL else 'ABOVE GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

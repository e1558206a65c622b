"""Start to first completion for a stopped profile: through the manager vs a bare spawn.

The baseline is `python -m mlx_lm server` spawned by hand and polled (a 1-token
completion every POLL_S, 10 ms, until one is answered). Against it, in the same rounds:

- the Servers tab's path: the tab's own server action (`/server_action`, what its Start
  button runs, called through Gradio's queue over HTTP with a signed-in session) until
  the server is READY, then a 1-token completion from it (the user's first answer);
- the gateway's path: a `/v1/chat/completions` request (max_tokens 1, real API key, the
  real app on a socket) for the stopped profile, until its answer arrives;

each with the warm spare interpreter on and off. A round runs every side once (the
bare spawn first in odd rounds, last in even ones); before a side with the spare on, the
bench waits until the spare is warm, so its replacement's imports never overlap a
measured start. Goal: manager / bare <= 0.6 with the spare on.

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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from manager.net import free_port

GOAL = 0.6
#: How often the bare baseline asks: often enough that its own wait adds ~5 ms at most.
POLL_S = 0.01
SPARE_WARM_S = 120.0
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
                time.sleep(POLL_S)  # the bare baseline: a script polling
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Dashboard:
    """The real app (services + FastAPI + Gradio) on a socket, in this process."""

    def __init__(self, root: Path, model: Path) -> None:
        import uvicorn

        from app import create_app
        from manager.servers.profiles import ProfileSpec
        from manager.services import Services
        from manager.settings import Settings

        settings = Settings(data_dir=root / "data", port=free_port())
        setup = Services.create(settings, run_servers=False)
        self.admin = setup.auth.register("bench@example.com", "correct horse battery")
        self.key = setup.api_keys.create(self.admin, "bench").secret
        self.profile = setup.profiles.create(self.admin, ProfileSpec(
            name="tiny", model=str(model), port=free_port()))
        setup.close()
        self.services = Services.create(settings)  # warms a spare for the profile's backend
        self.url = f"http://127.0.0.1:{settings.port}"
        self._server = uvicorn.Server(uvicorn.Config(
            create_app(self.services), host="127.0.0.1", port=settings.port,
            log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.05)  # waiting for uvicorn, outside any measurement
        self.tab = self._signed_in_client("bench@example.com", "correct horse battery")

    def _signed_in_client(self, email: str, password: str) -> Any:
        """A Gradio client of the app carrying the session of a real login."""
        from manager.api.session_gate import SESSION_COOKIE
        from tests.gradio_clients import gradio_client

        login = httpx.post(self.url + "/login", data={"email": email, "password": password})
        if login.status_code != 303 or SESSION_COOKIE not in login.cookies:
            raise RuntimeError(f"the bench's login failed: {login.status_code}")
        return gradio_client(self.url, cookie=login.cookies[SESSION_COOKIE])

    def spare(self, on: bool) -> None:
        """Turn the spare on or off; with it on, wait until it is warm."""
        from manager.servers.profiles import Backend

        spares = self.services.supervisor.spares
        if spares.enabled != on:
            spares.switch(None, on)
        if on and not spares.wait_warm(Backend.MLX_LM, SPARE_WARM_S):
            raise RuntimeError(f"the spare did not get warm: {spares.views()}")

    def through_tab(self) -> float:
        placement, pid = self.services.placement, self.profile.id
        started = time.perf_counter()
        status = self.tab.predict("start", "tiny", api_name="/server_action")[0]
        if not str(status).startswith("Starting tiny"):
            raise RuntimeError(f"the tab did not start the server: {status!r}")
        snap = placement.wait_ready(pid, 120)
        answer = httpx.post(snap.base_url + "/v1/completions", timeout=120,
                            json={"prompt": "Hi", "max_tokens": 1})
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        if answer.json()["usage"]["completion_tokens"] < 1:
            raise RuntimeError(f"no completion: {answer.text}")
        placement.stop(self.admin, pid)
        return elapsed

    def through_gateway(self) -> float:
        body = {"model": "tiny", "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hi"}]}
        started = time.perf_counter()
        answer = httpx.post(self.url + "/v1/chat/completions", json=body, timeout=120,
                            headers={"Authorization": f"Bearer {self.key}"})
        elapsed = time.perf_counter() - started
        answer.raise_for_status()
        if answer.json()["usage"]["completion_tokens"] < 1:
            raise RuntimeError(f"no completion: {answer.text}")
        self.services.placement.stop(self.admin, self.profile.id)
        return elapsed

    def close(self) -> None:
        self.tab.close()
        self._server.should_exit = True
        self._thread.join(15)
        self.services.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from tests.fixtures.tiny_models import make_text_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf_home")
        os.environ["HF_HUB_OFFLINE"] = "1"
        (root / "hf_home" / "hub").mkdir(parents=True)
        model = make_text_model(root / "model")
        dashboard = Dashboard(root, model)
        times: dict[str, list[float]] = {name: [] for name in (
            "bare", "tab, spare on", "gateway, spare on", "tab, spare off",
            "gateway, spare off")}
        sides: list[tuple[str, Callable[[], float]]] = [
            ("tab, spare on", lambda: (dashboard.spare(True), dashboard.through_tab())[1]),
            ("gateway, spare on",
             lambda: (dashboard.spare(True), dashboard.through_gateway())[1]),
            ("tab, spare off", lambda: (dashboard.spare(False), dashboard.through_tab())[1]),
            ("gateway, spare off",
             lambda: (dashboard.spare(False), dashboard.through_gateway())[1]),
        ]
        try:
            by_hand(model)  # warm the page cache for every side
            for run in range(args.runs):
                order = [("bare", lambda: by_hand(model)), *sides]
                if run % 2:
                    order = order[1:] + order[:1]
                for name, side in order:
                    times[name].append(side())
        finally:
            dashboard.close()
    bare = statistics.median(times["bare"])
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"start to first completion, tiny model, median of {args.runs} "
          f"(min-max in brackets); load average at the end {load}:")
    for name, values in times.items():
        ratio = statistics.median(values) / bare
        verdict = "" if name == "bare" else (
            f"  ratio {ratio:.3f}" + (f" (goal <= {GOAL}) {'OK' if ratio <= GOAL else 'ABOVE'}"
                                      if "spare on" in name else ""))
        print(f"  {name:<20} {statistics.median(values):.3f} s "
              f"[{min(values):.3f}-{max(values):.3f}]{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

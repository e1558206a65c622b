"""The dashboards bench.gateway measures: each in its own process on a data dir made by
its own code, with a tiny model, a key and a profile, and the direct way to its server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench._gateway_streams import ROUTES, Side
from manager.net import free_port


def upstream_ttft(scraper: httpx.Client, base: str, auth: dict[str, str]
                  ) -> tuple[float, int]:
    """(sum of seconds, count) of the TTFT the gateway itself measured upstream (/metrics)."""
    text = scraper.get(base + "/metrics", headers=auth, timeout=30).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    name = 'mlx_manager_time_to_first_token_seconds_{}{{profile="tiny"}}'
    return values[name.format("sum")], int(values[name.format("count")])


def prepare(root: Path, tokens: int) -> tuple[str, int, Path]:
    """A data dir with an admin, a key and a profile for the tiny model."""
    from manager.servers.profiles import ProfileSpec
    from manager.services import Services
    from manager.settings import Settings
    from tests.fixtures.tiny_models import make_text_model

    model = make_text_model(root / "model")
    services = Services.create(Settings(data_dir=root / "data"), run_servers=False)
    try:
        admin = services.auth.register("bench@example.com", "correct horse battery")
        key = services.api_keys.create(admin, "bench").secret
        profile = services.profiles.create(admin, ProfileSpec(
            name="tiny", model=str(model), port=free_port(), max_tokens=tokens))
    finally:
        services.close()
    return key, profile.port, model


@dataclass(frozen=True)
class Dashboard:
    """One dashboard under test, its own model server and the direct stream to it."""

    label: str
    process: subprocess.Popen[bytes]
    base: str
    auth: dict[str, str]
    data_dir: Path
    direct: Side
    # Reads /metrics on one kept connection, as a Prometheus scraper does. A new client
    # per read (a TLS context built, a connection opened and closed just before each
    # gateway round) put several ms on about one stream in twenty (docs/benchmarks.md).
    # Idle through the other dashboard's turn: let it go before uvicorn's 5 s keep-alive
    # does, never reusing one the server closes at that moment.
    scraper: httpx.Client = field(default_factory=lambda: httpx.Client(
        limits=httpx.Limits(keepalive_expiry=4)))

    @property
    def proc(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def metrics(self) -> tuple[float, int]:
        return upstream_ttft(self.scraper, self.base, self.auth)


def start_dashboard(label: str, code: Path, root: Path, tokens: int,
                    env: dict[str, str] | None = None) -> Dashboard:
    """A data dir made by `code`'s own bench (so its migrations), then its dashboard, its
    model server started by a first request."""
    root.mkdir(parents=True)
    made = subprocess.run(  # noqa: S603 - argv list, no shell
        [sys.executable, "-c", "import json, sys; from bench.gateway import prepare; "
         "k, p, m = prepare(__import__('pathlib').Path(sys.argv[1]), int(sys.argv[2])); "
         "print(json.dumps([k, p, str(m)]))", str(root), str(tokens)],
        cwd=code, check=True, capture_output=True, text=True)
    key, server_port, model = json.loads(made.stdout.strip().splitlines()[-1])
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - argv list, no shell
        [sys.executable, str(code / "app.py"), "serve", "--data-dir", str(root / "data"),
         "--port", str(port), "--log-level", "warning"],
        cwd=code, start_new_session=True, stdout=subprocess.DEVNULL,
        # Every round uses the one key: no per-minute limit while measuring speed.
        env={**os.environ, "MLX_MANAGER_GATEWAY_REQUESTS_PER_MINUTE": "0", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    chat = ROUTES["chat"]
    direct: Side = (f"http://127.0.0.1:{server_port}/v1/chat/completions",
              {**chat.body(tokens), "model": model}, {}, chat)
    board = Dashboard(label, process, base, auth, root / "data", direct)
    deadline = time.monotonic() + 300  # a loaded machine imports slowly
    last_error: Exception | None = None
    while True:
        try:
            if httpx.get(base + "/login", timeout=2).status_code == 200:
                break
        except httpx.HTTPError as exc:
            # Not listening yet; give up at the deadline with the last error.
            last_error = exc
        if time.monotonic() > deadline or process.poll() is not None:
            stop_dashboard(board)
            raise RuntimeError(f"the dashboard did not start ({last_error!r})")
        time.sleep(0.2)
    try:  # the first request starts the server on demand
        httpx.post(base + chat.path, headers=auth, timeout=120,
                   json={**chat.body(tokens), "stream": False}).raise_for_status()
    except BaseException:
        stop_dashboard(board)
        raise
    return board


def stop_dashboard(board: Dashboard) -> None:
    board.scraper.close()
    os.killpg(board.process.pid, signal.SIGTERM)
    try:
        board.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(board.process.pid, signal.SIGKILL)
        board.process.wait()
    stop_leftovers(board.data_dir)


def stop_leftovers(data_dir: Path) -> None:
    """The dashboard leaves its model servers running (the next start adopts them)."""
    import psutil

    from manager.servers.process import live_process
    from manager.servers.records import read_records
    from manager.store import Store

    for record in read_records(Store(data_dir / "manager.db")):
        proc = live_process(record)
        if proc is None:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(15)
                break
            except ProcessLookupError:
                break
            except psutil.TimeoutExpired:
                print(f"model server {proc.pid} ignored {sig.name}")

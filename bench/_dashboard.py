"""Helpers the live benches share: a dashboard as its own process, a signed-in browser."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from manager.api.session_gate import SESSION_COOKIE
from manager.net import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"


@dataclass
class Dashboard:
    url: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the dashboard process (not its model servers)."""
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def cookie(self, email: str) -> str:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            client.post("/register", data={"email": email, "password": PASSWORD,
                                           "confirm": PASSWORD})
            response = client.post("/login", data={"email": email, "password": PASSWORD})
            return response.cookies[SESSION_COOKIE]


@contextmanager
def dashboard_process(root: Path, code_dir: Path) -> Iterator[Dashboard]:
    """`python app.py` from `code_dir` with its data under `root`, until the block ends."""
    port = free_port()
    env = {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--data-dir", str(root / "data"), "--port", str(port),
         "--log-level", "warning"], cwd=code_dir, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                httpx.get(url + "/login", timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the dashboard did not start") from None
                time.sleep(0.2)
        yield Dashboard(url, process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_percent(dashboard: Dashboard, seconds: float) -> float:
    """The dashboard's CPU over `seconds`, as % of one core."""
    before, started = dashboard.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (dashboard.cpu_seconds() - before) / (time.monotonic() - started) * 100


@contextmanager
def signed_in_page(browser: Any, dashboard: Dashboard, cookie: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.add_cookies([{"name": SESSION_COOKIE, "url": dashboard.url, "value": cookie}])
    page = context.new_page()
    try:
        page.goto(dashboard.url + "/")
        page.wait_for_selector("#mm-header", timeout=120_000)
        yield page
    finally:
        context.close()


@dataclass
class InProcess:
    """The real app on a socket in this process: the bench reads the manager's own state
    and timestamps (`services`) while a browser watches the pages."""

    url: str
    services: Any

    def cookie(self, email: str) -> str:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            response = client.post("/login", data={"email": email, "password": PASSWORD})
            return response.cookies[SESSION_COOKIE]


@contextmanager
def dashboard_in_process(root: Path, **settings: Any) -> Iterator[InProcess]:
    """Services.create (monitor, downloads and all) + create_app on uvicorn in a thread."""
    import threading

    import uvicorn

    from app import create_app
    from manager.services import Services
    from manager.settings import Settings

    port = free_port()
    services = Services.create(Settings(data_dir=root / "data", port=port, **settings))
    server = uvicorn.Server(uvicorn.Config(create_app(services), host="127.0.0.1", port=port,
                                           log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.05)
        yield InProcess(f"http://127.0.0.1:{port}", services)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        services.close()


#: Installed in each page: `__watch(key, expr)` records Date.now() when `expr` first holds
#: (checked on every DOM mutation); `__trace(key, expr)` records every new value of expr.
OBSERVER_JS = """
() => {
  const live = window.__live = {conds: {}, seen: {}, traces: {}, last: {}, logs: {}};
  const check = () => {
    const now = Date.now();
    for (const [key, fn] of Object.entries(live.conds)) {
      if (key in live.seen) continue;
      let ok = false;
      try { ok = fn(); } catch (e) { ok = false; }
      if (ok) live.seen[key] = now;
    }
    for (const [key, fn] of Object.entries(live.traces)) {
      let value = null;
      try { value = fn(); } catch (e) { value = null; }
      if (value !== null && value !== live.last[key]) {
        live.last[key] = value;
        (live.logs[key] = live.logs[key] || []).push([now, value]);
      }
    }
  };
  window.__watch = (key, expr) => { live.conds[key] = new Function('return (' + expr + ')'); check(); };
  window.__trace = (key, expr) => { live.traces[key] = new Function('return (' + expr + ')'); check(); };
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true,
                                                     characterData: true, attributes: true});
}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]

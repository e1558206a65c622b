"""Helpers for tests that run real model servers (profiles, supervisor, monitor, ...)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from manager.net import free_port
from manager.servers.cpu_priority import autogroup_nice, thread_ids
from manager.servers.monitor import Monitor
from manager.servers.placement import Placement
from manager.servers.profiles import Profile, ProfileService, ProfileSpec
from manager.servers.supervisor import Clock, Supervisor
from manager.settings import MAX_NICE, hub_cache_from_env
from manager.store import Store


class OffsetClock(Clock):
    """Real time plus an offset the test moves forward (backoff, idle timeout)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset


@contextmanager
def hf_home_env(home: Path) -> Iterator[Path]:
    """HF_HOME for child processes spawned inside the block (module-scoped fixtures)."""
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
                                            "HF_HUB_DISABLE_TELEMETRY")}
    os.environ["HF_HOME"] = str(home)
    os.environ.pop("HF_HUB_CACHE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    try:
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_broken_model(dest: Path, source: Path) -> Path:
    """A folder that passes the profile checks (config.json) but whose weights are junk."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (source / name).exists():
            (dest / name).write_bytes((source / name).read_bytes())
    (dest / "model.safetensors").write_bytes(b"this is not a safetensors file")
    return dest


def monitor_ticking_only_when_asked(supervisor: Supervisor) -> Monitor:
    """A Monitor whose job runs once at start and then only when something asks for it
    (an hour between its own ticks): what a test of event-driven ticks needs."""
    return Monitor(supervisor, fast_interval_s=3600, steady_interval_s=3600,
                   idle_interval_s=3600, detect_gpu_reader=False)


def exited(pid: int) -> bool:
    """True once our child `pid` has exited and can be reaped (it is not reaped here)."""
    result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return result is not None


def tree_pids(pid: int) -> list[int]:
    proc = psutil.Process(pid)
    return [proc.pid, *(c.pid for c in proc.children(recursive=True))]


def all_gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@dataclass
class ServerEnv:
    """A store, profiles, a supervisor, its placement and a monitor (not scheduled:
    tests tick it)."""

    root: Path
    store: Store
    profiles: ProfileService
    supervisor: Supervisor
    monitor: Monitor
    clock: OffsetClock
    placement: Placement

    def profile(self, name: str, model: Path | str, **fields: object) -> Profile:
        spec = ProfileSpec(name=name, model=str(model), port=fields.pop("port", free_port()),
                           **fields)  # type: ignore[arg-type]
        return self.profiles.create(None, spec)

    def close(self) -> None:
        self.monitor.stop()
        self.supervisor.close(keep_servers=False)


def server_env(root: Path, **supervisor_args: object) -> ServerEnv:
    root.mkdir(parents=True, exist_ok=True)
    store = Store(root / "manager.db")
    hub_cache = hub_cache_from_env(os.environ)  # as Settings.hub_cache would say
    profiles = ProfileService(store, hub_cache=hub_cache)
    clock = OffsetClock()
    supervisor = Supervisor(store, profiles, root / "logs", clock=clock, hub_cache=hub_cache,
                            **supervisor_args)  # type: ignore[arg-type]
    supervisor.adopt_or_reap()
    monitor = Monitor(supervisor, detect_gpu_reader=False)
    return ServerEnv(root, store, profiles, supervisor, monitor, clock,
                     Placement(supervisor, profiles))


def thread_nices(pid: int) -> set[int]:
    """The nice of each of the process's threads (Linux: nice is per thread), or of the
    process where there is no /proc. A thread that ends meanwhile (a request's) is left
    out."""
    nices = set()
    for tid in thread_ids(pid):
        try:
            nices.add(os.getpriority(os.PRIO_PROCESS, tid))
        except ProcessLookupError:
            continue
    return nices


def lowered(steps: int) -> int:
    """The nice of a server `steps` below this process (cpu_priority.lower)."""
    return min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, os.getpid()) + steps)


def lowered_group(pid: int, steps: int) -> bool:
    """True when the server's autogroup is `steps` below this process's, or there is
    no autogroup (not Linux). Unprivileged, the kernel may take it ~100 ms later."""
    own = autogroup_nice("self")
    return own is None or autogroup_nice(pid) == min(MAX_NICE, own + steps)

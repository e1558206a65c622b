"""Memory and CPU of the hosts of a distributed profile, for the Servers tile.

A remote host is sampled by running probe_main.py's `sample` mode with the rank's
interpreter over ssh (one round trip, ~0.3 s of work there plus the ssh login), so the
caller samples remote hosts on a slower cadence than local processes and keeps the last
sample. This machine is read in-process with psutil. Nothing here raises: a host that
cannot be sampled gets a sample with `error` set and None figures (shown as n/a).
`HostSampler` keeps the last samples of a group's hosts for a monitor tick to read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil

from manager.errors import ManagerError
from manager.servers.distributed import ssh
from manager.servers.distributed.preflight import probe
from manager.servers.distributed.spec import RankHost

log = logging.getLogger(__name__)

SAMPLE_TIMEOUT_S = 20.0
#: Seconds between two samples of the remote hosts (each costs an ssh login per host).
REMOTE_INTERVAL_S = 10.0


@dataclass(frozen=True)
class HostSample:
    """One host's memory (bytes) and CPU use (0-100 % of the whole host); None = unknown."""

    host: str
    memory_total: int | None = None
    memory_available: int | None = None
    cpu_percent: float | None = None
    error: str | None = None

    @property
    def memory_used(self) -> int | None:
        if self.memory_total is None or self.memory_available is None:
            return None
        return self.memory_total - self.memory_available


def _local(host: RankHost) -> HostSample:
    vm = psutil.virtual_memory()
    return HostSample(host=host.label, memory_total=int(vm.total),
                      memory_available=int(vm.available),
                      cpu_percent=float(psutil.cpu_percent(interval=None)))


def sample_host(host: RankHost, python: str, options: ssh.SshOptions,
                timeout_s: float = SAMPLE_TIMEOUT_S) -> HostSample:
    """Memory and CPU of one host (`python`: the interpreter its rank runs there)."""
    if host.is_local:
        return _local(host)
    try:
        answer = probe(host, python, "sample", {}, options, timeout_s)
    except ManagerError as exc:
        log.info("cannot sample %s: %s", host.label, exc.message)
        return HostSample(host=host.label, error=exc.message)
    memory = answer.get("memory") or {}
    cpu = answer.get("cpu_percent")
    return HostSample(host=host.label,
                      memory_total=_int(memory.get("total")),
                      memory_available=_int(memory.get("available")),
                      cpu_percent=float(cpu) if isinstance(cpu, (int, float)) else None)


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


class HostSampler:
    """The last sample of each host of a group, refreshed in the background at most every
    `interval_s`, so a monitor tick never waits on ssh: call `refresh_due()` from the tick,
    read `latest()`. Hosts are given with the interpreter their rank runs there."""

    def __init__(self, hosts: Sequence[tuple[RankHost, str]], options: ssh.SshOptions,
                 interval_s: float = REMOTE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._hosts = tuple(hosts)
        self._options = options
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._latest: tuple[HostSample | None, ...] = (None,) * len(self._hosts)
        self._last_start: float | None = None
        self._worker: threading.Thread | None = None

    def latest(self) -> tuple[HostSample | None, ...]:
        """Each host's last sample, in the order given (None: not sampled yet)."""
        with self._lock:
            return self._latest

    def refresh_due(self) -> bool:
        """Start a background refresh when the last one began `interval_s` ago or more and
        none is running; True when one was started."""
        with self._lock:
            now = self._clock()
            busy = self._worker is not None and self._worker.is_alive()
            if busy or (self._last_start is not None and
                        now - self._last_start < self._interval):
                return False
            self._last_start = now
            self._worker = threading.Thread(target=self._refresh, daemon=True,
                                            name="distributed-host-sampler")
            self._worker.start()
            return True

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for a running refresh to end (tests, shutdown)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)

    def _refresh(self) -> None:
        samples = _sample_each(self._hosts, self._options)
        with self._lock:
            self._latest = samples


def _sample_each(hosts: Sequence[tuple[RankHost, str]], options: ssh.SshOptions
                 ) -> tuple[HostSample, ...]:
    if not hosts:
        return ()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return tuple(pool.map(lambda pair: sample_host(pair[0], pair[1], options), hosts))

"""Memory and CPU of the hosts of a distributed profile, for the Servers tile.

A remote host is sampled by running probe_main.py's `sample` mode with the rank's
interpreter over ssh (one round trip, ~0.3 s of work there plus the ssh login), so the
caller samples remote hosts on a slower cadence than local processes and keeps the last
sample. This machine is read in-process with psutil. Nothing here raises: a host that
cannot be sampled gets a sample with `error` set and None figures (shown as n/a).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil

from manager.errors import ManagerError
from manager.servers.distributed import ssh
from manager.servers.distributed.preflight import probe
from manager.servers.distributed.spec import RankHost

log = logging.getLogger(__name__)

SAMPLE_TIMEOUT_S = 20.0


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


def sample_hosts(hosts: Sequence[RankHost], python: str, options: ssh.SshOptions,
                 timeout_s: float = SAMPLE_TIMEOUT_S) -> tuple[HostSample, ...]:
    """Every host at once, in the order given."""
    if not hosts:
        return ()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        return tuple(pool.map(lambda h: sample_host(h, python, options, timeout_s), hosts))


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None

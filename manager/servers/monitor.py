"""One background sampler for every browser: psutil (+ GPU where readable) per server.

A single APScheduler job (max_instances=1, coalesce=True) runs the supervisor's
reconcile pass (crash detection, log trimming, auto-restart) and then samples each
server's whole process tree. Tabs only read the results (`latest`, `history`,
`log_tail`); they call `touch()` while a page is open, and when no tab has
touched the monitor for a while the job runs at the idle pace: it reconciles (crashes
are still noticed) and samples the live servers, so the history (the Servers tab's
chart) has the last minutes when a page opens. With nobody watching and no server
running or changing there is nothing to reconcile or sample: the job sleeps (`asleep`)
until a tab touches the monitor or a server changes state. Each sample calls
`on_sample` (the pages' "new figures").

Interval (BUGFIX-04): FAST_INTERVAL_S while a server starts or stops, then
STEADY_INTERVAL_S while someone watches, IDLE_INTERVAL_S when nobody does.
While the job is scheduled, a server process that exits asks for a tick at once
(`exit_watch.ExitWatches`), so a crash is known when it happens, not a tick later.
"""

from __future__ import annotations

import logging
import platform
import re
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psutil
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from manager.servers.exit_watch import ExitWatches
from manager.servers.logs import LOG_TAIL_LINES, read_tail
from manager.servers.snapshot import Clock
from manager.servers.supervisor import Supervisor

log = logging.getLogger(__name__)

FAST_INTERVAL_S = 1.0
STEADY_INTERVAL_S = 2.0
IDLE_INTERVAL_S = 5.0
#: A tab that has not called touch() for this long is gone (closed, asleep).
WATCH_TIMEOUT_S = 15.0
HISTORY_S = 10 * 60
#: Finding a tree's children scans every process on the machine (psutil reads each
#: /proc/<pid>/stat), 90 % of a sample's cost; server trees rarely change, so each one
#: is re-scanned every few samples, staggered across servers.
RESCAN_TREE_EVERY = 5
_HISTORY_MAX = 2000
_JOB_ID = "monitor"
_RERUNS = 4  #: ticks in a row one job run takes when runs are asked for while it ticks


@dataclass(frozen=True)
class ResourceSample:
    """One measurement of a server's process tree. None = unknown (shown "n/a")."""

    at: float  # wall clock
    memory_bytes: int | None
    memory_total_bytes: int
    #: Sum over the tree, psutil style: 100 = one core busy.
    cpu_percent: float | None
    cpu_count: int
    gpu_percent: float | None = None
    gpu_memory_bytes: int | None = None
    processes: int = 0

    @property
    def cpu_machine_percent(self) -> float | None:
        """CPU as a share of the whole machine (every core busy = 100)."""
        if self.cpu_percent is None:
            return None
        return self.cpu_percent / max(1, self.cpu_count)

    @property
    def memory_fraction(self) -> float | None:
        if self.memory_bytes is None or self.memory_total_bytes <= 0:
            return None
        return self.memory_bytes / self.memory_total_bytes


@dataclass(frozen=True)
class GpuReading:
    percent: float | None
    memory_bytes: int | None


class GpuReader(Protocol):
    label: str

    def read(self, pids: set[int]) -> GpuReading: ...


class NvmlGpu:
    """NVIDIA GPUs through NVML: device utilisation and the memory our processes use."""

    label = "GPU"

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i)
                         for i in range(nvml.nvmlDeviceGetCount())]

    def read(self, pids: set[int]) -> GpuReading:
        percent: float | None = None
        memory = 0
        for handle in self._handles:
            try:
                procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                ours = [p for p in procs if p.pid in pids]
                if not ours:
                    continue
                memory += sum(p.usedGpuMemory or 0 for p in ours)
                util = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                percent = util if percent is None else max(percent, util)
            except self._nvml.NVMLError as exc:
                log.debug("NVML read failed: %s", exc)
                return GpuReading(None, None)
        # NVML answered: a server that is on no GPU really uses 0 of it.
        return GpuReading(percent if percent is not None else 0.0, memory)


_IOREG_UTIL = re.compile(r'"Device Utilization %"\s*=\s*(\d+)')


def parse_ioreg_utilization(text: str) -> float | None:
    """The GPU's "Device Utilization %" from `ioreg -r -c IOAccelerator` output."""
    values = [float(m) for m in _IOREG_UTIL.findall(text)]
    return max(values) if values else None


class MacGpu:
    """Apple GPUs: whole-GPU utilisation from ioreg, readable without root.

    macOS has no per-process GPU figure without root (powermetrics), so the gauge
    shows the whole GPU, and it is read at most every few seconds (ioreg is a process).
    """

    label = "GPU (all apps)"
    _EVERY_S = 4.0

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last: tuple[float, float | None] | None = None

    def read(self, pids: set[int]) -> GpuReading:
        now = self._clock.monotonic()
        if self._last is None or now - self._last[0] >= self._EVERY_S:
            try:
                out = subprocess.run(  # noqa: S603 - fixed argv
                    ["/usr/sbin/ioreg", "-r", "-d", "1", "-w", "0", "-c", "IOAccelerator"],
                    capture_output=True, text=True, timeout=2, check=False).stdout
                value = parse_ioreg_utilization(out)
            except (OSError, subprocess.SubprocessError) as exc:
                log.debug("ioreg failed: %s", exc)
                value = None
            self._last = (now, value)
        return GpuReading(self._last[1], None)


def detect_gpu(clock: Clock) -> GpuReader | None:
    """NVML when pynvml imports and a device exists; ioreg on macOS; else None ("n/a")."""
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                return NvmlGpu(pynvml)
        except pynvml.NVMLError as exc:
            log.info("NVML present but unusable (%s): GPU shows n/a", exc)
    if platform.system() == "Darwin" and Path("/usr/sbin/ioreg").exists():
        return MacGpu(clock)
    return None


class _Tree:
    """psutil.Process objects kept between samples: cpu_percent() measures since the
    previous call on the same object."""

    def __init__(self, pid: int, create_time: float, stagger: int = 0) -> None:
        self.key = (pid, create_time)
        self.root = psutil.Process(pid)
        self.procs: dict[int, psutil.Process] = {}
        self.samples = 0
        self._stagger = stagger

    def sample(self) -> tuple[int, float, list[int]]:
        """(rss bytes, cpu percent, pids) of the tree now."""
        if self.samples == 0 or (self.samples + self._stagger) % RESCAN_TREE_EVERY == 0:
            current = {self.root.pid: self.root}
            for child in self.root.children(recursive=True):
                kept = self.procs.get(child.pid)
                current[child.pid] = kept if kept is not None and kept == child else child
        else:
            current = dict(self.procs) or {self.root.pid: self.root}
        rss, cpu = 0, 0.0
        for pid, proc in list(current.items()):
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    cpu += proc.cpu_percent(None)
            except psutil.Error as exc:
                log.debug("process %s vanished while sampling: %s", pid, exc)
                current.pop(pid)
        self.procs = current
        self.samples += 1
        return rss, cpu, list(current)


class Monitor:
    """Samples every live server; thread-safe readers for the tabs."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        clock: Clock | None = None,
        fast_interval_s: float = FAST_INTERVAL_S,
        steady_interval_s: float = STEADY_INTERVAL_S,
        idle_interval_s: float = IDLE_INTERVAL_S,
        watch_timeout_s: float = WATCH_TIMEOUT_S,
        history_s: float = HISTORY_S,
        gpu: GpuReader | None = None,
        detect_gpu_reader: bool = True,
        on_sample: Callable[[], None] | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._clock = clock or supervisor.clock
        self.fast_interval_s = fast_interval_s
        self.steady_interval_s = steady_interval_s
        self.idle_interval_s = idle_interval_s
        self._watch_timeout_s = watch_timeout_s
        self._history_s = history_s
        self._gpu = gpu if gpu is not None or not detect_gpu_reader else detect_gpu(self._clock)
        self._lock = threading.Lock()
        self._ticking = threading.Lock()  # held by the scheduled job while it runs
        self._trees: dict[int, _Tree] = {}
        self._latest: dict[int, ResourceSample] = {}
        self._history: dict[int, deque[ResourceSample]] = {}
        self._tails: dict[int, str] = {}
        self._last_touch = float("-inf")
        self._scheduler: BackgroundScheduler | None = None
        self._interval = idle_interval_s
        self._on_sample = on_sample
        self._asleep = False
        self._wakes = 0  # touches and wakes so far: a tick that saw none may sleep
        self._nudges = 0  # runs asked for (_run_now): one during a tick is done again
        self._unsubscribe: Callable[[], None] | None = None
        # A server's exit asks for a tick at once (reconcile notices it), while started.
        self._exits = ExitWatches(supervisor, self._run_now)
        self.ticks = 0
        self.samples_taken = 0

    @property
    def gpu_label(self) -> str:
        return self._gpu.label if self._gpu is not None else "GPU"

    @property
    def interval_s(self) -> float:
        return self._interval

    @property
    def asleep(self) -> bool:
        """True while the job is paused: nobody watches and no server runs or changes."""
        with self._lock:
            return self._asleep

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._scheduler is not None:
            return
        self._exits = ExitWatches(self._supervisor, self._run_now)  # fresh after a stop
        scheduler = BackgroundScheduler(daemon=True, timezone="UTC")
        scheduler.add_job(self._scheduled_tick, IntervalTrigger(seconds=self._interval),
                          id=_JOB_ID, max_instances=1, coalesce=True,
                          next_run_time=datetime.now().astimezone())
        self._scheduler = scheduler  # before start(): the first tick may come before it returns
        scheduler.start()
        # A server that starts (or is started again) while the job sleeps wakes it; its
        # process is watched for an exit from then on.
        self._unsubscribe = self._supervisor.subscribe(lambda _change: self._changed())

    def stop(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        if scheduler is not None:
            # Not shutdown(wait=True): APScheduler holds its job store lock while it waits
            # for the job, and a tick that pauses or reschedules its job needs that lock, so
            # each waited for the other forever. The tick in flight is waited for here.
            scheduler.shutdown(wait=False)
            with self._ticking:
                pass
        self._exits.close()

    def touch(self) -> None:
        """A tab is watching: sample at the steady pace (at once if we were idle)."""
        now = self._clock.monotonic()
        with self._lock:
            was_idle = now - self._last_touch > self._watch_timeout_s
            self._last_touch = now
            self._wakes += 1
            self._asleep = False
        if was_idle:
            self._run_now()

    def _changed(self) -> None:
        self.wake()
        self._exits.sync()

    def wake(self) -> None:
        """Run the job now if it sleeps (a server changed state)."""
        with self._lock:
            self._wakes += 1
            was_asleep, self._asleep = self._asleep, False
        if was_asleep:
            log.debug("monitor wakes")
            self._run_now()

    def _run_now(self) -> None:
        self._nudges += 1  # (a lost race between two still changes it: all a tick asks)
        scheduler = self._scheduler
        if scheduler is None:
            return
        try:
            scheduler.modify_job(_JOB_ID, next_run_time=datetime.now().astimezone())
        except LookupError as exc:  # the scheduler is shutting down
            log.debug("monitor job not woken: %s", exc)

    def watched(self) -> bool:
        with self._lock:
            return self._clock.monotonic() - self._last_touch <= self._watch_timeout_s

    # -- the job ------------------------------------------------------------------------------

    def _scheduled_tick(self) -> None:
        """The job; after stop() (which does not wait for the pool) it does nothing. A run
        asked for during a tick (a server exited) is done here: the scheduler skips runs
        while one is in flight, and the tick's reschedule would put it an interval away."""
        with self._ticking:
            for _ in range(_RERUNS):
                nudges = self._nudges
                if self._scheduler is None:
                    return
                self.tick()
                if self._nudges == nudges:
                    return

    def tick(self) -> None:
        """Reconcile, then sample if a tab is watching, then pick the next interval."""
        with self._lock:
            wakes = self._wakes
        transitional = self._supervisor.reconcile()
        if self._scheduler is not None:
            self._exits.sync()  # also adopted servers, which no transition announced
        watched = self.watched()
        live = self._supervisor.live_processes()
        if live:
            # Also while nobody watches (at the idle pace): a page that opens shows the
            # last minutes at once (the Servers tab's chart reads the history).
            self.sample_all()
        else:
            self._forget_gone(set())
        self.ticks += 1
        if transitional:
            interval = self.fast_interval_s
        elif watched:
            interval = self.steady_interval_s
        elif not live and self._sleep(wakes):
            return
        else:
            interval = self.idle_interval_s
        self._set_interval(interval)

    def sample_all(self) -> None:
        live = self._supervisor.live_processes()
        total = psutil.virtual_memory().total
        cpus = psutil.cpu_count() or 1
        now = self._clock.time()
        pids_of: dict[int, list[int]] = {}
        partial: dict[int, tuple[int | None, float | None]] = {}
        for profile_id, pid, create_time in live:
            tree = self._tree(profile_id, pid, create_time)
            if tree is None:
                partial[profile_id] = (None, None)
                continue
            try:
                rss_now, cpu_now, pids = tree.sample()
            except psutil.Error as exc:
                log.debug("server of profile %s gone while sampling: %s", profile_id, exc)
                partial[profile_id] = (None, None)
                continue
            # The first cpu_percent() of a process has nothing to compare with.
            partial[profile_id] = (rss_now, cpu_now if tree.samples > 1 else None)
            pids_of[profile_id] = pids
        snaps = {s.profile_id: s for s in self._supervisor.snapshots()}
        tails = {pid: read_tail(snaps[pid].log_path, lines=LOG_TAIL_LINES)
                 for pid in partial if pid in snaps}
        with self._lock:
            for profile_id, (rss, cpu) in partial.items():
                gpu = self._gpu.read(set(pids_of.get(profile_id, []))) if self._gpu and \
                    profile_id in pids_of else GpuReading(None, None)
                sample = ResourceSample(
                    at=now, memory_bytes=rss, memory_total_bytes=total, cpu_percent=cpu,
                    cpu_count=cpus, gpu_percent=gpu.percent, gpu_memory_bytes=gpu.memory_bytes,
                    processes=len(pids_of.get(profile_id, [])))
                self._latest[profile_id] = sample
                history = self._history.setdefault(profile_id, deque(maxlen=_HISTORY_MAX))
                history.append(sample)
                while history and now - history[0].at > self._history_s:
                    history.popleft()
            self._tails.update(tails)
            self.samples_taken += 1
        self._forget_gone(set(partial))
        if partial and self._on_sample is not None:
            self._on_sample()

    # -- readers -------------------------------------------------------------------------------

    def latest(self, profile_id: int) -> ResourceSample | None:
        with self._lock:
            return self._latest.get(profile_id)

    def history(self, profile_id: int) -> tuple[ResourceSample, ...]:
        with self._lock:
            return tuple(self._history.get(profile_id, ()))

    def log_tail(self, profile_id: int) -> str:
        with self._lock:
            return self._tails.get(profile_id, "")

    # -- internals ------------------------------------------------------------------------------

    def _tree(self, profile_id: int, pid: int, create_time: float) -> _Tree | None:
        tree = self._trees.get(profile_id)
        if tree is not None and tree.key == (pid, create_time):
            return tree
        try:
            tree = _Tree(pid, create_time, stagger=profile_id)
        except psutil.Error as exc:
            log.debug("server of profile %s (pid %s) not found: %s", profile_id, pid, exc)
            return None
        self._trees[profile_id] = tree
        return tree

    def _forget_gone(self, live: set[int] | None = None) -> None:
        """Drop process objects and latest figures of servers that are no longer live."""
        if live is None:
            live = {profile_id for profile_id, _, _ in self._supervisor.live_processes()}
        for profile_id in list(self._trees):
            if profile_id not in live:
                del self._trees[profile_id]
        with self._lock:
            for profile_id in list(self._latest):
                if profile_id not in live:
                    del self._latest[profile_id]

    def _sleep(self, wakes: int) -> bool:
        """Pause the job until a touch or a server's change, unless one came since the
        tick began (`wakes` then moved). True when it sleeps."""
        with self._lock:  # held while pausing, so a wake cannot fall between
            if self._wakes != wakes:
                return False
            self._asleep = True
            scheduler = self._scheduler
            if scheduler is not None:
                try:
                    scheduler.pause_job(_JOB_ID)
                except LookupError as exc:  # the scheduler is shutting down
                    log.debug("monitor job not paused: %s", exc)
        log.debug("monitor sleeps: nobody watches and no server runs")
        return True

    def _set_interval(self, seconds: float) -> None:
        if seconds == self._interval:
            return
        self._interval = seconds
        scheduler = self._scheduler
        if scheduler is None:
            return
        try:
            scheduler.reschedule_job(_JOB_ID, trigger=IntervalTrigger(seconds=seconds))
        except LookupError as exc:  # the scheduler is shutting down
            log.debug("monitor job not rescheduled: %s", exc)
            return
        log.debug("monitor interval now %g s", seconds)


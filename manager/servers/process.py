"""Model-server processes: the argv, spawning, stopping, and finding them again.

Servers are spawned from an argv list (never a shell) in their own session, so the
dashboard's Ctrl-C does not reach them and a stop can signal the whole process group:
SIGTERM, wait, SIGKILL, then any child that left the group. They outlive the dashboard
on purpose; the next one adopts a process when its pid, create time and command line
all match what was recorded.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import psutil

from manager.servers import cpu_priority
from manager.servers.profiles import Backend, Profile
from manager.servers.records import ServerRecord

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
#: After SIGKILL: how long to wait for the kernel to take the processes away.
KILL_WAIT_S = 5.0


class ServerProcess(Protocol):
    """What the supervisor keeps of a server it spawned: its Popen, or the RankGroup of a
    distributed server (manager/servers/distributed/group.py)."""

    pid: int
    args: Any
    returncode: int | Any

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@runtime_checkable
class ProcessGroup(Protocol):
    """A server made of several process groups (a distributed rank group): it stops all
    of them itself, and says which one ended first (`failure`, "" when none did)."""

    failure: str

    def stop_group(self, grace_s: float) -> None: ...


def failure_of(popen: ServerProcess | None) -> str:
    """Why a rank group ended (which rank, on which host), or ""."""
    return popen.failure if isinstance(popen, ProcessGroup) else ""


def server_module(backend: Backend) -> str:
    """The module `python -m` runs for a backend's server (a warm spare preloads it)."""
    return "mlx_vlm.server" if backend is Backend.MLX_VLM else "mlx_lm"


def build_command(profile: Profile, model_path: str, python: str = sys.executable) -> list[str]:
    """The argv of a model server for a profile (never run through a shell)."""
    argv = [python, "-m", server_module(profile.backend)]
    if profile.backend is Backend.MLX_LM:
        argv.append("server")
    argv += ["--model", model_path]
    # mlx_vlm listens on 0.0.0.0 by default: always say where.
    argv += ["--host", profile.host, "--port", str(profile.port)]
    if profile.max_tokens is not None:
        argv += ["--max-tokens", str(profile.max_tokens)]
    if profile.backend is Backend.MLX_VLM:
        if profile.thinking:
            argv.append("--enable-thinking")
        return argv
    if profile.temperature is not None:
        argv += ["--temp", f"{profile.temperature:g}"]
    if profile.top_p is not None:
        argv += ["--top-p", f"{profile.top_p:g}"]
    if profile.thinking is not None:
        argv += ["--chat-template-args", json.dumps({"enable_thinking": profile.thinking})]
    return argv


def model_of_cmdline(cmdline: tuple[str, ...] | list[str]) -> str:
    """The model path in a server's argv (see build_command): the value after --model."""
    args = list(cmdline)
    if "--model" in args[:-1]:
        return args[args.index("--model") + 1]
    return ""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown exit code (it was started by an earlier dashboard run)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code} (killed by {name})"
    return f"exit code {code}"


def child_env(hub_cache: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: the dashboard's, with its HF hub cache spelled out
    (the one the dashboard downloads to) and that folder created: mlx_lm answers
    /v1/models with an empty body when the hub cache is missing."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_CACHE"] = str(hub_cache)
    hub_cache.mkdir(parents=True, exist_ok=True)
    return env


def spawn(argv: list[str], log_file: Path, env: Mapping[str, str], cwd: Path, *, by: str,
          nice_steps: int = 0) -> tuple[subprocess.Popen[bytes], float | None]:
    """Start `argv` in its own session, `nice_steps` below the dashboard's CPU priority
    (cpu_priority.py), output appended to `log_file` (whose first line says what runs and
    for whom). Returns the process and its create time (None when it is already gone).
    Raises OSError when it cannot be started."""
    with log_file.open("ab") as handle:
        write_header(handle, argv, by)
        popen = subprocess.Popen(  # noqa: S603 - argv list, no shell
            argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            env=dict(env), start_new_session=True, close_fds=True, cwd=cwd)
    cpu_priority.lower(popen.pid, nice_steps)
    try:
        create_time: float | None = psutil.Process(popen.pid).create_time()
    except psutil.Error as exc:
        log.info("pid %s exited at once: %s", popen.pid, exc)
        create_time = None
    return popen, create_time


def write_header(handle: BinaryIO, argv: list[str], by: str, how: str = "") -> None:
    """The first line of a server's log: what runs and for whom."""
    handle.write(f"# mlx-manager: {' '.join(argv)} (started by {by}{how})\n".encode())
    handle.flush()


def exit_status(popen: ServerProcess | None, proc: psutil.Process | None
                ) -> tuple[bool, int | None]:
    """(gone, exit code); the code of an adopted process (no Popen) is unknown (None)."""
    if popen is not None:
        code = popen.poll()
        return code is not None, code
    if proc is not None:
        return not alive(proc), None
    return True, None


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error as exc:
        log.debug("process %s gone: %s", proc.pid, exc)
        return False


def terminate(pid: int | None, popen: ServerProcess | None,
              proc: psutil.Process | None, grace: float) -> None:
    """SIGTERM the process group, wait `grace`, SIGKILL it, then any straggler."""
    if isinstance(popen, ProcessGroup):
        popen.stop_group(grace)  # every rank on every host
        return
    if pid is None:
        return
    try:
        root = proc or psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error as exc:
        log.debug("server pid %s already gone: %s", pid, exc)
        family = []
    signal_group(pid, signal.SIGTERM)
    if not _wait_gone(popen, family, grace):
        log.warning("server pid %s ignored SIGTERM for %g s: sending SIGKILL", pid, grace)
        signal_group(pid, signal.SIGKILL)
        _wait_gone(popen, family, KILL_WAIT_S)
    for member in family:  # children that left the group
        try:
            if member.is_running():
                member.kill()
        except psutil.Error as exc:
            log.debug("straggler %s already gone: %s", member.pid, exc)


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        # Servers lead their own session; never signal the dashboard's own group.
        if pgid == pid and pgid != os.getpgrp():
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        log.debug("pid %s exited before %s", pid, sig.name)
    except PermissionError as exc:
        log.warning("not allowed to signal server pid %s: %s", pid, exc)


def _wait_gone(popen: ServerProcess | None, family: list[psutil.Process],
               timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    if popen is not None:
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
    _, still = psutil.wait_procs(family, timeout=max(0.0, deadline - time.monotonic()))
    return not still


def live_process(record: ServerRecord) -> psutil.Process | None:
    """The recorded server's process if it still runs: same pid, create time and
    arguments. Not the interpreter's path: a framework build of Python on macOS starts
    through a launcher that execs Python.app's binary, so the process's argv[0] is not
    the path it was started with."""
    if record.pid is None or record.create_time is None:
        return None
    try:
        proc = psutil.Process(record.pid)
        if abs(proc.create_time() - record.create_time) > 0.05:
            return None
        if tuple(proc.cmdline()[1:]) != record.cmdline[1:]:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error as exc:
        log.debug("recorded server pid %s is gone: %s", record.pid, exc)
        return None
    return proc


def tree_memory_bytes(proc: psutil.Process) -> int | None:
    """Resident memory of a process and all its descendants; None if it is gone."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error as exc:
        log.debug("process %s gone while measuring: %s", proc.pid, exc)
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error as exc:
            log.debug("process %s gone while measuring: %s", p.pid, exc)
    return total


def install_exit_hooks(on_exit: Callable[[], None]) -> None:
    """Run `on_exit` at interpreter exit, and turn SIGTERM/SIGHUP into a normal exit so
    it runs then too (uvicorn re-raises the signals it caught once it has shut down)."""
    atexit.register(on_exit)
    exit_on_signals()


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP raise SystemExit in the main thread: `finally` blocks and
    `except BaseException` clean-ups run, as at Ctrl-C (the default action ends the
    process where it stands, and model servers it started, in sessions of their own,
    outlive it). Elsewhere than the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return

    def exit_on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)


def run_beside(work: Callable[[], None], name: str) -> None:
    """Run `work` in a thread of its own while this thread waits for it; its exception
    is raised here. A signal's exception (exit_on_signals) or a Ctrl-C, raised in the
    main thread, then interrupts the wait, not `work`, which runs on to its end."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failed.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]

"""Waking a readiness watch when something happens to a starting server.

A model server says it listens in its log ("Starting httpd at ...", "Uvicorn running
on ...") and a failed one writes its traceback there before it exits. So the watch
sleeps until the log grows or the process ends, then tries a real completion: no fixed
pauses between connection attempts. Linux: inotify on the log (through libc) and a
pidfd for the exit; macOS/BSD: kqueue (vnode write, process exit). Where neither
works, `wait` simply sleeps its timeout, which the caller keeps short.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_IN_MODIFY = 0x00000002


class ChildWatch:
    """Wakes `wait` when `log_path` is written to or process `pid` exits."""

    def __init__(self, log_path: Path | None, pid: int | None) -> None:
        self._fds: list[int] = []
        self._inotify: int | None = None
        self._poll: select.poll | None = None
        self._kqueue: object | None = None
        self._idle = threading.Event()  # never set: the fallback sleeps on it
        try:
            if hasattr(select, "kqueue"):
                self._watch_kqueue(log_path, pid)
            elif hasattr(select, "poll"):
                self._watch_linux(log_path, pid)
        except OSError as exc:
            log.info("no change notification for %s (pid %s): %s; checking on a timer",
                     log_path, pid, exc)
            self.close()

    @property
    def event_driven(self) -> bool:
        return self._poll is not None or self._kqueue is not None

    def _watch_linux(self, log_path: Path | None, pid: int | None) -> None:
        poller = select.poll()
        if log_path is not None:
            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1 failed")
            self._fds.append(fd)
            self._inotify = fd
            if libc.inotify_add_watch(fd, os.fsencode(log_path), _IN_MODIFY) < 0:
                raise OSError(ctypes.get_errno(), f"cannot watch {log_path}")
            poller.register(fd, select.POLLIN)
        if pid is not None and hasattr(os, "pidfd_open"):
            pidfd = os.pidfd_open(pid)
            self._fds.append(pidfd)
            poller.register(pidfd, select.POLLIN)
        self._poll = poller

    def _watch_kqueue(self, log_path: Path | None, pid: int | None) -> None:
        if sys.platform == "linux":  # kqueue is macOS/BSD (and keeps mypy on Linux calm)
            raise OSError("no kqueue on Linux")
        queue = select.kqueue()
        self._kqueue = queue
        changes = []
        if log_path is not None:
            fd = os.open(log_path, os.O_RDONLY)
            self._fds.append(fd)
            changes.append(select.kevent(
                fd, filter=select.KQ_FILTER_VNODE,
                flags=select.KQ_EV_ADD | select.KQ_EV_CLEAR,
                fflags=select.KQ_NOTE_WRITE | select.KQ_NOTE_EXTEND))
        if pid is not None:
            changes.append(select.kevent(
                pid, filter=select.KQ_FILTER_PROC,
                flags=select.KQ_EV_ADD | select.KQ_EV_ONESHOT, fflags=select.KQ_NOTE_EXIT))
        queue.control(changes, 0)

    def wait(self, timeout: float) -> bool:
        """Return when the log grew or the process ended (True), or after `timeout`
        seconds (False)."""
        timeout = max(0.0, timeout)
        try:
            if self._poll is not None:
                if self._poll.poll(timeout * 1000):
                    self._drain()
                    return True
                return False
            if self._kqueue is not None:
                return bool(self._kqueue.control(None, 4, timeout))  # type: ignore[attr-defined]
        except OSError as exc:
            log.info("change notification failed (%s): checking on a timer", exc)
            self.close()
        self._idle.wait(timeout)
        return False

    def _drain(self) -> None:
        if self._inotify is None:
            return
        try:
            while os.read(self._inotify, 4096):
                pass
        except BlockingIOError:
            return  # nothing more queued

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError as exc:
                log.debug("closing watch descriptor %s: %s", fd, exc)
        self._fds.clear()
        if self._kqueue is not None:
            self._kqueue.close()  # type: ignore[attr-defined]
        self._poll = self._kqueue = self._inotify = None

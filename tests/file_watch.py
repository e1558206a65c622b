"""Proof that a file was never opened: Linux inotify through ctypes (no extra package)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

IN_ACCESS = 0x001
IN_OPEN = 0x020
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


class OpenWatch:
    """Records every open or read of the watched files, by any process."""

    def __init__(self, *paths: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for path in paths:
            if libc.inotify_add_watch(self._fd, os.fsencode(path), IN_OPEN | IN_ACCESS) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch failed for {path}")

    def opened(self) -> bool:
        """True if any watched file was opened or read since the last call."""
        try:
            return bool(os.read(self._fd, 65536))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> OpenWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

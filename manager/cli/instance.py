"""One dashboard per data dir: `serve` holds an advisory lock on <data dir>/dashboard.lock
for as long as it runs; `restore` takes the same lock, so it refuses while a dashboard runs
and no dashboard starts in the middle of a restore. The kernel drops the lock when the
holder exits, however it exits, so a crash leaves nothing stale behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from manager.errors import ManagerError

log = logging.getLogger(__name__)

LOCK_NAME = "dashboard.lock"


class DataDirBusy(ManagerError):
    """Another process (a dashboard or a restore) holds the data dir."""


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_NAME


@contextmanager
def hold_data_dir(data_dir: Path, purpose: str) -> Iterator[None]:
    """Hold the data dir's lock (raises DataDirBusy, naming the holder, if taken)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = lock_path(data_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise DataDirBusy(
                f"{data_dir} is in use by {holder}. Stop it first (Ctrl-C in its terminal, "
                "or `mlx-manager service uninstall` / `systemctl --user stop mlx-manager` "
                "for the service), then run this again.") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{purpose} (pid {os.getpid()})\n".encode(), 0)
        log.debug("holding %s for %s", path, purpose)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def holder(data_dir: Path) -> str | None:
    """Who holds the data dir (a running dashboard, a restore), or None: the lock is
    tried and released at once."""
    path = lock_path(data_dir)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)

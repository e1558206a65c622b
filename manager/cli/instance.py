"""One dashboard per data dir: `serve` holds an advisory lock on <data dir>/dashboard.lock
for as long as it runs; `restore` takes the same lock, so it refuses while a dashboard runs
and no dashboard starts in the middle of a restore. The kernel drops the lock when the
holder exits, however it exits, so a crash leaves nothing stale behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from manager.errors import ManagerError
from manager.settings import unusable_data_dir

log = logging.getLogger(__name__)

LOCK_NAME = "dashboard.lock"


class DataDirBusy(ManagerError):
    """Another process (a dashboard or a restore) holds the data dir."""


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_NAME


@contextmanager
def hold_data_dir(data_dir: Path, purpose: str) -> Iterator[None]:
    """Hold the data dir's lock (raises DataDirBusy, naming the holder, if taken)."""
    path = lock_path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise unusable_data_dir(data_dir, path, exc) from exc
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


# --- the control credential -------------------------------------------------------------
# A running dashboard owns the servers and the download jobs, so CLI commands act through
# it. It proves who may: a random token per run, in a file only this OS user can read
# (0600, in the data dir), with the address to reach it. The CLI trusts the file only
# while the data dir's lock is held by the process that wrote it.

CONTROL_NAME = "control.json"


@dataclass(frozen=True)
class ControlCredential:
    url: str
    token: str
    pid: int


def control_path(data_dir: Path) -> Path:
    return data_dir / CONTROL_NAME


def write_control(data_dir: Path, url: str) -> ControlCredential:
    """A new credential for this process, written 0600 (replacing any older one)."""
    credential = ControlCredential(url, secrets.token_urlsafe(32), os.getpid())
    path = control_path(data_dir)
    partial = path.with_name(f".{CONTROL_NAME}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file of that name may have looser bits
        os.write(fd, json.dumps(asdict(credential)).encode())
    finally:
        os.close(fd)
    os.replace(partial, path)
    return credential


def remove_control(data_dir: Path, credential: ControlCredential) -> None:
    """Remove the file if it is still this credential's (a later dashboard's stays)."""
    if read_control(data_dir) == credential:
        control_path(data_dir).unlink(missing_ok=True)


def read_control(data_dir: Path) -> ControlCredential | None:
    """The credential a dashboard wrote, or None (no file, or not one of ours)."""
    path = control_path(data_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ControlCredential(str(data["url"]), str(data["token"]), int(data["pid"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read the dashboard's control file %s: %s", path, exc)
        return None


def holder_pid(description: str) -> int | None:
    """The pid named in a lock holder's description ("... (pid 123)")."""
    found = re.search(r"\(pid (\d+)\)", description)
    return int(found.group(1)) if found else None

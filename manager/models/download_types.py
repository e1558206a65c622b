"""What a download is, as stored and as shown: its status, the in-memory job, the view
the UI reads, and the messages for what can go wrong."""

from __future__ import annotations

import enum
import errno
from collections import deque
from dataclasses import dataclass, field

from manager.errors import ManagerError
from manager.units import format_bytes


class DownloadStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    DONE = "done"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (DownloadStatus.QUEUED, DownloadStatus.RUNNING)

    @property
    def resumable(self) -> bool:
        return self in (DownloadStatus.PAUSED, DownloadStatus.FAILED)

    @property
    def finished(self) -> bool:
        return self in (DownloadStatus.DONE, DownloadStatus.CANCELLED)


class DiskFull(ManagerError):
    pass


@dataclass(frozen=True)
class DownloadView:
    """A download as the UI shows it. speed/eta None = unknown ("n/a")."""

    id: int
    repo_id: str
    status: DownloadStatus
    bytes_done: int
    bytes_total: int | None
    speed_bps: float | None = None
    eta_seconds: float | None = None
    error: str | None = None
    created_by: int | None = None
    revision: str | None = None

    @property
    def fraction(self) -> float | None:
        if not self.bytes_total:
            return None
        return min(1.0, self.bytes_done / self.bytes_total)


class Stopped(Exception):
    """Raised inside a transfer (from the progress hook) to stop it between chunks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Job:
    id: int
    repo_id: str
    status: DownloadStatus
    revision: str | None
    bytes_total: int | None
    created_by: int | None
    error: str | None = None
    base_bytes: int = 0  # files already complete when this run started
    file_bytes: dict[str, int] = field(default_factory=dict)
    stop: str | None = None  # "pause", "cancel", "shutdown" or "abort"
    samples: deque = field(default_factory=deque)

    @property
    def done(self) -> int:
        return self.base_bytes + sum(self.file_bytes.values())


def network_message(exc: BaseException, done: int) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"The disk is full. Free some space, then press Resume: the "
                f"{format_bytes(done)} already fetched are kept.")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return ("A file arrived with the wrong size (the connection was cut?). Press Resume to "
                "fetch the rest.")
    return (f"Lost the connection to Hugging Face ({type(exc).__name__}). The "
            f"{format_bytes(done)} already fetched are kept: press Resume to continue.")

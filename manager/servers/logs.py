"""Model-server log files: where they live, the one tail reader, trimming and clean-up.

Each run of a profile's server writes `server-<profile id>-<ms since epoch>.log` in the
logs folder. A stopped server's logs go; a failed server keeps its last one (its tail
explains the failure); the dashboard clears the rest at start.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger(__name__)

#: A server's log is trimmed to its last half when it grows past this.
LOG_MAX_BYTES = 4 * 1024 * 1024
LOG_TAIL_BYTES = 16 * 1024
LOG_TAIL_LINES = 40
LOG_GLOB = "server-*.log"


def log_path(logs_dir: Path, profile_id: int, now: float) -> Path:
    """The log file of a run of the profile's server started at `now` (wall clock)."""
    return logs_dir / f"server-{profile_id}-{int(now * 1000)}.log"


def read_tail(path: Path | str | None, max_bytes: int = LOG_TAIL_BYTES,
              lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ('' when there is none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        log.warning("cannot read log %s: %s", path, exc)
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def cap_log(path: Path, max_bytes: int = LOG_MAX_BYTES) -> bool:
    """Keep a log under max_bytes by keeping its last half. True when it was trimmed.

    The server appends (O_APPEND), so it keeps writing at the new end; lines it
    writes between our read and truncate are lost, which is fine for a log.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    keep = max_bytes // 2
    try:
        with path.open("r+b") as handle:
            handle.seek(size - keep)
            tail = handle.read(keep)
            newline = tail.find(b"\n")
            if newline >= 0:
                tail = tail[newline + 1:]
            handle.seek(0)
            handle.write(b"[... earlier output trimmed by mlx-manager ...]\n" + tail)
            handle.truncate()
    except OSError as exc:
        log.warning("cannot trim log %s: %s", path, exc)
        return False
    return True


def remove_logs(logs_dir: Path, profile_id: int, keep: Path | None = None) -> None:
    """Delete the logs of a profile's earlier runs (all but `keep`)."""
    for path in logs_dir.glob(f"server-{profile_id}-*.log"):
        if path != keep:
            _unlink(path)


def remove_stale_logs(logs_dir: Path, keep: Collection[Path]) -> list[Path]:
    """Delete every server log but those in `keep`; returns the deleted paths."""
    removed = [path for path in logs_dir.glob(LOG_GLOB) if path not in keep and _unlink(path)]
    if removed:
        log.info("removed %d old server log(s)", len(removed))
    return removed


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot delete log %s: %s", path, exc)
        return False
    return True

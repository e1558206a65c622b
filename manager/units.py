"""How sizes and durations read, everywhere: the one formatter of each.

Bytes are 1024-based and labelled B/KB/MB/GB/TB, as macOS shows memory and files.
Durations keep a tenth of a second under 10 s ("0.5 s", "2 s", "4.2 s": timeouts and
limits are that short; a span too short for a tenth reads "under 0.1 s", never "0 s") and
otherwise whole units: "45 s", "2 min 05 s", "1 h 02 min".
Unknown is "n/a".
"""

from __future__ import annotations

import math

NOT_AVAILABLE = "n/a"
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
_BYTE_UNITS = ("B", "KB", "MB", "GB", "TB")


def format_bytes(n: int | float | None) -> str:
    """"512 B", "1.5 KB", "12.0 GB", "5000.0 TB"; "n/a" for None."""
    if n is None:
        return NOT_AVAILABLE
    size = float(n)
    for unit in _BYTE_UNITS[:-1]:
        if abs(size) < KIB:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= KIB
    return f"{size:.1f} {_BYTE_UNITS[-1]}"


def format_duration(seconds: float | None) -> str:
    """"0.5 s", "2 s", "45 s", "2 min", "2 min 05 s", "3 h", "1 h 02 min"; "n/a" for None.

    Negative spans (clocks of two processes) read as 0; NaN and infinity as "n/a".
    """
    if seconds is None or not math.isfinite(seconds):
        return NOT_AVAILABLE
    seconds = max(0.0, seconds)
    tenths = round(seconds, 1)
    if 0 < seconds and tenths == 0:
        return "under 0.1 s"
    if tenths < 10:
        return f"{tenths:g} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    minutes = rest // 60
    return f"{hours} h {minutes:02d} min" if minutes else f"{hours} h"


def format_ago(seconds: float | None) -> str:
    """How long ago, as a person says it: "just now", "3 min ago", "2 h ago",
    "5 days ago"; "n/a" for None. A time slightly ahead (another clock) is "just now"."""
    if seconds is None or not math.isfinite(seconds):
        return NOT_AVAILABLE
    whole = int(seconds)
    if whole < 60:
        return "just now"
    if whole < 3600:
        return f"{whole // 60} min ago"
    if whole < 86400:
        return f"{whole // 3600} h ago"
    days = whole // 86400
    return f"{days} day{'s' if days != 1 else ''} ago"

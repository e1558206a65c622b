"""Timestamps stored in the database: the one way to write "now".

ISO 8601 in UTC with microseconds ("2026-12-01T21:05:09.123456+00:00"): two rows
written in the same second (chat messages) still sort in order. Older rows hold
whole seconds ("...T21:05:09+00:00"); both parse with `datetime.fromisoformat`, and
as text they still sort correctly against each other, because "+" sorts before ".".
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """Now, as stored: ISO 8601, UTC, microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")

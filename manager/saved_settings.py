"""Settings an admin changed in the dashboard, kept in SQLite (the `settings` table).

`Settings` (flags, environment) is read once at start; these are the choices made
later in the Admin tab. A flag or environment variable given for a run wins over them.
"""

from __future__ import annotations

import json
import logging

from manager.clock import utc_now
from manager.store import Store

log = logging.getLogger(__name__)


class SavedSettings:
    """Read and write one saved setting at a time; values are JSON."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get_bool(self, name: str) -> bool | None:
        """The saved value, or None when nobody saved one (or it is not a bool)."""
        with self._store.reading() as db:
            rows = list(db.query("SELECT value FROM settings WHERE name = ?", [name]))
        if not rows:
            return None
        try:
            value = json.loads(rows[0]["value"])
        except json.JSONDecodeError as exc:
            log.warning("saved setting %s is not JSON (%s): ignored", name, exc)
            return None
        return value if isinstance(value, bool) else None

    def set_bool(self, name: str, value: bool) -> None:
        with self._store.connect() as db:
            db.execute(
                "INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at", [name, json.dumps(value), utc_now()])

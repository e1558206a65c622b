"""Server-side session records: one row per sign-in, named by the `sid` in its cookie.

The signed cookie alone cannot be taken back; the row can. The session gate checks it on
every request, so signing out (or an admin's revoke) ends a session at once.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from manager.errors import NotFound
from manager.store import Store

log = logging.getLogger(__name__)

# last_seen_at is kept to the minute: one write per session per minute, not per request.
TOUCH_EVERY_S = 60
# Rows of sessions that ended this long ago are deleted when a new session starts.
KEEP_ENDED_S = 30 * 86400
MAX_USER_AGENT = 300


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user_id: int
    email: str
    created_at: str
    last_seen_at: str
    expires_at: str
    user_agent: str
    address: str
    revoked_at: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SessionRecord:
        return cls(id=row["id"], user_id=row["user_id"], email=row["email"],
                   created_at=row["created_at"], last_seen_at=row["last_seen_at"],
                   expires_at=row["expires_at"], user_agent=row["user_agent"],
                   address=row["address"], revoked_at=row["revoked_at"])


_SELECT = "SELECT sessions.*, users.email FROM sessions JOIN users ON users.id = sessions.user_id"


class SessionStore:
    """The sessions table. Knows nothing of rights: AuthService checks those."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def create(self, user_id: int, *, lifetime_s: int, user_agent: str = "",
               address: str = "") -> SessionRecord:
        now = self._clock()
        sid = secrets.token_urlsafe(24)
        with self._store.connect() as db:
            db.execute(
                "INSERT INTO sessions (id, user_id, created_at, last_seen_at, expires_at,"
                " user_agent, address) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [sid, user_id, iso(now), iso(now), iso(now + lifetime_s),
                 user_agent[:MAX_USER_AGENT], address],
            )
            # Housekeeping rides on sign-in, the only time rows are added.
            db.execute(
                "DELETE FROM sessions WHERE coalesce(revoked_at, expires_at) < ?",
                [iso(now - KEEP_ENDED_S)],
            )
        record = self.get(sid)
        if record is None:
            raise NotFound("The new session could not be read back.")
        return record

    def get(self, sid: str) -> SessionRecord | None:
        with self._store.reading() as db:
            rows = list(db.query(_SELECT + " WHERE sessions.id = ?", [sid]))
        return SessionRecord.from_row(rows[0]) if rows else None

    def is_live(self, sid: str, user_id: int) -> bool:
        """True if this session belongs to the user, is not revoked and has not expired.
        Called on every request: one indexed read on this thread's long-lived connection;
        last_seen_at is written at most once a minute."""
        rows = list(self._store.read().query(
            "SELECT last_seen_at FROM sessions WHERE id = ? AND user_id = ?"
            " AND revoked_at IS NULL AND expires_at > ?",
            [sid, user_id, iso(self._clock())],
        ))
        if not rows:
            return False
        now = self._clock()
        if now - _epoch(rows[0]["last_seen_at"]) >= TOUCH_EVERY_S:
            with self._store.connect() as db:
                db.execute("UPDATE sessions SET last_seen_at = ? WHERE id = ?", [iso(now), sid])
        return True

    def revoke(self, sid: str) -> bool:
        """Ends one session; False if it had already ended."""
        with self._store.connect() as db:
            cursor = db.execute(
                "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                [iso(self._clock()), sid])
            return cursor.rowcount > 0

    def revoke_all(self, user_id: int) -> int:
        """Ends every session of one user; returns how many were live."""
        with self._store.connect() as db:
            cursor = db.execute(
                "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                [iso(self._clock()), user_id])
            return cursor.rowcount

    def active(self, user_id: int | None = None) -> list[SessionRecord]:
        """Live sessions, most recently seen first; one user's, or everyone's."""
        sql = _SELECT + " WHERE sessions.revoked_at IS NULL AND sessions.expires_at > ?"
        params: list[Any] = [iso(self._clock())]
        if user_id is not None:
            sql += " AND sessions.user_id = ?"
            params.append(user_id)
        with self._store.reading() as db:
            rows = list(db.query(sql + " ORDER BY sessions.last_seen_at DESC, sessions.rowid",
                                 params))
        return [SessionRecord.from_row(row) for row in rows]

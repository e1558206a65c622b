"""SQLite storage: a connection per unit of work, WAL, append-only named migrations."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlite_utils import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[Database], None]


def _create_users(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE COLLATE NOCASE,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            status TEXT NOT NULL,
            token_version INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            approved_at TEXT,
            last_login_at TEXT
        )
        """
    )


# Append only: a migration that has shipped is never edited or reordered.
MIGRATIONS: tuple[Migration, ...] = (Migration("0001_users", _create_users),)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    """Opens short-lived connections to one SQLite file; safe to share across threads."""

    def __init__(self, path: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        self.path = path
        self._migrations = migrations
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL is a property of the file: set once, outside any transaction.
        conn = sqlite3.connect(path, timeout=15)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        self.migrate()

    @contextmanager
    def connect(self, *, immediate: bool = False) -> Iterator[Database]:
        """One unit of work: commits on success, rolls back on error, always closes.

        `immediate` takes the write lock up front, for read-then-write steps that must
        not interleave with another writer (e.g. "is this the first user?").
        """
        conn = sqlite3.connect(self.path, timeout=15, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=15000")
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield Database(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied now."""
        applied_now: list[str] = []
        with self.connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
            )
            done = {row["name"] for row in db.query("SELECT name FROM _migrations")}
            for migration in self._migrations:
                if migration.name in done:
                    continue
                log.info("applying migration %s to %s", migration.name, self.path)
                migration.apply(db)
                db.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    [migration.name, utc_now()],
                )
                applied_now.append(migration.name)
        return applied_now

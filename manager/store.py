"""SQLite storage: a connection per unit of work, WAL, append-only named migrations."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from manager.clock import utc_now
from manager.errors import StorageFull
from manager.settings import unusable_data_dir

log = logging.getLogger(__name__)

_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL: "database or disk is full"
_SQLITE_IOERR = 10  # "disk I/O error"
_ROOM = 1 << 20  # less free space than this on the data's disk counts as full
#: SQLite's answers for a file that cannot be written: PERM, READONLY, IOERR, CANTOPEN.
_UNWRITABLE = frozenset({3, 8, 10, 14})

# How long a unit of work waits for another writer before "database is locked".
BUSY_TIMEOUT_S = 15.0


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


def _create_api_keys(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            hint TEXT NOT NULL,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX api_keys_user ON api_keys(user_id)")


def _create_profiles_and_servers(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE profiles (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            description TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            host TEXT NOT NULL,
            port INTEGER NOT NULL,
            context_length INTEGER,
            max_tokens INTEGER,
            temperature REAL,
            top_p REAL,
            thinking INTEGER,
            system_prompt TEXT NOT NULL DEFAULT '',
            auto_start INTEGER NOT NULL DEFAULT 0,
            auto_restart INTEGER NOT NULL DEFAULT 0,
            idle_timeout_minutes INTEGER,
            owner_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    # One row per profile that has ever run: what `mlx-manager status` and a restarted
    # dashboard read to find (and adopt) live servers.
    db.execute(
        """
        CREATE TABLE servers (
            profile_id INTEGER PRIMARY KEY REFERENCES profiles(id) ON DELETE CASCADE,
            state TEXT NOT NULL,
            pid INTEGER,
            create_time REAL,
            cmdline TEXT,
            host TEXT,
            port INTEGER,
            log_path TEXT,
            started_at REAL,
            exit_code INTEGER,
            reason TEXT,
            updated_at TEXT NOT NULL
        )
        """
    )


def _create_models_tables(db: Database) -> None:
    """Downloads (state survives restarts), admin-added model folders, last use of models."""
    db.execute(
        """
        CREATE TABLE downloads (
            id INTEGER PRIMARY KEY,
            repo_id TEXT NOT NULL,
            revision TEXT,
            status TEXT NOT NULL,
            bytes_done INTEGER NOT NULL DEFAULT 0,
            bytes_total INTEGER,
            error TEXT,
            created_by INTEGER,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX downloads_repo ON downloads(repo_id)")
    db.execute(
        """
        CREATE TABLE model_folders (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            added_by INTEGER,
            added_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE TABLE model_usage (model TEXT PRIMARY KEY, last_used_at TEXT NOT NULL)")


def _create_chat_history(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE chats (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            server TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            title TEXT NOT NULL,
            custom_title INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX chats_owner_server ON chats(user_id, server, updated_at)")
    db.execute(
        """
        CREATE TABLE chat_messages (
            id INTEGER PRIMARY KEY,
            chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            thinking TEXT,
            thinking_seconds REAL,
            tool_calls TEXT NOT NULL DEFAULT '[]',
            tool_call_id TEXT,
            tool_name TEXT,
            meta TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            UNIQUE (chat_id, position)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE chat_attachments (
            id INTEGER PRIMARY KEY,
            chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
            message_id INTEGER NOT NULL REFERENCES chat_messages(id) ON DELETE CASCADE,
            path TEXT NOT NULL,
            name TEXT NOT NULL,
            mime TEXT NOT NULL,
            size INTEGER NOT NULL
        )
        """
    )


def _create_mcp_servers(db: Database) -> None:
    # Extra MCP servers an admin adds for the chat's tools (the built-in one is not stored).
    db.execute(
        """
        CREATE TABLE mcp_servers (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('stdio', 'http')),
            command TEXT,
            args TEXT NOT NULL DEFAULT '[]',
            url TEXT,
            enabled INTEGER NOT NULL DEFAULT 1,
            created_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )


def _chats_reference_profiles_by_id(db: Database) -> None:
    # Chats named their profile; a rename hid them. The id survives a rename; the old
    # `server` column keeps the name a chat was started with, for chats whose profile is
    # gone (a deleted profile leaves its chats, without a server).
    db.execute("ALTER TABLE chats ADD COLUMN profile_id INTEGER"
               " REFERENCES profiles(id) ON DELETE SET NULL")
    db.execute("UPDATE chats SET profile_id = (SELECT p.id FROM profiles p"
               " WHERE p.name = chats.server COLLATE NOCASE)")
    db.execute("CREATE INDEX chats_owner_profile ON chats(user_id, profile_id, updated_at)")


def _add_profile_server_keys(db: Database) -> None:
    # A model server reachable from the network gets its own API key (mlx_vlm has one).
    db.execute("ALTER TABLE profiles ADD COLUMN server_key TEXT")
    # Profiles already bound beyond loopback get theirs now (one random key per row).
    db.execute(
        "UPDATE profiles SET server_key = lower(hex(randomblob(32))) "
        "WHERE backend = 'mlx_vlm' AND host NOT IN ('localhost', '::1') "
        "AND host NOT LIKE '127.%'"
    )


def _create_sessions(db: Database) -> None:
    # One row per sign-in, named by the `sid` claim of its cookie (manager.accounts.sessions).
    db.execute(
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            last_seen_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            user_agent TEXT NOT NULL DEFAULT '',
            address TEXT NOT NULL DEFAULT '',
            revoked_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX sessions_user ON sessions(user_id, revoked_at)")


def _create_tool_checks(db: Database) -> None:
    # The tool-use check (manager.chat.toolcheck): admins' own scenarios, and every run
    # with one row per scenario (history kept: a re-run after a profile change compares).
    db.execute(
        """
        CREATE TABLE tool_check_scenarios (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE COLLATE NOCASE,
            definition TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            created_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE tool_check_runs (
            id INTEGER PRIMARY KEY,
            profile_id INTEGER REFERENCES profiles(id) ON DELETE SET NULL,
            profile_name TEXT NOT NULL,
            model TEXT NOT NULL,
            model_revision TEXT NOT NULL,
            setup TEXT NOT NULL DEFAULT '{}',
            user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
            status TEXT NOT NULL,
            score INTEGER NOT NULL DEFAULT 0,
            total INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT
        )
        """
    )
    db.execute("CREATE INDEX tool_check_runs_profile ON tool_check_runs(profile_id, id)")
    db.execute("CREATE INDEX tool_check_runs_model ON tool_check_runs(model, id)")
    db.execute(
        """
        CREATE TABLE tool_check_results (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES tool_check_runs(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            scenario TEXT NOT NULL,
            title TEXT NOT NULL,
            category TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT NOT NULL,
            latency_s REAL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            transcript TEXT NOT NULL DEFAULT '{}',
            UNIQUE (run_id, position)
        )
        """
    )


def _create_stored_responses(db: Database) -> None:
    # Responses API answers kept for previous_response_id (manager.chat.stored_responses):
    # the items before the response, its input items and the Response object, as JSON.
    db.execute(
        """
        CREATE TABLE stored_responses (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            created_at REAL NOT NULL,
            history TEXT NOT NULL,
            input TEXT NOT NULL,
            response TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX stored_responses_created ON stored_responses(created_at)")


def _add_server_argv_and_settings(db: Database) -> None:
    # A warm spare interpreter that became a server keeps its own command line (what
    # adoption matches); the server's argv (its model) is recorded beside it.
    db.execute("ALTER TABLE servers ADD COLUMN argv TEXT")
    # Settings an admin changed in the dashboard (name -> JSON value); flags and
    # environment variables still win for the run that sets them.
    db.execute(
        """
        CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )
        """
    )


def _add_profile_distributed(db: Database) -> None:
    # A profile served by several hosts keeps its DistributedSpec as JSON; NULL = one process.
    db.execute("ALTER TABLE profiles ADD COLUMN distributed TEXT")


# Append only: a migration that has shipped is never edited or reordered.
MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_users", _create_users),
    Migration("0002_gateway_api_keys", _create_api_keys),
    Migration("0003_servers_profiles", _create_profiles_and_servers),
    Migration("0004_models_downloads_library", _create_models_tables),
    Migration("0005_chat_history", _create_chat_history),
    Migration("0006_tools_mcp_servers", _create_mcp_servers),
    Migration("0007_chats_profile_id", _chats_reference_profiles_by_id),
    Migration("0008_profile_server_keys", _add_profile_server_keys),
    Migration("0009_sessions", _create_sessions),
    Migration("0010_tool_checks", _create_tool_checks),
    Migration("0011_stored_responses", _create_stored_responses),
    Migration("0012_server_argv_and_settings", _add_server_argv_and_settings),
    Migration("0013_profile_distributed", _add_profile_distributed),
)


def inserted_id(cursor: sqlite3.Cursor) -> int:
    """The rowid an INSERT just added (sqlite3 types lastrowid as optional)."""
    if cursor.lastrowid is None:
        raise RuntimeError("the INSERT added no row")
    return cursor.lastrowid


class Store:
    """Opens short-lived connections to one SQLite file; safe to share across threads."""

    def __init__(self, path: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        self.path = path
        self._migrations = migrations
        self._reader = threading.local()  # per-thread connections for read()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # WAL is a property of the file: set once, outside any transaction.
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            finally:
                conn.close()
            self.migrate()
        except (OSError, sqlite3.OperationalError) as exc:  # read-only, full, not a folder
            if isinstance(exc, sqlite3.OperationalError):
                if self._out_of_space(exc):
                    raise StorageFull(f"The disk that holds {path.parent} is full: free "
                                      "some space there and start again.") from exc
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _UNWRITABLE:
                    raise  # a lock held too long, a migration's own error: as they are
            raise unusable_data_dir(path.parent, path, exc) from exc

    @contextmanager
    def connect(self, *, immediate: bool = True) -> Iterator[Database]:
        """One unit of work: commits on success, rolls back on error, always closes.

        Write units take the write lock at BEGIN (`BEGIN IMMEDIATE`), waiting up to the
        busy timeout for it: a deferred transaction that reads and then writes fails at
        once with SQLITE_BUSY when another writer committed in between, and busy_timeout
        does not retry that. `immediate=False` (or reading()) is for units that only read:
        they run concurrently with writers and cannot write (query_only).
        """
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if not immediate:
                conn.execute("PRAGMA query_only=ON")
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield Database(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not self._out_of_space(exc):
                raise
            log.error("%s: %s", self.path, exc)
            raise StorageFull(
                f"The disk that holds the dashboard's data ({self.path.parent}) is full: "
                "nothing was saved. Free some space there and try again.") from exc
        finally:
            conn.close()

    def _out_of_space(self, exc: sqlite3.OperationalError) -> bool:
        """SQLITE_FULL, or an I/O error on a disk with no room left (a WAL index that
        cannot grow is SQLITE_IOERR_SHMSIZE)."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
        if code == _SQLITE_FULL:
            return True
        try:
            return code == _SQLITE_IOERR and shutil.disk_usage(self.path.parent).free < _ROOM
        except OSError as unreadable:
            log.warning("the free space of %s is unknown: %s", self.path.parent, unreadable)
            return False

    def reading(self) -> AbstractContextManager[Database]:
        """A read-only unit of work: one consistent snapshot, never blocks writers."""
        return self.connect(immediate=False)

    def read(self) -> Database:
        """For hot read paths (the gateway checks a key and a model name per request):
        this thread's own long-lived connection in autocommit mode, so each query sees
        the latest commit without paying ~0.4 ms to open a connection. Reads only: write
        through connect(), which keeps its transaction."""
        db = getattr(self._reader, "db", None)
        if db is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA query_only=ON")
            db = self._reader.db = Database(conn)
        return db

    def data_version(self) -> int:
        """A number that changes when another connection committed to the file since
        this thread last asked (SQLite's data_version on this thread's read()
        connection): what read_cache.ReadCache checks."""
        return int(self.read().conn.execute("PRAGMA data_version").fetchone()[0])

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

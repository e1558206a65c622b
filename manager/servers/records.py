"""The servers table: what the dashboard last recorded about each profile's server.

`mlx-manager status` reads it, and a restarted dashboard finds (and adopts) the
servers an earlier run left behind from it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass

from manager.clock import utc_now
from manager.servers.states import ServerState
from manager.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerRecord:
    """A row of the servers table."""

    profile_id: int
    profile_name: str
    state: ServerState
    pid: int | None
    create_time: float | None
    cmdline: tuple[str, ...]
    host: str | None
    port: int | None
    started_at: float | None
    exit_code: int | None
    reason: str
    log_path: str | None
    #: The server's argv when it differs from the process's cmdline (a warm spare
    #: became the server); empty otherwise.
    argv: tuple[str, ...] = ()


def read_records(store: Store) -> list[ServerRecord]:
    with store.reading() as db:
        rows = list(db.query(
            "SELECT s.*, p.name AS profile_name FROM servers s "
            "JOIN profiles p ON p.id = s.profile_id ORDER BY p.name COLLATE NOCASE"))
    records = []
    for row in rows:
        cmdline, argv = _strings(row, "cmdline"), _strings(row, "argv")
        records.append(ServerRecord(
            profile_id=row["profile_id"], profile_name=row["profile_name"],
            state=ServerState(row["state"]), pid=row["pid"], create_time=row["create_time"],
            cmdline=cmdline, host=row["host"], port=row["port"], started_at=row["started_at"],
            exit_code=row["exit_code"], reason=row["reason"] or "", log_path=row["log_path"],
            argv=argv))
    return records


def _strings(row: dict, column: str) -> tuple[str, ...]:
    try:
        return tuple(json.loads(row[column] or "[]"))
    except json.JSONDecodeError as exc:
        log.warning("bad %s recorded for profile %s: %s", column, row["profile_id"], exc)
        return ()


def write_record(store: Store, record: ServerRecord) -> None:
    """Insert or replace the row of the record's profile (profile_name is not stored)."""
    row = [record.profile_id, record.state.value, record.pid, record.create_time,
           json.dumps(list(record.cmdline)), record.host, record.port, record.log_path,
           record.started_at, record.exit_code, record.reason,
           json.dumps(list(record.argv)) if record.argv else None, utc_now()]
    try:
        with store.connect() as db:
            db.execute(
                "INSERT INTO servers (profile_id, state, pid, create_time, cmdline, host, "
                "port, log_path, started_at, exit_code, reason, argv, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(profile_id) DO UPDATE SET state = excluded.state, "
                "pid = excluded.pid, create_time = excluded.create_time, "
                "cmdline = excluded.cmdline, host = excluded.host, port = excluded.port, "
                "log_path = excluded.log_path, started_at = excluded.started_at, "
                "exit_code = excluded.exit_code, reason = excluded.reason, "
                "argv = excluded.argv, "
                "updated_at = excluded.updated_at", row)
    except sqlite3.IntegrityError as exc:
        # The profile was deleted meanwhile: nothing left to record against.
        log.info("not recording server of deleted profile %s: %s", record.profile_id, exc)
    except sqlite3.Error as exc:
        # A full disk, a database locked too long: the supervisor's state machine goes on
        # (a stop must not stay "Stopping"); `mlx-manager status` and the next dashboard
        # see the last state that was recorded.
        log.error("could not record that the server of profile %s is %s: %s",
                  record.profile_id, record.state.value, exc)

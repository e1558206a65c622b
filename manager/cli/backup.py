"""`mlx-manager backup PATH` and `mlx-manager restore PATH`.

Backup copies the database with SQLite's online backup API from one read transaction, so
the copy is a consistent snapshot even while the dashboard writes (WAL lets writers go
on meanwhile). It is written beside the target and renamed into place only once it
passes `PRAGMA integrity_check`. Restore first checks that the file is a sound database
of this app (and not from a newer version), refuses while a dashboard runs on the data
dir, keeps the current database aside, then copies the backup in with the same API.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from manager.cli.instance import hold_data_dir
from manager.errors import ManagerError
from manager.settings import Settings

log = logging.getLogger(__name__)

#: Tables every database of this app has had since its first migration.
REQUIRED_TABLES = frozenset({"_migrations", "users"})


@dataclass(frozen=True)
class DatabaseInfo:
    path: Path
    size_bytes: int
    migrations: tuple[str, ...]
    users: int


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=15, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=15000")
    return conn


def inspect_database(path: Path) -> DatabaseInfo:
    """What `path` holds, if it is a sound database of this app; raises ManagerError."""
    if not path.is_file():
        raise ManagerError(f"{path} is not a file.")
    with path.open("rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise ManagerError(f"{path} is not an SQLite database.")
    try:
        with _read_only(path) as conn:
            check = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            if check != ["ok"]:
                raise ManagerError(f"{path} is damaged: {'; '.join(check[:3])}")
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not REQUIRED_TABLES <= tables:
                raise ManagerError(f"{path} is an SQLite database, but not one of MLX Model "
                                   "Manager (it has no users or migrations table).")
            migrations = tuple(row[0] for row in conn.execute(
                "SELECT name FROM _migrations ORDER BY name"))
            users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        log.info("%s could not be read as a database: %s", path, exc)
        raise ManagerError(f"{path} cannot be read as a database: {exc}") from exc
    return DatabaseInfo(path, path.stat().st_size, migrations, users)


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """`path` opened read-only, so reading never changes it. A database in WAL mode still
    gets -wal and -shm files beside it when opened: those this made are removed after."""
    beside = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    made = [each for each in beside if not each.exists()]
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            yield conn
    finally:
        for each in made:
            each.unlink(missing_ok=True)


def copy_database(source: Path, target: Path, *, read_only_source: bool = False) -> None:
    """Copy with the online backup API: all pages from one read snapshot. The copy is
    one file (a rollback journal, not WAL): nothing beside it belongs to it."""
    with ExitStack() as stack:
        src = stack.enter_context(_read_only(source)) if read_only_source \
            else stack.enter_context(closing(_connect(source)))
        dst = stack.enter_context(closing(_connect(target)))
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")


def backup(settings: Settings, destination: Path, out: TextIO) -> DatabaseInfo:
    source = settings.db_path
    if not source.is_file():
        raise ManagerError(f"There is no database at {source} to back up (wrong --data-dir?).")
    if destination.is_dir():
        destination = destination / f"manager-{_stamp()}.db"
    if destination.exists():
        raise ManagerError(f"{destination} already exists; pick a new name so no backup "
                           "is overwritten.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        copy_database(source, partial)
        info = inspect_database(partial)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    info = DatabaseInfo(destination, info.size_bytes, info.migrations, info.users)
    print(f"Backed up {source} to {destination} ({info.size_bytes:,} bytes, "
          f"{info.users} account{'s' if info.users != 1 else ''}).", file=out)
    return info


def restore(settings: Settings, source: Path, out: TextIO) -> Path | None:
    """Replace the data dir's database with `source`; returns where the old one was kept."""
    from manager.store import MIGRATIONS  # (sqlite-utils: `backup` and `--help` need none)

    info = inspect_database(source)
    known = {migration.name for migration in MIGRATIONS}
    newer = [name for name in info.migrations if name not in known]
    if newer:
        raise ManagerError(f"{source} was made by a newer version of MLX Model Manager "
                           f"(it has migrations this one does not know: {', '.join(newer)}). "
                           "Upgrade first, then restore.")
    target = settings.db_path
    with hold_data_dir(settings.data_dir, "mlx-manager restore"):
        kept = None
        if target.exists():
            kept = target.with_name(f"{target.name}.before-restore-{_stamp()}")
            copy_database(target, kept)
        copy_database(source, target, read_only_source=True)
        with closing(_connect(target)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"Restored {target} from {source} ({info.users} account"
          f"{'s' if info.users != 1 else ''}).", file=out)
    if kept is not None:
        print(f"The database it replaced is kept as {kept}.", file=out)
    print("Start the dashboard again; it applies any newer migrations itself.", file=out)
    return kept


def add_commands(sub: argparse._SubParsersAction,
                 data_dir_flag: Callable[[argparse.ArgumentParser, object], None]) -> None:
    made = sub.add_parser("backup", help="copy the database safely, even while the "
                                          "dashboard runs")
    made.add_argument("path", type=Path, help="a new file, or a folder to put it in")
    data_dir_flag(made, argparse.SUPPRESS)
    back = sub.add_parser("restore", help="put a backup back (the dashboard must be stopped)")
    back.add_argument("path", type=Path, help="a file made by `mlx-manager backup`")
    data_dir_flag(back, argparse.SUPPRESS)


def run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.command == "backup":
        backup(settings, args.path.expanduser(), out)
    else:
        restore(settings, args.path.expanduser(), out)
    return 0

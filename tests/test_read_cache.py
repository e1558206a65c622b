"""read_cache.ReadCache against a real SQLite file: values are kept while nothing is
committed, and read again after a commit: this process's at once, another's soon."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from manager.read_cache import MAX_ENTRIES, ReadCache, checked_now
from manager.store import OTHER_PROCESSES_S, Store
from tests.conftest import Clock


def names(store: Store) -> list[str]:
    return [row["name"] for row in store.read().query("SELECT name FROM notes ORDER BY name")]


def test_values_are_kept_until_a_commit_this_process_made_or_another_made_a_while_ago(
        tmp_path: Path, clock: Clock) -> None:
    """This process's commits are seen at once. Another process's are seen once
    OTHER_PROCESSES_S passed: SQLite's data_version is asked that often, not per read."""
    store = Store(tmp_path / "m.db")
    store.clock = clock
    with store.connect() as db:
        db.execute("CREATE TABLE notes (name TEXT)")
        db.execute("INSERT INTO notes VALUES ('a')")
    cache: ReadCache[list[str]] = ReadCache(store)
    reads: list[int] = []
    asked = data_versions_asked(store)

    def read() -> list[str]:
        reads.append(1)
        return names(store)

    assert cache.get("k", read) == ["a"]
    assert cache.get("k", read) == ["a"]
    assert len(reads) == 1  # nothing committed: kept
    with store.connect() as db:  # this process, another connection
        db.execute("INSERT INTO notes VALUES ('b')")
    with store.reading() as db:  # a read-only unit commits nothing
        db.execute("SELECT 1")
    assert cache.get("k", read) == ["a", "b"]
    assert cache.get("k", read) == ["a", "b"]
    assert len(reads) == 2 and len(asked) == 1  # the first get's only
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                    "c.execute(\"DELETE FROM notes WHERE name = 'a'\"); c.commit()",
                    str(store.path)], check=True)
    clock.now += OTHER_PROCESSES_S / 2
    assert cache.get("k", read) == ["a", "b"]  # another process's commit: not seen yet
    assert len(asked) == 1
    clock.now += OTHER_PROCESSES_S / 2
    assert cache.get("k", read) == ["b"]
    assert len(reads) == 3 and len(asked) == 2
    clock.now -= 10 * OTHER_PROCESSES_S  # a clock that went back: asked again, not trusted
    assert cache.get("k", read) == ["b"] and len(asked) == 3


def test_each_thread_keeps_its_own_and_a_full_cache_starts_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    cache: ReadCache[int] = ReadCache(store)
    computed = []

    def value(n: int) -> int:
        computed.append(n)
        return n

    for n in range(MAX_ENTRIES):
        assert cache.get(n, lambda n=n: value(n)) == n
    assert cache.get(0, lambda: value(-1)) == 0  # still there
    with ThreadPoolExecutor(1) as pool:  # another thread computes its own
        assert pool.submit(cache.get, 0, lambda: value(-2)).result() == -2
    assert cache.get(MAX_ENTRIES, lambda: value(MAX_ENTRIES)) == MAX_ENTRIES
    assert cache.get(0, lambda: value(-3)) == -3  # the full cache was started again


def test_a_version_checked_earlier_on_this_thread_is_used_not_read_again(
        tmp_path: Path, clock: Clock) -> None:
    """A gateway request checks the database version once (its key) and reads its
    profile as of then. Another thread's check is not this thread's (each has its own
    connection and numbers): it reads its own, asking SQLite once."""
    store = Store(tmp_path / "m.db")
    store.clock = clock
    with store.connect() as db:
        db.execute("CREATE TABLE notes (name TEXT)")
        db.execute("INSERT INTO notes VALUES ('a')")
    cache: ReadCache[list[str]] = ReadCache(store)
    checked = checked_now(store)
    assert cache.get("k", lambda: names(store), checked=checked) == ["a"]
    with store.connect() as db:
        db.execute("INSERT INTO notes VALUES ('b')")
    assert cache.get("k", lambda: names(store), checked=checked) == ["a"]  # as of then
    assert cache.get("k", lambda: names(store)) == ["a", "b"]  # a new request reads anew

    def elsewhere() -> tuple[list[str], int]:  # another thread's token is not used
        asked = data_versions_asked(store)
        cache.get("k", lambda: names(store), checked=checked)
        return cache.get("k", lambda: names(store), checked=checked), len(asked)

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(elsewhere).result() == (["a", "b"], 1)


def data_versions_asked(store: Store) -> list[str]:
    """The `PRAGMA data_version` statements this thread's read connection runs from now."""
    asked: list[str] = []
    store.read().conn.set_trace_callback(
        lambda sql: asked.append(sql) if "data_version" in sql else None)
    return asked

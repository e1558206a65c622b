"""read_cache.ReadCache against a real SQLite file: values are kept while nothing is
committed, and read again after any commit, from this process or another."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from manager.read_cache import MAX_ENTRIES, ReadCache, checked_now
from manager.store import Store


def names(store: Store) -> list[str]:
    return [row["name"] for row in store.read().query("SELECT name FROM notes ORDER BY name")]


def test_values_are_kept_until_a_commit_from_any_connection(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    with store.connect() as db:
        db.execute("CREATE TABLE notes (name TEXT)")
        db.execute("INSERT INTO notes VALUES ('a')")
    cache: ReadCache[list[str]] = ReadCache(store)
    reads = []

    def read() -> list[str]:
        reads.append(1)
        return names(store)

    assert cache.get("k", read) == ["a"]
    assert cache.get("k", read) == ["a"]
    assert len(reads) == 1  # nothing committed: kept
    with store.connect() as db:  # this process, another connection
        db.execute("INSERT INTO notes VALUES ('b')")
    assert cache.get("k", read) == ["a", "b"]
    with Store(tmp_path / "m.db").connect() as db:  # as another process would
        db.execute("DELETE FROM notes WHERE name = 'a'")
    assert cache.get("k", read) == ["b"]
    assert len(reads) == 3


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


def test_a_version_checked_earlier_on_this_thread_is_used_not_asked_again(
        tmp_path: Path) -> None:
    """A gateway request checks the database version once (its key) and reads its
    profile as of then: no second PRAGMA data_version. Another thread's check is not
    this thread's (each has its own connection and numbers): it asks."""
    store = Store(tmp_path / "m.db")
    with store.connect() as db:
        db.execute("CREATE TABLE notes (name TEXT)")
        db.execute("INSERT INTO notes VALUES ('a')")
    cache: ReadCache[list[str]] = ReadCache(store)
    asked: list[str] = []
    store.read().conn.set_trace_callback(
        lambda sql: asked.append(sql) if "data_version" in sql else None)
    checked = checked_now(store)
    assert cache.get("k", lambda: names(store), checked=checked) == ["a"]
    assert len(asked) == 1  # checked_now's own
    with store.connect() as db:
        db.execute("INSERT INTO notes VALUES ('b')")
    assert cache.get("k", lambda: names(store), checked=checked) == ["a"]  # as of then
    assert len(asked) == 1
    assert cache.get("k", lambda: names(store)) == ["a", "b"]  # a new request asks
    assert len(asked) == 2


    def elsewhere() -> int:  # the token of another thread is not used: it asks
        mine: list[str] = []
        store.read().conn.set_trace_callback(
            lambda sql: mine.append(sql) if "data_version" in sql else None)
        cache.get("k", lambda: names(store), checked=checked)
        cache.get("k", lambda: names(store), checked=checked)
        return len(mine)

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(elsewhere).result() == 2

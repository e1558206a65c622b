"""read_cache.ReadCache against a real SQLite file: values are kept while nothing is
committed, and read again after any commit, from this process or another."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from manager.read_cache import MAX_ENTRIES, ReadCache
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

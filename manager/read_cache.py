"""Rows the gateway reads on every request, kept until the database changes.

Each gateway request reads its API key and the profiles (Store.read(), a long-lived
connection per thread). They change a few times a day, so a thread keeps what it read
and asks SQLite one cheap question per use instead: `PRAGMA data_version`, which
changes whenever any other connection (this process's or another's, say the CLI's)
committed to the file. So a revoked key or a disabled account is still refused from the
very next request, and nothing read here is older than the last commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from manager.store import Store

T = TypeVar("T")

#: Past this many entries a thread's cache starts again (keys that do not exist are
#: kept too, and anyone can send those).
MAX_ENTRIES = 256

#: A data_version as one thread read it: (thread ident, version). The numbers are the
#: thread's own connection's, so another thread asks SQLite itself.
Checked = tuple[int, int]


def checked_now(store: Store) -> Checked:
    """The store's data_version, read now on this thread, for `ReadCache.get(checked=)`."""
    return threading.get_ident(), store.data_version()


class ReadCache(Generic[T]):
    """Values computed from rows read through `store.read()`, per thread, dropped at
    the first commit to the database after they were read."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._local = threading.local()

    def get(self, key: Hashable, compute: Callable[[], T], *,
            checked: Checked | None = None) -> T:
        """The value of `key`. `checked`: a version this thread read earlier in the same
        unit of work (a gateway request checks it once, for its key, and reads its
        profile as of then) instead of asking SQLite again (~50 us with cold caches)."""
        local = self._local
        if checked is not None and checked[0] == threading.get_ident():
            version = checked[1]
        else:
            version = self._store.data_version()
        values: dict[Hashable, T] | None = getattr(local, "values", None)
        if values is None or local.version != version:
            # Read after the version: a commit in between is seen by the read, and then
            # the next call sees a new version and reads again.
            values = local.values = {}
            local.version = version
        try:
            return values[key]
        except KeyError:
            if len(values) >= MAX_ENTRIES:
                values.clear()
            value = values[key] = compute()
            return value

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


class ReadCache(Generic[T]):
    """Values computed from rows read through `store.read()`, per thread, dropped at
    the first commit to the database after they were read."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._local = threading.local()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        local = self._local
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

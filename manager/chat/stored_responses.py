"""Responses the gateway stored (OpenAI Responses API, `store: true`), per owner.

A stored response keeps the items that came before it (the conversation it continued),
its own input items and the Response object, so `previous_response_id` continues the
conversation without walking a chain (deleting or pruning an earlier response leaves
later ones whole).

A stream's response is stored from the event loop (`save_soon`): it is found at once
and written by one worker thread, so a client may continue from it the moment its last
event arrives while the event loop never waits for the database.

Every read and write names the owner in its SQL, so another user's response id finds
nothing: the answer is the same "not found" as for an id that never existed. Responses
older than the retention are not found either, and are deleted (pruned) as new ones
are saved.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from manager.accounts.auth import User
from manager.errors import NotFound, ValidationError
from manager.store import Store

log = logging.getLogger(__name__)

DAY_S = 86_400.0
#: Old responses are pruned at most this often (on a save).
PRUNE_EVERY_S = 3_600.0
MAX_PAGE = 100

Item = dict[str, Any]


@dataclass(frozen=True)
class StoredResponse:
    id: str
    model: str
    created_at: float
    history: list[Item]
    input: list[Item]
    response: dict[str, Any]
    size: int = 0  # bytes of its stored JSON


    def context(self) -> list[Item]:
        """The conversation a response that continues this one builds on."""
        return [*self.history, *self.input, *(self.response.get("output") or [])]


@dataclass(frozen=True)
class _Row:
    """A response on its way to the database."""

    owner_id: int
    stored: StoredResponse
    texts: tuple[str, str, str]  # history, input, response as JSON


@dataclass(frozen=True)
class ItemPage:
    items: list[Item]
    has_more: bool


class ResponseStore:
    """Stored responses with a retention in days (0: nothing is stored)."""

    def __init__(self, store: Store, retention_days: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        if retention_days < 0:
            raise ValidationError("The retention of stored responses cannot be negative.",
                                  "responses_retention_days")
        self._store = store
        self.retention_days = retention_days
        self._clock = clock
        self._lock = threading.Lock()  # the pending rows and the prune time
        self._write_lock = threading.Lock()  # a write, against a delete of the same row
        self._pending: dict[str, _Row] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="responses-store")
        self._pruned_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.retention_days > 0

    def _oldest_kept(self) -> float:
        return self._clock() - self.retention_days * DAY_S

    def save(self, owner: User, response: Mapping[str, Any], *,
             history: Sequence[Mapping[str, Any]], input_items: Sequence[Mapping[str, Any]]
             ) -> bool:
        """Stores a finished response; False when storing is turned off."""
        if not self.enabled:
            return False
        with self._write_lock:
            self._insert(self._row(owner, response, history, input_items))
        return True

    def save_soon(self, owner: User, response: Mapping[str, Any], *,
                  history: Sequence[Mapping[str, Any]],
                  input_items: Sequence[Mapping[str, Any]]) -> bool:
        """`save` for the event loop: found by `get` at once, written by a worker thread
        (a write may wait for another writer; the event loop must not)."""
        if not self.enabled:
            return False
        row = self._row(owner, response, history, input_items)
        with self._lock:
            self._pending[row.stored.id] = row
        self._writer.submit(self._flush, row.stored.id)
        return True

    def close(self) -> None:
        """Writes what is pending; safe to call twice."""
        self._writer.shutdown(wait=True)

    def _row(self, owner: User, response: Mapping[str, Any],
             history: Sequence[Mapping[str, Any]], input_items: Sequence[Mapping[str, Any]]
             ) -> _Row:
        texts = (_dumps(history), _dumps(input_items), _dumps(response))
        stored = StoredResponse(str(response["id"]), str(response.get("model") or ""),
                                self._clock(), [dict(i) for i in history],
                                [dict(i) for i in input_items], dict(response),
                                size=sum(len(text) for text in texts))
        return _Row(owner.id, stored, texts)

    def _flush(self, response_id: str) -> None:
        with self._write_lock:
            with self._lock:
                row = self._pending.get(response_id)
            if row is None:
                return  # deleted before it was written
            try:
                self._insert(row)
            except sqlite3.Error as exc:
                log.error("could not store response %s: %s", response_id, exc)
            finally:
                with self._lock:
                    self._pending.pop(response_id, None)

    def _insert(self, row: _Row) -> None:
        """Under the write lock."""
        stored = row.stored
        with self._store.connect() as db:
            db.execute(
                "INSERT INTO stored_responses (id, user_id, model, created_at, history, input,"
                " response) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [stored.id, row.owner_id, stored.model, stored.created_at, *row.texts])
        if self._prune_due():
            self.prune()

    def get(self, owner: User, response_id: str) -> StoredResponse:
        with self._lock:
            pending = self._pending.get(response_id)
        if pending is not None and pending.owner_id == owner.id \
                and pending.stored.created_at >= self._oldest_kept():
            return pending.stored
        with self._store.reading() as db:
            rows = list(db.query(
                "SELECT * FROM stored_responses WHERE id = ? AND user_id = ?"
                " AND created_at >= ?", [response_id, owner.id, self._oldest_kept()]))
        if not rows:
            raise NotFound(_missing(response_id))
        row = rows[0]
        texts = (row["history"], row["input"], row["response"])
        return StoredResponse(row["id"], row["model"], row["created_at"],
                              json.loads(texts[0]), json.loads(texts[1]), json.loads(texts[2]),
                              size=sum(len(text) for text in texts))

    def delete(self, owner: User, response_id: str) -> None:
        with self._write_lock:  # not while it is being written
            with self._lock:
                row = self._pending.get(response_id)
                if row is not None and row.owner_id == owner.id:
                    del self._pending[response_id]
            with self._store.connect() as db:
                cursor = db.execute("DELETE FROM stored_responses WHERE id = ? AND user_id = ?",
                                    [response_id, owner.id])
                deleted = cursor.rowcount or (row is not None and row.owner_id == owner.id)
        if not deleted:
            raise NotFound(_missing(response_id))
        log.info("stored response %s of %s deleted", response_id, owner.email)

    def input_items(self, owner: User, response_id: str, *, limit: int = 20,
                    order: str = "desc", after: str | None = None) -> ItemPage:
        """A page of a response's input items, newest first unless order is 'asc'."""
        if order not in ("asc", "desc"):
            raise ValidationError("order: must be 'asc' or 'desc'", "order")
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationError(f"limit: must be between 1 and {MAX_PAGE}", "limit")
        items = list(self.get(owner, response_id).input)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise ValidationError(f"after: no input item {after!r} in this response",
                                      "after")
            items = items[ids.index(after) + 1:]
        return ItemPage(items[:limit], len(items) > limit)

    def prune(self) -> int:
        """Deletes responses older than the retention; returns how many."""
        with self._lock:
            self._pruned_at = self._clock()
        with self._store.connect() as db:
            deleted = db.execute("DELETE FROM stored_responses WHERE created_at < ?",
                                 [self._oldest_kept()]).rowcount
        if deleted:
            log.info("pruned %d stored responses older than %g days", deleted,
                     self.retention_days)
        return deleted

    def _prune_due(self) -> bool:
        with self._lock:
            return self._pruned_at is None or self._clock() - self._pruned_at >= PRUNE_EVERY_S


def _missing(response_id: str) -> str:
    return (f"No stored response with id {response_id[:100]!r} for this API key's account "
            "(it may have been deleted, or be older than the retention).")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

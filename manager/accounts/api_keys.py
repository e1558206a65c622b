"""API keys for the OpenAI/Anthropic gateway: shown once, stored as a hash, revocable.

Keys are 256-bit random tokens, so a plain SHA-256 is enough to store them safely
(there is nothing to brute-force), and it keeps the per-request check cheap.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from manager.accounts.auth import AuthService, User
from manager.accounts.permissions import Action, Owned, require
from manager.clock import utc_now
from manager.errors import NotFound, PermissionDenied, ValidationError
from manager.read_cache import Checked, ReadCache, checked_now
from manager.store import Store

log = logging.getLogger(__name__)

KEY_PREFIX = "mlxm-"
MAX_NAME = 64
#: last_used_at is a hint for people, not an audit log: one write a minute per key.
TOUCH_EVERY_S = 60


@dataclass(frozen=True)
class ApiKey:
    id: int
    user_id: int
    owner_email: str
    name: str
    hint: str  # the first characters, so people can tell their keys apart
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        return cls(
            id=row["id"], user_id=row["user_id"], owner_email=row["email"], name=row["name"],
            hint=row["hint"], created_at=row["created_at"], last_used_at=row["last_used_at"],
            revoked_at=row["revoked_at"],
        )


@dataclass(frozen=True)
class NewKey:
    """The one moment the secret exists in clear: show it, then forget it."""

    key: ApiKey
    secret: str


@dataclass(frozen=True)
class KeyMatch:
    """Whose key it is (one read); `touch_due` when its last_used_at should be written."""

    user: User
    key_id: int
    touch_due: bool
    #: The key's name (for logs: never the key itself).
    name: str = ""
    #: The database's version this lookup saw (read_cache.Checked): the same request's
    #: other reads (its profile) may use it instead of asking SQLite again.
    checked: Checked | None = None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _touch_at(last_used_at: str | None) -> float:
    """When (time.time()) a key's last_used_at (ISO-8601 UTC) is old enough to be
    written again; 0.0 (at once) when it is unset or unreadable."""
    if not last_used_at:
        return 0.0
    try:
        used = datetime.fromisoformat(last_used_at)
    except ValueError:
        log.warning("unreadable last_used_at %r: rewriting it", last_used_at)
        return 0.0
    if used.tzinfo is None:  # written as UTC (clock.utc_now)
        used = used.replace(tzinfo=timezone.utc)
    return used.timestamp() + TOUCH_EVERY_S


_SELECT = (
    "SELECT api_keys.*, users.email FROM api_keys JOIN users ON users.id = api_keys.user_id"
)


class ApiKeyService:
    def __init__(self, store: Store, auth: AuthService) -> None:
        self._store = store
        self._auth = auth
        # A key's owner, id, next touch and name per secret, until the database changes.
        self._found: ReadCache[tuple[User, int, float, str] | None] = ReadCache(store)

    def create(self, owner: User, name: str = "") -> NewKey:
        label = (name or "").strip() or "default"
        if len(label) > MAX_NAME:
            raise ValidationError(f"Key names are at most {MAX_NAME} characters.", "name")
        fresh = self._auth.get(owner.id)
        if fresh is None or fresh.status.value != "active":
            raise PermissionDenied("Only active accounts can create API keys.")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._store.connect() as db:
            db.execute(
                "INSERT INTO api_keys (user_id, name, key_hash, hint, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [owner.id, label, _digest(secret), secret[: len(KEY_PREFIX) + 6], utc_now()],
            )
            key_id = next(db.query("SELECT last_insert_rowid() AS id"))["id"]
        log.info("API key %s (%s) created for %s", key_id, label, owner.email)
        return NewKey(self._get(key_id), secret)

    def list_for(self, actor: User, *, everyone: bool = False) -> list[ApiKey]:
        """The actor's own keys; with everyone=True (admins only) every user's keys."""
        if everyone:
            require(self._fresh(actor), Action.VIEW_ALL)
            sql, params = _SELECT + " ORDER BY api_keys.id DESC", []
        else:
            sql, params = _SELECT + " WHERE user_id = ? ORDER BY api_keys.id DESC", [actor.id]
        with self._store.reading() as db:
            return [ApiKey.from_row(row) for row in db.query(sql, params)]

    def revoke(self, actor: User, key_id: int) -> ApiKey:
        key = self._get(key_id)
        require(self._fresh(actor), Action.KEY_REVOKE, Owned.by(key.user_id))
        if key.revoked_at is None:
            with self._store.connect() as db:
                db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [utc_now(), key_id])
            log.info("API key %s revoked by %s", key_id, actor.email)
        return self._get(key_id)

    def lookup(self, secret: str | None) -> KeyMatch | None:
        """The active user behind a key, or None: one indexed read on this thread's
        long-lived connection (Store.read), kept until the next commit to the database
        (read_cache), and no write, so a revoked key or a disabled account is refused
        from the very next request. The gateway calls it on every request and leaves
        the `touch` (a write) to a worker thread."""
        if not secret or not secret.startswith(KEY_PREFIX):
            return None
        # Kept by the secret itself, and the time of the next touch as a number: a hash
        # and two timestamps parsed per request cost ~50 us on the gateway's cold path
        # (the code runs once per request, out of the CPU's caches).
        checked = checked_now(self._store)
        found = self._found.get(secret, lambda: self._read_key(_digest(secret)),
                                checked=checked)
        if found is None:
            return None
        user, key_id, touch_at, name = found
        return KeyMatch(user, key_id, time.time() >= touch_at, name, checked)

    def _read_key(self, digest: str) -> tuple[User, int, float, str] | None:
        rows = list(self._store.read().query(
            "SELECT users.*, api_keys.id AS key_id, api_keys.last_used_at AS key_used_at,"
            " api_keys.name AS key_name"
            " FROM api_keys JOIN users ON users.id = api_keys.user_id"
            " WHERE api_keys.key_hash = ? AND api_keys.revoked_at IS NULL",
            [digest],
        ))
        if not rows:
            return None
        user = User.from_row(rows[0])
        if user.status.value != "active":
            return None
        return (user, rows[0]["key_id"], _touch_at(rows[0]["key_used_at"]),
                rows[0]["key_name"] or "")

    def touch(self, key_id: int) -> None:
        """Record that a key was used now (last_used_at is kept to the minute)."""
        with self._store.connect() as db:
            db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", [utc_now(), key_id])

    def authenticate(self, secret: str | None) -> User | None:
        """The active user behind a key, or None; last_used_at written when due."""
        found = self.lookup(secret)
        if found is None:
            return None
        if found.touch_due:
            self.touch(found.key_id)
        return found.user

    def _get(self, key_id: int) -> ApiKey:
        with self._store.reading() as db:
            rows = list(db.query(_SELECT + " WHERE api_keys.id = ?", [key_id]))
        if not rows:
            raise NotFound("That API key does not exist.")
        return ApiKey.from_row(rows[0])

    def _fresh(self, actor: User) -> User:
        """The actor as the database knows it now: a demotion or a disabled account counts
        at once, not when the session ends."""
        fresh = self._auth.get(actor.id)
        if fresh is None:
            raise PermissionDenied("Your account no longer exists.")
        return fresh

"""API keys at the gateway's door: the SessionGate hook that claims every gateway path
and attaches the key's user (or None), and the 401 a request without a valid key gets."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from anyio import to_thread
from starlette.requests import HTTPConnection

from manager.accounts.auth import User
from manager.api.session_gate import ExtraAuth
from manager.api.wire import Failure, api_key_from, is_gateway_path
from manager.read_cache import Checked
from manager.services import Services

log = logging.getLogger(__name__)

_STATE_KEY = "api_user"
_KEY_ID = "api_key_id"
_KEY_NAME = "api_key_name"
_CHECKED = "api_checked"


def api_user(conn: HTTPConnection) -> User | None:
    return conn.scope.get("state", {}).get(_STATE_KEY)


def api_key_id(conn: HTTPConnection) -> int | None:
    return conn.scope.get("state", {}).get(_KEY_ID)


def api_checked(conn: HTTPConnection) -> Checked | None:
    """The database version the key's lookup saw (read_cache.Checked), for the
    request's own reads."""
    return conn.scope.get("state", {}).get(_CHECKED)


def gateway_auth(services: Services) -> ExtraAuth:
    """The SessionGate hook: claims gateway paths and attaches the API key's user.

    The key is looked up on the event loop itself: one indexed SQLite read on a
    long-lived connection (~10 us; WAL readers do not wait for writers) costs less
    than a hop to a worker thread and back, and it runs on every request. The
    last-used write, due at most once a minute per key, goes to a worker thread.
    """
    keys = services.api_keys
    pending: set[asyncio.Future[Any]] = set()

    def touch(key_id: int) -> None:
        try:
            keys.touch(key_id)
        except sqlite3.Error as exc:
            log.warning("could not record the use of API key %s: %s", key_id, exc)

    async def claim(conn: HTTPConnection) -> bool:
        if conn.scope["type"] != "http" or not is_gateway_path(conn.scope["path"]):
            return False
        secret = api_key_from(conn.headers)
        found = keys.lookup(secret) if secret else None
        if found is not None and found.touch_due:
            task = asyncio.ensure_future(to_thread.run_sync(touch, found.key_id))
            pending.add(task)
            task.add_done_callback(pending.discard)
        state = conn.scope.setdefault("state", {})
        state[_STATE_KEY] = found.user if found else None
        state[_KEY_ID] = found.key_id if found else None
        state[_KEY_NAME] = found.name if found else None
        state[_CHECKED] = found.checked if found else None
        return True

    return claim


def refusal(conn: HTTPConnection) -> Failure:
    if api_key_from(conn.headers):
        return Failure(401, "This API key is not valid: it was revoked, mistyped, or its "
                       "account is disabled. Create a key on the dashboard's API keys tab.",
                       "invalid_api_key")
    return Failure(401, "Send an API key as 'Authorization: Bearer <key>' or 'x-api-key: "
                   "<key>'. Create one on the dashboard's API keys tab.", "missing_api_key")


def key_label(conn: HTTPConnection) -> str:
    """Whose key a request carried, for logs: the key's name and its owner, never the key."""
    user = api_user(conn)
    if user is not None:
        name = conn.scope.get("state", {}).get(_KEY_NAME) or "unnamed"
        return f"key {name!r} of {user.email}"
    return "an invalid key" if api_key_from(conn.headers) else "no key"


def one_line(text: str) -> str:
    """`text` with its control characters escaped: a path or a message a client chose
    (`/v1/x%0a...`) cannot start a log line of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def log_refusal(conn: HTTPConnection, failure: Failure, model: str | None = None) -> None:
    """One WARNING line for a gateway request that was refused or failed: who (the
    key's name), the route, the model and the reason."""
    log.warning("gateway %s %s refused with %s (%s, model %s): %s",
                conn.scope.get("method", "GET"), one_line(conn.scope.get("path", "?")),
                failure.status, key_label(conn), repr(model) if model else "not named",
                one_line(failure.message))

"""Accounts: registration, approval, roles, argon2 passwords, JWT sessions, login limits."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from email_validator import EmailNotValidError, validate_email
from sqlite_utils import Database

from manager.accounts.limits import LoginLimiter, RegistrationLimiter
from manager.accounts.permissions import Action, Owned, require
from manager.accounts.sessions import SessionRecord, SessionStore
from manager.clock import utc_now
from manager.errors import (
    AccountNotActive,
    AuthenticationFailed,
    Conflict,
    NotFound,
    PermissionDenied,
    StorageFull,
    ValidationError,
)
from manager.store import Store

log = logging.getLogger(__name__)

MIN_PASSWORD = 8
MAX_PASSWORD = 128
JWT_ALGORITHM = "HS256"
SECRET_BYTES = 48
BAD_CREDENTIALS = "Wrong email or password."
# How long a browser stays "known" to the login throttle after signing in.
DEVICE_SECONDS = 365 * 86400


class Role(str, Enum):
    ADMIN = "admin"
    USER = "user"


class Status(str, Enum):
    PENDING = "pending"
    ACTIVE = "active"
    DISABLED = "disabled"
    REJECTED = "rejected"


_INACTIVE_MESSAGES = {
    Status.PENDING: "Your account is waiting for an administrator's approval.",
    Status.REJECTED: "Your registration was not approved. Ask an administrator.",
    Status.DISABLED: "This account is disabled. Ask an administrator.",
}


@dataclass(frozen=True)
class User:
    id: int
    email: str
    role: Role
    status: Status
    token_version: int
    created_at: str
    approved_at: str | None
    last_login_at: str | None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN and self.status is Status.ACTIVE

    @property
    def is_active(self) -> bool:
        return self.status is Status.ACTIVE

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> User:
        return cls(
            id=row["id"],
            email=row["email"],
            role=Role(row["role"]),
            status=Status(row["status"]),
            token_version=row["token_version"],
            created_at=row["created_at"],
            approved_at=row["approved_at"],
            last_login_at=row["last_login_at"],
        )


def load_or_create_secret(path: Path) -> bytes:
    """The JWT signing key: random bytes created once, readable by the owner only."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = secrets.token_bytes(SECRET_BYTES)
        # O_EXCL: two processes starting at once must not overwrite each other's key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_secret(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            # Left empty or short, the key would be refused at every later start.
            path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"The disk that holds {path.parent} is full: the session "
                                  "key could not be written. Free some space there and "
                                  "start again.") from exc
            raise
        log.info("created a new session signing key at %s", path)
        return data
    if len(data) < 32:
        raise ValidationError(f"The session key {path} is shorter than 32 bytes; delete it.")
    return data


def normalize_email(email: str) -> str:
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(f"That is not a valid email address: {exc}", "email") from exc
    return result.normalized.lower()


def check_password_rules(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValidationError(
            f"Passwords must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long.", "password"
        )


class AuthService:
    """Everything about accounts. Actor-taking methods check the actor's rights themselves."""

    def __init__(
        self,
        store: Store,
        secret: bytes,
        *,
        session_days: int = 7,
        limiter: LoginLimiter | None = None,
        registrations: RegistrationLimiter | None = None,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        #: Called after every change to an account (pages redraw the pending badge).
        self._on_change = on_change or (lambda: None)
        self._secret = secret
        self.session_seconds = session_days * 86400
        self._limiter = limiter or LoginLimiter()
        self._registrations = registrations or RegistrationLimiter()
        self.sessions = SessionStore(store, clock)
        self._hasher = hasher or PasswordHasher()
        self._clock = clock
        # Verifying against a real hash for unknown emails keeps both answers equally slow.
        # Made by the first sign-in (known email or not, so that one is as slow either
        # way), not here: a default hash costs ~0.3 s of CPU, and every CLI command and
        # every Services built pays for an AuthService.
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------

    def get(self, user_id: int) -> User | None:
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM users WHERE id = ?", [user_id]))
        return User.from_row(rows[0]) if rows else None

    def get_by_email(self, email: str) -> User | None:
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM users WHERE email = ?", [email.strip().lower()]))
        return User.from_row(rows[0]) if rows else None

    def list_users(self, actor: User) -> list[User]:
        self._require_admin(actor)
        return self.all_users()

    def all_users(self) -> list[User]:
        """For the local CLI, which runs with the machine owner's rights."""
        with self._store.reading() as db:
            rows = db.query("SELECT * FROM users ORDER BY created_at, id")
            return [User.from_row(row) for row in rows]

    def pending_count(self) -> int:
        with self._store.reading() as db:
            row = next(db.query("SELECT count(*) AS n FROM users WHERE status = ?", ["pending"]))
        return int(row["n"])

    # --- registration and login ------------------------------------------------------

    def register(self, email: str, password: str, client: str | None = None) -> User:
        """The first account becomes an active admin; later ones wait for approval.
        `client` (the address asking) counts against the registrations-per-address limit."""
        if client is not None:
            normalize_email(email)
            check_password_rules(password)
            self._registrations.hit(client)
        return self._create(email, password, admin=False, active=False)

    def add_user(self, email: str, password: str, *, admin: bool = False) -> User:
        """Local CLI: create an active account straight away."""
        return self._create(email, password, admin=admin, active=True)

    def _create(self, email: str, password: str, *, admin: bool, active: bool) -> User:
        address = normalize_email(email)
        check_password_rules(password)
        password_hash = self._hasher.hash(password)
        now = utc_now()
        with self._store.connect(immediate=True) as db:
            if list(db.query("SELECT id FROM users WHERE email = ?", [address])):
                raise Conflict("An account with that email already exists.")
            first = next(db.query("SELECT count(*) AS n FROM users"))["n"] == 0
            role = Role.ADMIN if first or admin else Role.USER
            status = Status.ACTIVE if first or active else Status.PENDING
            db.execute(
                "INSERT INTO users (email, password_hash, role, status, created_at, approved_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [address, password_hash, role.value, status.value, now,
                 now if status is Status.ACTIVE else None],
            )
        log.info("account created: %s role=%s status=%s", address, role.value, status.value)
        self._on_change()
        user = self.get_by_email(address)
        if user is None:
            raise NotFound("The new account could not be read back.")
        return user

    def authenticate(self, email: str, password: str, client: str,
                     device: str | None = None) -> User:
        """Check a login; raises with one message for wrong password and unknown email.
        `device` is the browser's device cookie: a browser that signed in to this account
        before is throttled on its own, apart from failures elsewhere on its address."""
        key = email.strip().lower()
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM users WHERE email = ?", [key]))
        known = self._device_of(device, rows[0]["id"]) if rows else None
        self._limiter.check(key, client, known)
        dummy = self._dummy_hash()  # on every path, so the first sign-in costs the same
        stored_hash = rows[0]["password_hash"] if rows else dummy
        try:
            self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            self._limiter.record_failure(key, client, known)
            log.info("failed login for %s from %s", key, client)
            raise AuthenticationFailed(BAD_CREDENTIALS) from None
        if not rows:
            # Only reachable if someone guessed the random dummy password.
            raise AuthenticationFailed(BAD_CREDENTIALS)
        user = User.from_row(rows[0])
        self._limiter.record_success(key, client, known)
        if user.status is not Status.ACTIVE:
            raise AccountNotActive(_INACTIVE_MESSAGES[user.status])
        updates: dict[str, Any] = {"last_login_at": utc_now()}
        if self._hasher.check_needs_rehash(stored_hash):
            # Hashed before the write unit: argon2 must not hold the write lock.
            updates["password_hash"] = self._hasher.hash(password)
        with self._store.connect() as db:
            db.table("users").update(user.id, updates)
        return user

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
            return self._dummy

    # --- sessions --------------------------------------------------------------------

    def issue_session(self, user: User, *, user_agent: str = "", address: str = "") -> str:
        """A signed cookie value naming a new server-side session record."""
        record = self.sessions.create(user.id, lifetime_s=self.session_seconds,
                                      user_agent=user_agent, address=address)
        now = int(self._clock())
        claims = {"sub": str(user.id), "ver": user.token_version, "sid": record.id,
                  "iat": now, "exp": now + self.session_seconds}
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def user_for_session(self, token: str | None) -> User | None:
        """The active user a live session token belongs to, or None. Checked on every
        request: the signature, expiry, account status and version, and the session row."""
        claims = self._claims(token, ("exp", "sub", "ver", "sid"))
        # Expiry is checked against our clock (a seam for tests), not the wall clock.
        if claims is None or int(claims["exp"]) <= self._clock():
            return None
        try:
            user = self.get(int(claims["sub"]))
        except ValueError:
            return None
        if user is None or user.status is not Status.ACTIVE:
            return None
        if user.token_version != claims["ver"]:
            return None
        if not self.sessions.is_live(str(claims["sid"]), user.id):
            return None
        return user

    def sign_out(self, token: str | None) -> None:
        """Ends the session this cookie names (a no-op for a forged or unknown one)."""
        claims = self._claims(token, ("sid",))
        if claims is not None and self.sessions.revoke(str(claims["sid"])):
            log.info("session of user %s ended by signing out", claims.get("sub"))

    def sign_out_everywhere(self, actor: User, user_id: int) -> int:
        """Ends every session of a user: their own, or anyone's for an admin."""
        self._require_self_or_admin(actor, user_id)
        count = self.sessions.revoke_all(user_id)
        log.info("%s ended all %d sessions of user %s", actor.email, count, user_id)
        return count

    def list_sessions(self, actor: User, *, everyone: bool = False) -> list[SessionRecord]:
        """The actor's live sessions; with everyone=True (admins only) all of them."""
        if everyone:
            require(self._fresh(actor), Action.VIEW_ALL)
            return self.sessions.active()
        return self.sessions.active(actor.id)

    def revoke_session(self, actor: User, session_id: str) -> None:
        record = self.sessions.get(session_id)
        if record is None:
            raise NotFound("That session does not exist.")
        self._require_self_or_admin(actor, record.user_id)
        self.sessions.revoke(session_id)
        log.info("session of %s ended by %s", record.email, actor.email)

    def issue_device(self, user: User) -> str:
        """A long-lived cookie value marking this browser as one that signed in to this
        account; the login throttle treats it apart from its address."""
        now = int(self._clock())
        claims = {"typ": "device", "sub": str(user.id), "dev": secrets.token_urlsafe(12),
                  "iat": now, "exp": now + DEVICE_SECONDS}
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def _device_of(self, token: str | None, user_id: int) -> str | None:
        claims = self._claims(token, ("typ", "sub", "dev", "exp"))
        if claims is None or claims["typ"] != "device" or claims["sub"] != str(user_id):
            return None
        if int(claims["exp"]) <= self._clock():
            return None
        return str(claims["dev"])

    def _claims(self, token: str | None, required: tuple[str, ...]) -> dict[str, Any] | None:
        """A token's claims if our key signed it (expiry is left to the caller's clock)."""
        if not token:
            return None
        try:
            return jwt.decode(token, self._secret, algorithms=[JWT_ALGORITHM],
                              options={"require": list(required), "verify_exp": False,
                                       "verify_iat": False})
        except jwt.InvalidTokenError as exc:
            log.debug("rejected token: %s", exc)
            return None

    # --- administration --------------------------------------------------------------

    def approve(self, actor: User, user_id: int) -> User:
        return self._set_status(actor, user_id, Status.ACTIVE)

    def reject(self, actor: User, user_id: int) -> User:
        target = self._target(user_id)
        if target.status is not Status.PENDING:
            raise ValidationError("Only pending registrations can be rejected.")
        return self._set_status(actor, user_id, Status.REJECTED)

    def disable(self, actor: User, user_id: int) -> User:
        return self._set_status(actor, user_id, Status.DISABLED)

    def enable(self, actor: User, user_id: int) -> User:
        return self._set_status(actor, user_id, Status.ACTIVE)

    def set_role(self, actor: User, user_id: int, role: Role) -> User:
        self._require_admin(actor)
        target = self._target(user_id)
        return self._update(target, {"role": role.value}, revoke=role is Role.USER,
                            keep_admin="demote" if role is Role.USER else None)

    def delete(self, actor: User, user_id: int) -> None:
        self._require_admin(actor)
        target = self._target(user_id)
        with self._store.connect() as db:
            self._keep_an_admin(db, target.id, "delete")
            db.execute("DELETE FROM users WHERE id = ?", [target.id])
        log.info("account %s deleted by %s", target.email, actor.email)
        self._on_change()

    def reset_password(self, actor: User, user_id: int, new_password: str) -> User:
        self._require_admin(actor)
        return self._change_password(self._target(user_id), new_password)

    def reset_password_local(self, email: str, new_password: str) -> User:
        """Local CLI recovery: no actor, the machine's owner is trusted."""
        user = self.get_by_email(email)
        if user is None:
            raise NotFound(f"No account with the email {email}.")
        return self._change_password(user, new_password)

    def _change_password(self, target: User, new_password: str) -> User:
        check_password_rules(new_password)
        self._limiter.clear(target.email)
        return self._update(target, {"password_hash": self._hasher.hash(new_password)},
                            revoke=True)

    def _set_status(self, actor: User, user_id: int, status: Status) -> User:
        self._require_admin(actor)
        target = self._target(user_id)
        updates: dict[str, Any] = {"status": status.value}
        if status is Status.ACTIVE and target.approved_at is None:
            updates["approved_at"] = utc_now()
        user = self._update(target, updates, revoke=status is not Status.ACTIVE,
                            keep_admin=None if status is Status.ACTIVE else "disable")
        log.info("account %s is now %s (by %s)", target.email, status.value, actor.email)
        return user

    def _update(self, target: User, updates: dict[str, Any], *, revoke: bool,
                keep_admin: str | None = None) -> User:
        with self._store.connect() as db:
            if keep_admin is not None:
                self._keep_an_admin(db, target.id, keep_admin)
            db.table("users").update(target.id, updates)
            if revoke:
                # A new token version ends every session issued before this change
                # (incremented in SQL: another change may have bumped it meanwhile).
                db.execute("UPDATE users SET token_version = token_version + 1 WHERE id = ?",
                           [target.id])
        self._on_change()
        user = self.get(target.id)
        if user is None:
            raise NotFound("That account no longer exists.")
        return user

    def _target(self, user_id: int) -> User:
        user = self.get(user_id)
        if user is None:
            raise NotFound("That account no longer exists.")
        return user

    def _require_admin(self, actor: User) -> None:
        # Re-read: an admin demoted or disabled a moment ago has lost the right already.
        fresh = self.get(actor.id)
        if fresh is None:
            raise PermissionDenied("Your account no longer exists.")
        require(fresh, Action.MANAGE_USERS)

    def _require_self_or_admin(self, actor: User, user_id: int) -> None:
        """Ending sessions: the user's own, or anyone's for an admin."""
        require(self._fresh(actor), Action.SESSION_REVOKE, Owned.by(user_id))

    def _fresh(self, actor: User) -> User:
        fresh = self.get(actor.id)
        if fresh is None:
            raise PermissionDenied("Your account no longer exists.")
        return fresh

    @staticmethod
    def _keep_an_admin(db: Database, user_id: int, verb: str) -> None:
        """Inside the write unit that changes the user, so two admins demoting each
        other at once cannot both pass the check."""
        row = next(db.query(
            "SELECT count(*) AS n, coalesce(sum(id = ?), 0) AS target FROM users"
            " WHERE role = 'admin' AND status = 'active'", [user_id]))
        if row["target"] and row["n"] <= 1:
            raise ValidationError(f"You cannot {verb} the last active administrator.")

"""Accounts against a real SQLite file: registration, approval, sessions, limits, admin rules."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import jwt
import pytest
from argon2 import PasswordHasher

from manager.accounts.auth import AuthService, Role, Status, load_or_create_secret
from manager.accounts.limits import LoginLimiter, RegistrationLimiter
from manager.errors import (
    AccountNotActive,
    AuthenticationFailed,
    Conflict,
    NotFound,
    PermissionDenied,
    RateLimited,
    ValidationError,
)
from manager.store import Store
from tests.conftest import TEST_HASHER, Clock

PW = "correct horse battery"


@pytest.fixture
def auth(tmp_path: Path, clock: Clock) -> AuthService:
    store = Store(tmp_path / "manager.db")
    limiter = LoginLimiter(free_per_account=3, free_per_address=5, clock=clock)
    return AuthService(store, b"k" * 32, limiter=limiter, clock=clock, hasher=TEST_HASHER)


def test_first_user_is_active_admin_later_users_wait(auth: AuthService) -> None:
    first = auth.register("Alice@Example.com", PW)
    second = auth.register("bob@example.com", PW)
    assert (first.email, first.role, first.status) == ("alice@example.com", Role.ADMIN,
                                                       Status.ACTIVE)
    assert (second.role, second.status) == (Role.USER, Status.PENDING)
    assert auth.pending_count() == 1
    with pytest.raises(AccountNotActive, match="waiting for an administrator's approval"):
        auth.authenticate("bob@example.com", PW, "10.0.0.2")


@pytest.mark.parametrize(
    ("email", "password", "field"),
    [
        ("not-an-email", PW, "email"),
        ("a@b", PW, "email"),
        ("x@example.com", "short", "password"),
        ("x@example.com", "p" * 129, "password"),
    ],
)
def test_registration_validates_email_and_password(
    auth: AuthService, email: str, password: str, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        auth.register(email, password)
    assert info.value.field == field
    assert auth.all_users() == []


def test_password_length_bounds_are_inclusive(auth: AuthService) -> None:
    assert auth.register("eight@example.com", "p" * 8).email == "eight@example.com"
    assert auth.register("max@example.com", "p" * 128).status is Status.PENDING


def test_duplicate_email_is_refused_case_insensitively(auth: AuthService) -> None:
    auth.register("alice@example.com", PW)
    with pytest.raises(Conflict):
        auth.register("ALICE@example.com", PW)


def test_wrong_password_and_unknown_email_get_the_same_answer(auth: AuthService) -> None:
    auth.register("alice@example.com", PW)
    with pytest.raises(AuthenticationFailed) as wrong:
        auth.authenticate("alice@example.com", "not the password", "10.0.0.1")
    with pytest.raises(AuthenticationFailed) as unknown:
        auth.authenticate("nobody@example.com", "not the password", "10.0.0.1")
    assert type(wrong.value) is type(unknown.value) is AuthenticationFailed
    assert wrong.value.message == unknown.value.message


class CountingHasher(PasswordHasher):
    """The test hasher's parameters, counting the hashes it makes."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.hashes = 0

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashes += 1
        return super().hash(password, salt=salt)


@pytest.mark.parametrize("first_email", ["nobody@example.com", "alice@example.com"])
def test_the_unknown_email_hash_is_made_by_the_first_sign_in_whoever_it_is(
        tmp_path: Path, first_email: str) -> None:
    """Building the service hashes nothing (every CLI command builds one); the first sign-in
    makes the hash unknown emails are checked against, whether its email is known or not,
    so that first answer costs the same either way."""
    hasher = CountingHasher()
    auth = AuthService(Store(tmp_path / "manager.db"), b"k" * 32, hasher=hasher)
    assert hasher.hashes == 0
    auth.register("alice@example.com", PW)
    assert hasher.hashes == 1
    with pytest.raises(AuthenticationFailed):
        auth.authenticate(first_email, "wrong password!", "10.0.0.1")
    assert hasher.hashes == 2
    for email in ("nobody@example.com", "alice@example.com"):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(email, "wrong password!", "10.0.0.2")
    assert hasher.hashes == 2
    assert auth.authenticate("alice@example.com", PW, "10.0.0.3").email == "alice@example.com"


def test_failures_slow_the_source_down_with_a_growing_delay(
    auth: AuthService, clock: Clock
) -> None:
    auth.register("alice@example.com", PW)
    for _ in range(3):  # free
        with pytest.raises(AuthenticationFailed):
            auth.authenticate("alice@example.com", "bad-password", "10.0.0.1")
    waits = []
    for _ in range(4):
        with pytest.raises(RateLimited, match="Too many failed sign-in attempts") as limited:
            auth.authenticate("alice@example.com", PW, "10.0.0.1")
        waits.append(limited.value.retry_after)
        clock.now += limited.value.retry_after
        with pytest.raises(AuthenticationFailed):
            auth.authenticate("alice@example.com", "bad-password", "10.0.0.1")
    assert waits == [1.0, 2.0, 4.0, 8.0]
    # A delay, never a lock: once it has passed, the right password works.
    with pytest.raises(RateLimited):
        auth.authenticate("alice@example.com", PW, "10.0.0.1")
    clock.now += 16
    assert auth.authenticate("alice@example.com", PW, "10.0.0.1").email == "alice@example.com"


def test_an_attacker_elsewhere_cannot_lock_the_owner_out(auth: AuthService,
                                                         clock: Clock) -> None:
    auth.register("alice@example.com", PW)
    for _ in range(50):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate("alice@example.com", "guess-guess", "10.6.6.6")
        clock.now += 0.1
    assert auth.authenticate("alice@example.com", PW, "10.0.0.2").email == "alice@example.com"


def test_a_known_browser_is_not_slowed_by_failures_on_its_own_address(
    auth: AuthService,
) -> None:
    alice = auth.register("alice@example.com", PW)
    bob = auth.approve(alice, auth.register("bob@example.com", PW).id)
    alices_browser = auth.issue_device(alice)
    for _ in range(30):  # someone behind the same address
        with pytest.raises(AuthenticationFailed):
            auth.authenticate("alice@example.com", "guess-guess", "10.0.0.2")
    with pytest.raises(RateLimited):
        auth.authenticate("alice@example.com", PW, "10.0.0.2")
    # Another account's device cookie, or a forged one, is no way around the delay.
    for stranger in (auth.issue_device(bob), "forged.device.cookie"):
        with pytest.raises(RateLimited):
            auth.authenticate("alice@example.com", PW, "10.0.0.2", device=stranger)
    assert auth.authenticate("alice@example.com", PW, "10.0.0.2",
                             device=alices_browser).id == alice.id


def test_failed_logins_are_limited_per_client_address(auth: AuthService) -> None:
    for n in range(5):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(f"user{n}@example.com", "bad", "10.9.9.9")
    with pytest.raises(RateLimited):
        auth.authenticate("someone-else@example.com", "bad", "10.9.9.9")
    with pytest.raises(AuthenticationFailed) as other:
        auth.authenticate("someone-else@example.com", "bad", "10.1.1.1")
    assert not isinstance(other.value, RateLimited)


def test_registrations_are_limited_per_address(tmp_path: Path, clock: Clock) -> None:
    auth = AuthService(Store(tmp_path / "manager.db"), b"k" * 32, hasher=TEST_HASHER,
                       registrations=RegistrationLimiter(2, window_s=3600, clock=clock))
    auth.register("a@example.com", PW, client="10.0.0.5")
    auth.register("b@example.com", PW, client="10.0.0.5")
    with pytest.raises(RateLimited, match="Too many registrations from this address"):
        auth.register("c@example.com", PW, client="10.0.0.5")
    # Typos are not counted; other addresses and, later, this one may register.
    with pytest.raises(ValidationError):
        auth.register("not-an-email", PW, client="10.0.0.6")
    auth.register("d@example.com", PW, client="10.0.0.6")
    clock.now += 3600
    auth.register("c@example.com", PW, client="10.0.0.5")


def test_session_token_is_hs256_with_seven_day_expiry(auth: AuthService, clock: Clock) -> None:
    user = auth.register("alice@example.com", PW)
    token = auth.issue_session(user)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert claims["exp"] - claims["iat"] == 7 * 86400
    assert auth.user_for_session(token) == user
    clock.now += 7 * 86400 - 1
    assert auth.user_for_session(token) is not None
    clock.now += 2
    assert auth.user_for_session(token) is None


@pytest.mark.parametrize(
    "token",
    ["", "garbage", jwt.encode({"sub": "1", "ver": 1, "exp": 4_000_000_000}, b"x" * 32,
                               algorithm="HS256"),
     # Signed with the right key but from before sessions had records: no `sid`.
     jwt.encode({"sub": "1", "ver": 1, "exp": 4_000_000_000}, b"k" * 32, algorithm="HS256"),
     jwt.encode({"sub": "1", "ver": 1, "exp": 4_000_000_000}, None, algorithm="none")],
)
def test_forged_or_malformed_tokens_are_refused(auth: AuthService, token: str) -> None:
    auth.register("alice@example.com", PW)
    assert auth.user_for_session(token) is None


@pytest.mark.parametrize("action", ["disable", "delete", "demote", "reset"])
def test_sessions_end_at_once_when_the_account_changes(auth: AuthService, action: str) -> None:
    admin = auth.register("alice@example.com", PW)
    bob = auth.register("bob@example.com", PW)
    bob = auth.approve(admin, bob.id)
    if action == "demote":
        bob = auth.set_role(admin, bob.id, Role.ADMIN)
    token = auth.issue_session(bob)
    assert auth.user_for_session(token) is not None
    {
        "disable": lambda: auth.disable(admin, bob.id),
        "delete": lambda: auth.delete(admin, bob.id),
        "demote": lambda: auth.set_role(admin, bob.id, Role.USER),
        "reset": lambda: auth.reset_password(admin, bob.id, "temporary-pass-1"),
    }[action]()
    assert auth.user_for_session(token) is None


def test_reset_password_lets_the_new_one_in(auth: AuthService) -> None:
    admin = auth.register("alice@example.com", PW)
    bob = auth.approve(admin, auth.register("bob@example.com", PW).id)
    auth.reset_password(admin, bob.id, "temporary-pass-1")
    with pytest.raises(AuthenticationFailed):
        auth.authenticate("bob@example.com", PW, "1.1.1.1")
    assert auth.authenticate("bob@example.com", "temporary-pass-1", "1.1.1.1").id == bob.id


def test_only_admins_can_administer(auth: AuthService) -> None:
    admin = auth.register("alice@example.com", PW)
    bob = auth.approve(admin, auth.register("bob@example.com", PW).id)
    carol = auth.register("carol@example.com", PW)
    for act in (
        lambda: auth.approve(bob, carol.id),
        lambda: auth.reject(bob, carol.id),
        lambda: auth.disable(bob, admin.id),
        lambda: auth.delete(bob, carol.id),
        lambda: auth.set_role(bob, bob.id, Role.ADMIN),
        lambda: auth.reset_password(bob, admin.id, "hijacked-pass"),
        lambda: auth.list_users(bob),
    ):
        with pytest.raises(PermissionDenied):
            act()
    assert auth.get(carol.id).status is Status.PENDING
    assert auth.get(bob.id).role is Role.USER


def test_a_demoted_admin_loses_admin_rights_even_with_an_old_user_object(
    auth: AuthService,
) -> None:
    admin = auth.register("alice@example.com", PW)
    bob = auth.set_role(admin, auth.approve(admin, auth.register("b@example.com", PW).id).id,
                        Role.ADMIN)
    auth.set_role(admin, bob.id, Role.USER)
    with pytest.raises(PermissionDenied):
        auth.list_users(bob)


@pytest.mark.parametrize("verb", ["demote", "disable", "delete"])
def test_the_last_active_admin_is_protected(auth: AuthService, verb: str) -> None:
    admin = auth.register("alice@example.com", PW)
    act = {
        "demote": lambda: auth.set_role(admin, admin.id, Role.USER),
        "disable": lambda: auth.disable(admin, admin.id),
        "delete": lambda: auth.delete(admin, admin.id),
    }[verb]
    with pytest.raises(ValidationError, match="last active administrator"):
        act()
    second = auth.set_role(admin, auth.approve(admin, auth.register("b@example.com", PW).id).id,
                           Role.ADMIN)
    act()  # with a second admin it is allowed
    assert auth.get(second.id).is_admin


def test_reject_only_pending_and_rejected_cannot_log_in(auth: AuthService) -> None:
    admin = auth.register("alice@example.com", PW)
    bob = auth.register("bob@example.com", PW)
    auth.reject(admin, bob.id)
    with pytest.raises(AccountNotActive, match="not approved"):
        auth.authenticate("bob@example.com", PW, "1.1.1.1")
    with pytest.raises(ValidationError):
        auth.reject(admin, admin.id)


def test_disabled_user_cannot_log_in(auth: AuthService) -> None:
    admin = auth.register("alice@example.com", PW)
    bob = auth.approve(admin, auth.register("bob@example.com", PW).id)
    auth.disable(admin, bob.id)
    with pytest.raises(AccountNotActive, match="disabled"):
        auth.authenticate("bob@example.com", PW, "1.1.1.1")


def test_hash_is_upgraded_when_parameters_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    weak = AuthService(store, b"k" * 32, hasher=PasswordHasher(time_cost=1, memory_cost=8192))
    weak.register("alice@example.com", PW)
    before = _hash_of(store, "alice@example.com")
    strong = AuthService(store, b"k" * 32, hasher=PasswordHasher(time_cost=2, memory_cost=16384))
    strong.authenticate("alice@example.com", PW, "1.1.1.1")
    after = _hash_of(store, "alice@example.com")
    assert before != after
    assert "m=16384,t=2" in after and "m=8192,t=1" in before
    strong.authenticate("alice@example.com", PW, "1.1.1.1")


def _hash_of(store: Store, email: str) -> str:
    with store.connect() as db:
        return next(db.query("SELECT password_hash FROM users WHERE email = ?", [email]))[
            "password_hash"
        ]


def test_passwords_are_stored_as_argon2_hashes(tmp_path: Path) -> None:
    # The production hasher (argon2's defaults); the other tests use TEST_HASHER.
    store = Store(tmp_path / "manager.db")
    AuthService(store, b"k" * 32).register("alice@example.com", PW)
    stored = _hash_of(store, "alice@example.com")
    assert stored.startswith("$argon2id$") and PW not in stored


def test_secret_is_created_once_with_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"
    first = load_or_create_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == first


def test_a_truncated_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"short")
    with pytest.raises(ValidationError, match="shorter than 32 bytes"):
        load_or_create_secret(path)


def test_local_reset_for_unknown_email_says_so(auth: AuthService) -> None:
    with pytest.raises(NotFound, match="nobody@example.com"):
        auth.reset_password_local("nobody@example.com", PW)

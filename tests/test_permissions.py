"""The one permission check, as a table: who may do what to whose resource."""

from __future__ import annotations

import pytest

from manager.accounts.auth import Role, Status, User
from manager.accounts.permissions import (
    ADMIN_ONLY,
    ANY_USER,
    Action,
    Owned,
    allowed,
    require,
)
from manager.errors import PermissionDenied


def user(uid: int, role: Role = Role.USER, status: Status = Status.ACTIVE) -> User:
    return User(id=uid, email=f"u{uid}@example.com", role=role, status=status,
                token_version=0, created_at="2026-12-01T00:00:00Z", approved_at=None,
                last_login_at=None)


ADMIN = user(1, Role.ADMIN)
ALICE = user(2)
BOB = user(3)
PENDING = user(4, status=Status.PENDING)
ALICES = Owned.by(ALICE.id)

CASES = [
    (ADMIN, Action.MANAGE_USERS, Owned.by(), True),
    (ALICE, Action.MANAGE_USERS, Owned.by(), False),
    (ALICE, Action.BIND_NETWORK, ALICES, False),
    (ALICE, Action.MANAGE_TOOL_CHECKS, Owned.by(), False),
    (ADMIN, Action.MANAGE_TOOL_CHECKS, Owned.by(), True),
    (ALICE, Action.PROFILE_CREATE, Owned.by(), True),
    (ALICE, Action.SERVER_START, Owned.by(BOB.id), True),
    (ALICE, Action.SERVER_STOP, ALICES, True),
    (BOB, Action.SERVER_STOP, ALICES, False),
    (BOB, Action.SERVER_RESTART, ALICES, False),
    (BOB, Action.PROFILE_EDIT, ALICES, False),
    (ADMIN, Action.PROFILE_EDIT, ALICES, True),
    (BOB, Action.MODEL_DELETE, Owned.by(ALICE.id, BOB.id), True),
    (BOB, Action.DOWNLOAD_CONTROL, Owned.by(None), False),
    (PENDING, Action.CHAT, Owned.by(), False),
    (PENDING, Action.SERVER_STOP, Owned.by(PENDING.id), False),
    (None, Action.SERVER_STOP, ALICES, True),
]


@pytest.mark.parametrize(("actor", "action", "resource", "expected"), CASES)
def test_allowed(actor: User | None, action: Action, resource: Owned, expected: bool) -> None:
    assert allowed(actor, action, resource) is expected


def test_every_action_has_a_rule_and_a_message() -> None:
    for action in Action:
        try:
            require(BOB, action, ALICES)
        except PermissionDenied as exc:
            assert str(exc).startswith(("Only an administrator", "Only its owner"))
            assert action not in ANY_USER
        else:
            assert action in ANY_USER
    assert ADMIN_ONLY.isdisjoint(ANY_USER)


def test_require_names_an_inactive_account() -> None:
    with pytest.raises(PermissionDenied, match="not active"):
        require(PENDING, Action.CHAT)

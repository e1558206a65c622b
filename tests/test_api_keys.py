"""Gateway API keys against real SQLite: shown once, hashed, owned, revocable."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from manager.accounts.api_keys import KEY_PREFIX, TOUCH_EVERY_S
from manager.accounts.auth import Role, User
from manager.errors import NotFound, PermissionDenied, ValidationError
from manager.services import Services
from manager.store import Store

PW = "correct horse battery"


@pytest.fixture
def people(services: Services) -> dict[str, User]:
    auth = services.auth
    admin = auth.register("alice@example.com", PW)
    bob = auth.approve(admin, auth.register("bob@example.com", PW).id)
    carol = auth.approve(admin, auth.register("carol@example.com", PW).id)
    return {"alice": admin, "bob": bob, "carol": carol}


def test_a_new_key_authenticates_its_owner_and_is_stored_hashed(
    services: Services, people: dict[str, User]
) -> None:
    new = services.api_keys.create(people["bob"], "laptop")
    assert new.secret.startswith(KEY_PREFIX) and len(new.secret) > 40
    assert services.api_keys.authenticate(new.secret).id == people["bob"].id
    with services.store.connect() as db:
        stored = [tuple(row.values()) for row in db.query("SELECT * FROM api_keys")]
    assert not any(new.secret in str(value) for row in stored for value in row)
    listed = services.api_keys.list_for(people["bob"])
    assert [(k.name, k.hint, k.active) for k in listed] == [
        ("laptop", new.secret[: len(KEY_PREFIX) + 6], True)
    ]
    assert listed[0].last_used_at is not None


@pytest.mark.parametrize("secret", [None, "", "sk-whatever", KEY_PREFIX + "made-up", "Bearer x"])
def test_unknown_keys_are_refused(services: Services, people: dict[str, User],
                                  secret: str | None) -> None:
    services.api_keys.create(people["bob"])
    assert services.api_keys.authenticate(secret) is None


def test_revoked_keys_stop_working(services: Services, people: dict[str, User]) -> None:
    new = services.api_keys.create(people["bob"])
    revoked = services.api_keys.revoke(people["bob"], new.key.id)
    assert revoked.revoked_at is not None and not revoked.active
    assert services.api_keys.authenticate(new.secret) is None


def test_keys_of_disabled_or_deleted_users_stop_working(
    services: Services, people: dict[str, User]
) -> None:
    bob_key = services.api_keys.create(people["bob"]).secret
    carol_key = services.api_keys.create(people["carol"]).secret
    services.auth.disable(people["alice"], people["bob"].id)
    services.auth.delete(people["alice"], people["carol"].id)
    assert services.api_keys.authenticate(bob_key) is None
    assert services.api_keys.authenticate(carol_key) is None
    assert all(k.owner_email != "carol@example.com"
               for k in services.api_keys.list_for(people["alice"], everyone=True))


def test_users_see_and_revoke_only_their_own_keys(
    services: Services, people: dict[str, User]
) -> None:
    bob_key = services.api_keys.create(people["bob"])
    services.api_keys.create(people["carol"])
    assert [k.owner_email for k in services.api_keys.list_for(people["carol"])] == [
        "carol@example.com"
    ]
    with pytest.raises(PermissionDenied):
        services.api_keys.revoke(people["carol"], bob_key.key.id)
    with pytest.raises(PermissionDenied):
        services.api_keys.list_for(people["carol"], everyone=True)
    assert services.api_keys.authenticate(bob_key.secret) is not None


def test_a_demoted_admin_loses_key_rights_even_with_an_old_user_object(
    services: Services, people: dict[str, User]
) -> None:
    bob_key = services.api_keys.create(people["bob"])
    dave = services.auth.set_role(people["alice"], people["carol"].id, Role.ADMIN)
    assert services.api_keys.list_for(dave, everyone=True)
    services.auth.set_role(people["alice"], dave.id, Role.USER)
    # `dave` still says admin; the service asks the database.
    with pytest.raises(PermissionDenied, match="Only an administrator"):
        services.api_keys.list_for(dave, everyone=True)
    with pytest.raises(PermissionDenied, match="Only its owner or an administrator"):
        services.api_keys.revoke(dave, bob_key.key.id)
    assert services.api_keys.authenticate(bob_key.secret) is not None


def test_admins_see_and_revoke_everyones_keys(services: Services,
                                              people: dict[str, User]) -> None:
    bob_key = services.api_keys.create(people["bob"], "ci")
    everyone = services.api_keys.list_for(people["alice"], everyone=True)
    assert [(k.owner_email, k.name) for k in everyone] == [("bob@example.com", "ci")]
    services.api_keys.revoke(people["alice"], bob_key.key.id)
    assert services.api_keys.authenticate(bob_key.secret) is None


def test_bad_names_and_unknown_ids_get_clear_errors(services: Services,
                                                    people: dict[str, User]) -> None:
    with pytest.raises(ValidationError, match="at most 64"):
        services.api_keys.create(people["bob"], "n" * 65)
    with pytest.raises(NotFound):
        services.api_keys.revoke(people["alice"], 999)
    assert services.api_keys.create(people["bob"], "   ").key.name == "default"


def test_cli_keys_create_prints_a_working_key(services: Services) -> None:
    from tests.test_cli import run_cli

    data = services.settings.data_dir
    services.auth.register("alice@example.com", PW)
    result = run_cli("keys", "create", "alice@example.com", "--name", "scripts", data_dir=data)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert services.api_keys.authenticate(secret).email == "alice@example.com"
    assert services.api_keys.list_for(services.auth.get_by_email("alice@example.com"))[0].name \
        == "scripts"
    missing = run_cli("keys", "create", "ghost@example.com", data_dir=data)
    assert missing.returncode == 1 and "No account with the email ghost@example.com" in \
        missing.stderr


@pytest.mark.parametrize("elsewhere", [False, True])
@pytest.mark.parametrize("change", ["revoke", "disable"])
def test_a_key_in_use_is_refused_from_the_next_lookup_once_revoked_or_disabled(
    services: Services, people: dict[str, User], change: str, elsewhere: bool
) -> None:
    """The gateway keeps what a lookup read until the database changes: a change made
    here or by another process (the CLI, on its own connection) is seen at once."""
    keys = services.api_keys
    new = keys.create(people["bob"])
    assert keys.lookup(new.secret).user.id == people["bob"].id
    assert keys.lookup(new.secret).user.id == people["bob"].id  # kept, nothing changed
    if elsewhere:
        other = Store(services.store.path)
        with other.connect() as db:
            if change == "revoke":
                db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?",
                           ["2026-12-02T00:00:00+00:00", new.key.id])
            else:
                db.execute("UPDATE users SET status = 'disabled' WHERE id = ?",
                           [people["bob"].id])
    elif change == "revoke":
        keys.revoke(people["bob"], new.key.id)
    else:
        services.auth.disable(people["alice"], people["bob"].id)
    assert keys.lookup(new.secret) is None


def test_last_used_is_written_again_once_a_minute_old(
    services: Services, people: dict[str, User]
) -> None:
    keys = services.api_keys
    new = keys.create(people["bob"])
    assert keys.lookup(new.secret).touch_due  # never used
    keys.touch(new.key.id)
    assert not keys.lookup(new.secret).touch_due
    now = datetime.now(timezone.utc)
    for used, due in [(now - timedelta(seconds=TOUCH_EVERY_S + 5), True),
                      (now - timedelta(seconds=TOUCH_EVERY_S - 30), False),
                      # written without an offset: read as UTC, as clock.utc_now writes
                      ((now - timedelta(seconds=10)).replace(tzinfo=None), False),
                      ("not a time", True)]:
        with services.store.connect() as db:
            db.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                       [used if isinstance(used, str) else used.isoformat(), new.key.id])
        assert keys.lookup(new.secret).touch_due is due, used

"""Sign-in throttling, registration limits and answers through the real HTTP app."""

from __future__ import annotations

import pytest

from manager.api.login import DEVICE_COOKIE, SESSION_COOKIE
from tests.conftest import PASSWORD, LiveDashboard


@pytest.fixture
def dashboard(shared_app_dashboard: LiveDashboard) -> LiveDashboard:
    """These routes need no socket: the session's shared app (default settings: five
    registrations an hour from one address), in-process, handed over as new."""
    return shared_app_dashboard


def _fail_until_throttled(dashboard: LiveDashboard, email: str) -> list[int]:
    """Wrong passwords from a browser without cookies until the throttle answers."""
    statuses: list[int] = []
    with dashboard.client() as stranger:
        while 429 not in statuses and len(statuses) < 12:
            statuses.append(stranger.post(
                "/login", data={"email": email, "password": "wrong-password"}).status_code)
    return statuses


def test_failures_are_throttled_with_a_clear_message(dashboard: LiveDashboard) -> None:
    dashboard.register("alice@example.com")
    statuses = _fail_until_throttled(dashboard, "alice@example.com")
    assert statuses[:3] == [401] * 3 and statuses[-1] == 429
    with dashboard.client() as stranger:
        throttled = stranger.post("/login",
                                  data={"email": "alice@example.com", "password": PASSWORD})
    assert throttled.status_code == 429
    assert "Too many failed sign-in attempts. Try again in" in throttled.text
    assert int(throttled.headers["retry-after"]) >= 1


def test_the_owners_browser_still_signs_in_during_an_attack(dashboard: LiveDashboard) -> None:
    """Everyone here shares 127.0.0.1, like colleagues behind one NAT: the failures of the
    attacker must not keep the owner's browser (which signed in before) out."""
    with dashboard.client() as owner:
        first = owner.post("/register", data={"email": "alice@example.com",
                                              "password": PASSWORD, "confirm": PASSWORD})
        assert first.status_code == 303 and DEVICE_COOKIE in owner.cookies
        assert _fail_until_throttled(dashboard, "alice@example.com")[-1] == 429
        again = owner.post("/login", data={"email": "alice@example.com", "password": PASSWORD})
        assert again.status_code == 303
        assert SESSION_COOKIE in again.cookies


def test_registration_does_not_say_whether_an_email_exists(dashboard: LiveDashboard) -> None:
    first = dashboard.register("alice@example.com")
    assert first.status_code == 303  # the first account still becomes the admin
    new = dashboard.register("bob@example.com")
    taken = dashboard.register("alice@example.com")
    assert new.status_code == taken.status_code == 200
    assert new.text == taken.text
    assert "If this address can be registered" in new.text
    assert SESSION_COOKIE not in taken.headers.get("set-cookie", "")


def test_registrations_per_address_are_limited(dashboard: LiveDashboard) -> None:
    allowed = dashboard.services.settings.registrations_per_hour
    assert allowed == 5  # the default
    answers = [dashboard.register(f"user{n}@example.com").status_code
               for n in range(allowed + 1)]
    assert answers == [303] + [200] * (allowed - 1) + [429]
    refused = dashboard.register("late@example.com")
    assert refused.status_code == 429
    assert "Too many registrations from this address" in refused.text
    assert dashboard.services.auth.get_by_email("late@example.com") is None
    assert len(dashboard.services.auth.all_users()) == allowed

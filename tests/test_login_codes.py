"""One-time sign-in codes (what a notebook's iframe opens, issue 15): a code signs its user
in once, within its time. The routes: tests/test_routes_protected.py."""

from __future__ import annotations

from manager.accounts.login_codes import LoginCodes
from tests.conftest import Clock


def test_a_code_is_good_once_and_only_in_its_time(clock: Clock) -> None:
    codes = LoginCodes(ttl=120, clock=clock)
    first, second = codes.issue(7), codes.issue(8)
    assert first != second
    assert codes.redeem(first) == 7
    assert codes.redeem(first) is None  # used
    assert codes.redeem("made-up") is None and codes.redeem("") is None
    clock.now += 121
    assert codes.redeem(second) is None  # expired
    late = codes.issue(9)
    clock.now += 119
    assert codes.redeem(late) == 9

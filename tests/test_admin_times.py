"""The Admin table's times read as a person says them, the exact time in a tooltip
(issue 15 item 9: raw ISO timestamps)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from components.admin_tab import time_cell
from manager.units import format_ago

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("seconds", "label"), [
    (None, "n/a"), (-5, "just now"), (30, "just now"), (180, "3 min ago"),
    (7200, "2 h ago"), (86400, "1 day ago"), (5 * 86400, "5 days ago")])
def test_format_ago(seconds: float | None, label: str) -> None:
    assert format_ago(seconds) == label


def test_a_time_cell_is_relative_with_the_exact_time_as_tooltip() -> None:
    cell = time_cell("2026-12-01T11:57:00+00:00", NOW)
    assert ">3 min ago</span>" in cell
    exact = datetime(2026, 12, 1, 11, 57, tzinfo=timezone.utc).astimezone()
    assert f'title="{exact.strftime("%Y-%m-%d %H:%M:%S")}' in cell
    assert "T11:57" not in cell  # no raw ISO text
    assert time_cell(None, NOW) == "" and time_cell("", NOW) == ""
    assert time_cell("<b>", NOW) == "&lt;b&gt;"  # not a time: shown as text, escaped

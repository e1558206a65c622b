"""Servers tab in headless Chromium: start from the dropdown, Ready tile, scroll kept, stop."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from manager.api.login import SESSION_COOKIE
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.servers.supervisor import ServerState
from tests.conftest import LiveDashboard
from tests.gradio_clients import gradio_client
from tests.waits import wait_for

pytestmark = [pytest.mark.slow]

#: The chart once drawn: its points, x axis type, and whether a time label overlaps the
#: legend (bounding boxes in the page).
CHART_JS = """() => {
  const plot = document.querySelector('#server-chart .js-plotly-plot');
  if (!plot || !plot.data || !plot.data.length || !plot._fullLayout) return null;
  const legend = plot.querySelector('.legend');
  const ticks = [...plot.querySelectorAll('.xtick text')];
  if (!legend || !ticks.length) return null;
  const l = legend.getBoundingClientRect();
  const overlap = ticks.some(t => { const b = t.getBoundingClientRect();
    return b.left < l.right && b.right > l.left && b.top < l.bottom && b.bottom > l.top; });
  const points = plot.data.reduce(
    (n, t) => n + (t.y || []).filter(v => v !== null && v !== undefined).length, 0);
  return {points, axis: plot._fullLayout.xaxis.type, ticks: ticks.length, overlap};
}"""


@pytest.mark.browser
def test_start_watch_scroll_and_stop_in_the_browser(dashboard: LiveDashboard, browser,
                                                    tiny_models: dict[str, Path],
                                                    hf_home: Path) -> None:  # noqa: ANN001
    dashboard.register("alice@example.com")
    services = dashboard.services
    services.monitor.start()  # the light services fixture samples nothing on its own
    profile = services.profiles.create(None, ProfileSpec(
        name="Browser tiny", model=str(tiny_models["text"]), port=free_port()))
    context = browser.new_context(viewport={"width": 1100, "height": 650})
    context.add_cookies([{"name": SESSION_COOKIE, "url": dashboard.url,
                          "value": dashboard.session_cookie("alice@example.com")}])
    page = context.new_page()
    try:
        page.goto(dashboard.url + "/")
        page.get_by_role("tab", name="Servers").click()
        picker = page.locator("#server-profile input")
        picker.click()
        picker.fill("Browser")
        page.get_by_role("option", name="Browser tiny").click()
        page.click("#server-start")
        tile = f"#srv-{profile.id}"
        page.wait_for_selector(f"{tile} [data-state=starting], {tile} [data-state=ready]",
                               timeout=30_000)
        page.wait_for_selector(f"{tile} [data-state=ready]", timeout=90_000)
        snap = services.supervisor.snapshot(profile.id)
        assert snap.state is ServerState.READY

        # Enough log lines to scroll: each request adds a few.
        with httpx.Client(timeout=30) as client:
            for _ in range(15):
                client.post(snap.base_url + "/v1/completions",
                            json={"prompt": "Hello there", "max_tokens": 2})
        log_box = f"#srv-log-{profile.id}"
        page.click(f"label[for=srv-logs-toggle-{profile.id}]")
        page.wait_for_function(
            "sel => { const e = document.querySelector(sel);"
            " return e && e.scrollHeight > e.clientHeight + 60; }",
            arg=log_box, timeout=30_000)
        page.eval_on_selector(log_box, "e => { e.scrollTop = 40; }")
        page.evaluate("window.scrollTo(0, 150)")
        page_y = page.evaluate("window.scrollY")
        box_y = page.eval_on_selector(log_box, "e => e.scrollTop")
        assert page_y > 0 and box_y == 40

        # Two ticks: the uptime text changes twice.
        uptime = f"{tile} dd[data-stat=Uptime]"
        for _ in range(2):
            before = page.inner_text(uptime)
            page.wait_for_function(
                "([sel, old]) => document.querySelector(sel).innerText !== old",
                arg=[uptime, before], timeout=20_000)
        assert page.evaluate("window.scrollY") == page_y
        assert page.eval_on_selector(log_box, "e => e.scrollTop") == box_y
        assert page.is_checked(f"#srv-logs-toggle-{profile.id}")
        assert page.is_visible(log_box)
        # Gauges show real figures for a live server.
        assert "GB" in page.inner_text(f"{tile} .mm-gauges")

        # Issue 15 item 9: after a reload the chart has points at once, from the
        # monitor's history (not only the samples taken since), on a time axis, and its
        # time labels keep clear of the legend.
        history = wait_for(lambda: len(services.monitor.history(profile.id)) >= 2
                           and services.monitor.history(profile.id), 30,
                           "two samples in the monitor's history")
        # One point per known figure: a server's first sample has no CPU figure yet
        # (cpu_percent needs two readings), and an unknown figure is no point.
        known = sum(s.memory_bytes is not None for s in history) + \
            sum(s.cpu_machine_percent is not None for s in history)
        page.reload()
        page.get_by_role("tab", name="Servers").click()
        # The chart the page draws first must hold every figure the history held before
        # the reload (later samples may add more).
        drawn = page.wait_for_function(CHART_JS, timeout=30_000).json_value()
        assert drawn["points"] >= known, (drawn, known)
        assert drawn["axis"] == "date" and drawn["ticks"] > 0
        assert not drawn["overlap"], drawn

        page.click(f"{tile} button[data-action=stop]")
        page.wait_for_selector(tile, state="detached", timeout=30_000)
        assert services.supervisor.snapshot(profile.id).state is ServerState.STOPPED
    finally:
        context.close()


def test_server_actions_through_the_api_check_the_user(dashboard: LiveDashboard,
                                                       tiny_models: dict[str, Path],
                                                       hf_home: Path) -> None:
    auth = dashboard.services.auth
    dashboard.register("admin@example.com")
    dashboard.register("bob@example.com")
    admin = auth.get_by_email("admin@example.com")
    client = gradio_client(dashboard.url,
                           cookie=dashboard.session_cookie("admin@example.com"))
    port = free_port()
    values = ["API tiny", "for tests", str(tiny_models["text"]), "auto", "127.0.0.1", port,
              None, None, None, None, "default", "Be brief.", False, False, None,
              "", "ring", "tensor", None]
    result = client.predict("new", *values, api_name="/profile_save")
    assert "Created **API tiny**" in result[2]
    profile = dashboard.services.profiles.get_by_name("API tiny")
    assert profile.owner_id == admin.id and profile.system_prompt == "Be brief."
    bad = client.predict("new", "Other", *values[1:5], 80, *values[6:], api_name="/profile_save")
    assert "Port must be between 1024 and 65535" in bad[2]

    # Bob (pending) cannot act; once approved he can start and stop but not edit.
    auth.approve(admin, auth.get_by_email("bob@example.com").id)
    bob = gradio_client(dashboard.url, cookie=dashboard.session_cookie("bob@example.com"))
    with pytest.raises(Exception, match="Only an admin or the person who created"):
        bob.predict(str(profile.id), *values, api_name="/profile_save")
    message = bob.predict("start", "API tiny", api_name="/server_action")[0]
    assert "Starting API tiny" in message
    assert wait_for(lambda: dashboard.services.supervisor.snapshot(profile.id).state
                    is ServerState.READY, 90)
    message = bob.predict("stop", "API tiny", api_name="/server_action")[0]
    assert message == "API tiny stopped."
    with pytest.raises(Exception, match="not running"):
        bob.predict("stop", "API tiny", api_name="/server_action")

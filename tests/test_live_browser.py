"""Live state in an open page, without a reload: the admin's pending badge, a server
that fails, a server that becomes Ready, is stopped, becomes Ready again and then crashes
(components/live.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from manager.api.login import SESSION_COOKIE
from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.servers.supervisor import ServerState
from tests.conftest import LiveDashboard
from tests.waits import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _open(browser, dashboard: LiveDashboard, email: str):  # noqa: ANN001, ANN202
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    context.add_cookies([{"name": SESSION_COOKIE, "url": dashboard.url,
                          "value": dashboard.session_cookie(email)}])
    page = context.new_page()
    page.goto(dashboard.url + "/")
    page.wait_for_selector("#mm-header")
    return context, page


def test_pending_badge_and_a_failed_server_show_without_reload(
        dashboard: LiveDashboard, browser, tiny_models: dict[str, Path]) -> None:  # noqa: ANN001
    dashboard.register("admin@example.com")
    services = dashboard.services
    context, page = _open(browser, dashboard, "admin@example.com")
    try:
        assert page.locator("#pending-badge").count() == 0
        # Someone registers while the admin's page is open.
        dashboard.register("bob@example.com")
        page.wait_for_selector("#pending-badge", timeout=30_000)
        assert page.inner_text("#pending-badge") == "1"
        page.get_by_role("tab", name="Admin (1)").wait_for(timeout=30_000)
        page.get_by_role("tab", name="Admin (1)").click()
        page.locator("#users-table").get_by_text("bob@example.com").wait_for(timeout=30_000)

        # Approved elsewhere (another admin's page, here the service): the badge goes.
        bob = services.auth.get_by_email("bob@example.com")
        services.auth.approve(services.auth.get_by_email("admin@example.com"), bob.id)
        page.wait_for_selector("#pending-badge", state="detached", timeout=30_000)

        # A start that fails, made outside this page, shows on the Servers tab.
        profile = services.profiles.create(None, ProfileSpec(
            name="Fails", model=str(tiny_models["text"]), port=free_port()))
        page.get_by_role("tab", name="Servers").click()
        services.supervisor.fail_to_start(profile.id, "The port is busy.")
        page.wait_for_selector(f"#srv-{profile.id} [data-state=failed]", timeout=30_000)
        assert "The port is busy." in page.inner_text(f"#srv-{profile.id}")
    finally:
        context.close()


def test_a_server_going_ready_then_crashing_shows_without_reload(
        dashboard: LiveDashboard, browser, tiny_models: dict[str, Path],  # noqa: ANN001
        hf_home: Path) -> None:
    dashboard.register("admin@example.com")
    services = dashboard.services
    services.monitor.start()  # the light services fixture samples nothing on its own
    profile = services.profiles.create(None, ProfileSpec(
        name="Live tiny", model=str(tiny_models["text"]), port=free_port()))
    context, page = _open(browser, dashboard, "admin@example.com")
    try:
        page.get_by_role("tab", name="Servers").click()
        # Started by someone else (the service, as the gateway would): only the live
        # feed can tell this page.
        services.placement.start(None, profile.id)
        tile = f"#srv-{profile.id}"
        page.wait_for_selector(f"{tile} [data-state=ready]", timeout=120_000)

        # Stopped elsewhere: the tile goes (the page waits for the stop to end).
        services.supervisor.stop(profile.id)
        page.wait_for_selector(tile, state="detached", timeout=60_000)
        services.placement.start(None, profile.id)
        page.wait_for_selector(f"{tile} [data-state=ready]", timeout=120_000)
        snap = services.supervisor.snapshot(profile.id)
        assert snap.state is ServerState.READY and snap.pid is not None

        os.killpg(snap.pid, signal.SIGKILL)  # a crash
        page.wait_for_selector(f"{tile} [data-state=failed], {tile} [data-state=backoff]",
                               timeout=60_000)
        wait_for(lambda: services.supervisor.snapshot(profile.id).state in
                 (ServerState.FAILED, ServerState.BACKOFF), 30, "the crash to be recorded")
    finally:
        context.close()
        services.supervisor.stop(profile.id)

"""Account journeys in headless Chromium against a live dashboard."""

from __future__ import annotations

import re

import pytest

from tests.conftest import PASSWORD, LiveDashboard

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def dashboard(shared_live_dashboard: LiveDashboard) -> LiveDashboard:
    """The module's one app on a socket, handed to each test as new (no servers run here,
    so nothing but the database and the sign-in limits carries over, and those are reset)."""
    return shared_live_dashboard


def register(page, url: str, email: str) -> None:  # noqa: ANN001 - a Playwright Page
    page.goto(url + "/")
    assert "/login" in page.url
    page.click("text=Create one")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.click("button[type=submit]")


def sign_in(page, url: str, email: str) -> None:  # noqa: ANN001
    page.goto(url + "/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")


def pick_account(page, email: str) -> None:  # noqa: ANN001
    picker = page.locator("#admin-target input")
    picker.click()
    picker.fill(email)
    page.get_by_role("option", name=re.compile(re.escape(email))).first.click()


def test_first_admin_approves_then_disables_a_colleague(
    dashboard: LiveDashboard, browser
) -> None:  # noqa: ANN001
    url = dashboard.url
    admin_ctx, bob_ctx = browser.new_context(), browser.new_context()
    admin, bob = admin_ctx.new_page(), bob_ctx.new_page()
    try:
        # The first user registers and lands on the dashboard as admin.
        register(admin, url, "alice@example.com")
        admin.wait_for_selector("#current-user", timeout=30_000)
        assert "alice@example.com" in admin.inner_text("#current-user")
        assert admin.get_by_role("tab", name="Admin").is_visible()
        assert admin.locator("#pending-badge").count() == 0

        # A second user registers and cannot get in.
        register(bob, url, "bob@example.com")
        # The same answer a taken address gets: it must not say which emails exist.
        bob.wait_for_selector("text=waits for an administrator's approval")
        sign_in(bob, url, "bob@example.com")
        bob.wait_for_selector("text=waiting for an administrator's approval")
        assert "/login" in bob.url or bob.url.rstrip("/").endswith("/login")
        bob.goto(url + "/")
        assert "/login" in bob.url

        # The admin sees the badge "1" and approves.
        admin.reload()
        badge = admin.locator("#pending-badge")
        badge.wait_for(timeout=30_000)
        assert badge.inner_text().strip() == "1"
        admin.get_by_role("tab", name=re.compile("Admin")).click()
        # The MCP servers panel lives in the Admin tab (and nowhere in the Chat tab).
        admin.wait_for_selector("#admin-mcp #mcp-table", state="visible", timeout=30_000)
        assert admin.locator("#chat-mcp").count() == 0
        pick_account(admin, "bob@example.com")
        admin.click("#admin-approve")
        admin.wait_for_selector("#admin-result :text('Approved bob@example.com.')")
        admin.reload()
        admin.wait_for_selector("#current-user")
        assert admin.locator("#pending-badge").count() == 0

        # The second user signs in; they have no Admin tab.
        sign_in(bob, url, "bob@example.com")
        bob.wait_for_selector("#current-user", timeout=30_000)
        assert "bob@example.com" in bob.inner_text("#current-user")
        assert bob.get_by_role("tab", name=re.compile("Admin")).count() == 0 or not \
            bob.get_by_role("tab", name=re.compile("Admin")).is_visible()

        # The admin disables them; their open session is refused on the next call.
        admin.get_by_role("tab", name=re.compile("Admin")).click()
        pick_account(admin, "bob@example.com")
        admin.click("#admin-disable")
        admin.wait_for_selector("#admin-result :text('Disabled bob@example.com')")
        status = bob.evaluate("async () => (await fetch('/config')).status")
        assert status == 401
        bob.reload()
        assert "/login" in bob.url
    finally:
        admin_ctx.close()
        bob_ctx.close()


def test_logout_button_ends_the_session(dashboard: LiveDashboard, browser) -> None:  # noqa: ANN001
    context = browser.new_context()
    page = context.new_page()
    try:
        register(page, dashboard.url, "alice@example.com")
        page.wait_for_selector("#logout-button", timeout=30_000)
        page.click("#logout-button")
        page.wait_for_url(re.compile(r"/login$"))
        page.goto(dashboard.url + "/")
        assert "/login?next=" in page.url
    finally:
        context.close()

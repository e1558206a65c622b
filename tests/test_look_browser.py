"""How the dashboard looks to a person, in headless Chromium (issue 15 item 9): the
sign-in pages and the app wear one theme, light or dark as the system (or ?__theme=)
asks; and an axe-core scan of the sign-in pages and every tab finds no critical or serious
accessibility violation (every field has an accessible name)."""

from __future__ import annotations

import logging
from importlib import resources

import pytest

from manager.api.session_gate import SESSION_COOKIE
from tests.conftest import LiveDashboard

pytestmark = [pytest.mark.slow, pytest.mark.browser]

log = logging.getLogger(__name__)

ALICE = "alice@example.com"
# axe-core as published on npm, shipped inside the axe-playwright-python wheel.
AXE_JS = (resources.files("axe_playwright_python") / "axe.min.js").read_text()
# Contrast (the slowest rule: every text node) is checked everywhere: Gradio's default
# colours for primary and delete buttons, field hints and code fell short of 4.5:1 until
# components/theme.py.
SCAN_JS = """async () => {
  const results = await axe.run(document, {resultTypes: ['violations']});
  return results.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' '))}));
}"""
# What a person sees first: the page background and the font of the text on it (the app
# paints its background on the body, and sets its font on its container).
LOOK_JS = """(text) => [getComputedStyle(document.body).backgroundColor,
                       getComputedStyle(document.querySelector(text)).fontFamily]"""
SIGN_IN, APP = "main", ".gradio-container"


def scan(page, where: str) -> list[dict]:  # noqa: ANN001 - a Page
    """axe-core's violations on the page as it is now (logged, for the report)."""
    if not page.evaluate("typeof axe !== 'undefined'"):  # once per document
        page.evaluate(AXE_JS)
    found = page.evaluate(SCAN_JS)
    for violation in found:
        log.warning("axe %s on %s: %s %s %s", violation["impact"], where, violation["id"],
                    violation["help"], violation["nodes"])
    return found


@pytest.fixture
def dash(shared_live_dashboard: LiveDashboard) -> LiveDashboard:
    shared_live_dashboard.register(ALICE)  # the first account: an admin, every tab
    return shared_live_dashboard


def test_sign_in_and_app_share_one_theme_light_and_dark(dash: LiveDashboard, browser
                                                        ) -> None:  # noqa: ANN001
    looks = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(color_scheme=scheme)
        page = context.new_page()
        try:
            page.goto(dash.url + "/login")
            sign_in = page.evaluate(LOOK_JS, SIGN_IN)
            context.add_cookies([{"name": SESSION_COOKIE, "url": dash.url,
                                  "value": dash.session_cookie(ALICE)}])
            page.goto(dash.url + "/")
            page.wait_for_selector("#current-user", timeout=30_000)
            app = page.evaluate(LOOK_JS, APP)
            assert sign_in == app, (scheme, sign_in, app)
            looks[scheme] = app
        finally:
            context.close()
    assert looks["light"][0] != looks["dark"][0]
    assert "Source Sans Pro" in looks["light"][1]
    # The app's own switch (?__theme=dark) reaches the sign-in page it sends people to.
    context = browser.new_context(color_scheme="light")
    try:
        page = context.new_page()
        page.goto(dash.url + "/?__theme=dark")
        assert "/login" in page.url
        assert page.evaluate(LOOK_JS, SIGN_IN) == looks["dark"]
    finally:
        context.close()


def test_no_serious_accessibility_violation_on_sign_in_or_any_tab(
        dash: LiveDashboard, browser) -> None:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    critical: list[tuple[str, str, list[str]]] = []
    seen: set[str] = set()

    def check(where: str) -> None:
        found = scan(page, where)
        seen.update(v["id"] for v in found)
        critical.extend((where, v["id"], v["nodes"]) for v in found
                        if v["impact"] in ("critical", "serious"))

    try:
        for path in ("/login", "/register"):
            page.goto(dash.url + path)
            check(path)
        context.add_cookies([{"name": SESSION_COOKIE, "url": dash.url,
                              "value": dash.session_cookie(ALICE)}])
        page.goto(dash.url + "/")
        page.wait_for_selector("#current-user", timeout=30_000)
        tabs = page.get_by_role("tab").all_inner_texts()
        assert {"Models", "Servers", "Chat", "Admin"} <= {t.strip() for t in tabs}
        for name in tabs:
            page.get_by_role("tab", name=name.strip(), exact=True).click()
            page.wait_for_selector(f"button[role=tab][aria-selected=true]:has-text("
                                   f"'{name.strip()}')", timeout=10_000)
            if name.strip() == "Servers":
                # Scanned once its chart is drawn: until plotly's module has loaded,
                # Gradio shows its empty-plot placeholder, whose ARIA label no role
                # permits (a moment after the tab opens; reported, not ours to fix).
                page.wait_for_selector("#server-chart .js-plotly-plot", timeout=30_000)
            check(f"tab {name.strip()}")
    finally:
        context.close()
    assert critical == []
    # Fixed on the way (moderate): the dashboard's title is its level-one heading, and
    # each tab's own heading is the next level down.
    assert not {"page-has-heading-one", "heading-order"} & seen

"""CORS: no browser origin may read the dashboard's answers unless an admin listed it."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.errors import ValidationError
from manager.settings import Settings, normalize_origins
from tests.conftest import LiveDashboard, free_port

LISTED = "https://tools.example.org"


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The default settings, or with the origins a test passes (indirect parametrize)."""
    origins = getattr(request, "param", None)
    return Settings.from_env({}, data_dir=tmp_path / "data", port=free_port(),
                             **({"cors_origins": origins} if origins else {}))


def _allow_origin(dashboard: LiveDashboard, origin: str, host: str | None = None) -> str | None:
    dashboard.register("alice@example.com")
    headers = {"Origin": origin}
    if host is not None:
        headers["Host"] = host  # reached by its LAN address
    with dashboard.login("alice@example.com") as client:
        simple = client.get("/config", headers=headers)
        assert simple.status_code == 200
        preflight = client.options("/gradio_api/info", headers={
            **headers, "Access-Control-Request-Method": "POST"})
    allowed = {simple.headers.get("access-control-allow-origin"),
               preflight.headers.get("access-control-allow-origin")}
    assert len(allowed) == 1, allowed
    return allowed.pop()


@pytest.mark.parametrize(
    ("origin", "host"),
    [("http://localhost:9999", None),
     ("http://127.0.0.1:1234", None),
     ("https://evil.example", "192.168.1.20:7860")],
)
def test_an_unlisted_origin_gets_no_cors_headers(
    shared_live_dashboard: LiveDashboard, origin: str, host: str | None
) -> None:
    # Default settings: the module's one app (on a socket, as browsers reach it).
    assert _allow_origin(shared_live_dashboard, origin, host) is None


@pytest.mark.parametrize("settings", [[LISTED + "/"]], indirect=True)
def test_a_listed_origin_is_allowed(live_dashboard: LiveDashboard) -> None:
    assert _allow_origin(live_dashboard, LISTED) == LISTED
    # The gateway too: API clients (no Origin) take its short way in (GatewayFront),
    # browsers the CORS path; both get the same answer.
    with live_dashboard.client() as client:
        browser = client.get("/v1/models", headers={"Origin": LISTED})
        api = client.get("/v1/models")
        preflight = client.options("/v1/chat/completions", headers={
            "Origin": LISTED, "Access-Control-Request-Method": "POST"})
    assert browser.headers.get("access-control-allow-origin") == LISTED
    assert "access-control-allow-origin" not in api.headers
    assert browser.status_code == api.status_code == 401
    assert browser.json() == api.json()
    assert preflight.headers.get("access-control-allow-origin") == LISTED


@pytest.mark.parametrize("bad", ["*", "https://*.example.org", "tools.example.org",
                                 "https://tools.example.org/path", "ftp://x.example"])
def test_only_exact_origins_can_be_listed(bad: str) -> None:
    with pytest.raises(ValidationError):
        normalize_origins([bad])

"""A profile bound beyond loopback (issue 11): its mlx_vlm server demands the profile's
own API key, the manager's own requests (readiness probe, inference client, and so the
chat and the gateway) carry it, and the key shows nowhere a user could read it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from manager.net import free_port
from manager.servers.profiles import ProfileSpec
from manager.services import Services
from tests.conftest import PASSWORD

pytestmark = pytest.mark.slow


def test_a_lan_vision_server_wants_its_key_and_the_manager_sends_it(
        services: Services, tiny_models: dict[str, Path]) -> None:
    admin = services.auth.register("admin@example.com", PASSWORD)
    profile = services.profiles.create(admin, ProfileSpec(
        name="lan", model=str(tiny_models["vision"]), host="0.0.0.0", port=free_port()))
    key = profile.server_key
    assert key
    services.placement.start(admin, profile.id)
    # READY means the readiness probe's 1-token completion got through: it sent the key.
    ready = services.supervisor.wait_ready(profile.id, 120)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    answer = services.inference.chat(profile.id, body)
    assert answer.stats.ok and answer.usage and answer.usage.completion_tokens >= 1
    chunks = list(services.inference.stream_chat(profile.id, body))
    assert chunks and any(c.usage for c in chunks)
    # Anyone else on the network is turned away without it.
    base = f"http://127.0.0.1:{profile.port}"
    with httpx.Client(base_url=base, timeout=60) as client:
        assert client.post("/v1/chat/completions",
                           json={"model": ready.model_path, **body}).status_code == 401
        assert client.get("/health").status_code == 401
        wrong = {"Authorization": "Bearer not-the-key"}
        assert client.get("/health", headers=wrong).status_code == 401
        assert client.get("/health", headers={"Authorization": f"Bearer {key}"}
                          ).status_code == 200
    # Not on argv (ps, the log header, the servers table) and not in the server's log.
    assert ready.log_path and key not in Path(ready.log_path).read_text(errors="replace")
    with services.store.connect() as db:
        rows = list(db.query("SELECT cmdline, log_path FROM servers WHERE profile_id = ?",
                             [profile.id]))
    assert rows and all(key not in (r["cmdline"] or "") for r in rows)
    services.placement.stop(admin, profile.id)

"""PromptCounts.key: the same request to the same server run is one key, whatever writes
its text (orjson, or json for what orjson cannot write); anything that could change the
prompt or the run is another key, the token limit and stream switches are not."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from manager.servers.profiles import Backend, Profile
from manager.servers.prompt_counts import PromptCounts
from manager.servers.snapshot import ServerSnapshot
from manager.servers.supervisor import ServerState

SNAP = ServerSnapshot(profile=Profile(id=1, name="tiny", model="m", backend=Backend.MLX_LM,
                                      host="127.0.0.1", port=8080),
                      state=ServerState.READY, state_since=0.0, model_path="/models/m",
                      pid=10, started_at="2026-12-02T20:00:00+00:00")
HI: dict[str, Any] = {"model": "/models/m", "messages": [{"role": "user", "content": "hi é"}],
                      "max_tokens": 9, "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("extra", [{}, {"seed": 2 ** 70}, {"logit_bias": {1: 2.0}}])
def test_a_request_has_one_key_and_others_another(extra: dict[str, Any]) -> None:
    body = {**HI, **extra}
    key = PromptCounts.key(SNAP, body, False)
    assert PromptCounts.key(SNAP, dict(body), False) == key
    assert PromptCounts.key(SNAP, {**body, "max_tokens": 1, "stream": False}, False) == key
    others = [PromptCounts.key(SNAP, {**body, "messages": [{"role": "user", "content": "hi"}]},
                               False),
              PromptCounts.key(SNAP, body, True),
              PromptCounts.key(replace(SNAP, pid=11), body, False),
              PromptCounts.key(SNAP, {**body, "temperature": 0.5}, False)]
    assert len({key, *others}) == 5

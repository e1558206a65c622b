"""Small chat details a person notices (issue 15 item 8): what the Profiles hint says
about answer length, and the Stop button at rest."""

from __future__ import annotations

import pytest

from components.chat.sending import stop_button
from components.profiles_tab import FIELDS
from manager.servers.profiles import SERVER_MAX_TOKENS, Backend


def test_the_max_tokens_hint_names_each_servers_real_default() -> None:
    hint = next(f.info for f in FIELDS if f.key == "max_tokens")
    assert "512 for mlx_lm" in hint and "2,048 for mlx_vlm" in hint


@pytest.mark.slow  # imports mlx_vlm (a few seconds)
def test_the_vision_default_is_mlx_vlms_own() -> None:
    from mlx_vlm.generate.common import DEFAULT_MAX_TOKENS

    assert SERVER_MAX_TOKENS[Backend.MLX_VLM] == DEFAULT_MAX_TOKENS



def test_stop_is_red_and_clickable_only_while_an_answer_is_written() -> None:
    idle, running = stop_button(False), stop_button(True)
    assert (idle.variant, idle.interactive) == ("secondary", False)
    assert (running.variant, running.interactive) == ("stop", True)

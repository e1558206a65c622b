"""The Admin tab's settings panel: switches an admin changes while the dashboard runs.

For now one: the warm spare interpreter. The domain (SparePool.switch) checks the right
and saves the choice; a flag or environment variable given at start wins, and then the
switch only says so.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.session import TabLoader, handler
from manager.accounts.auth import User
from manager.services import Services

SPARE_LABEL = "Keep a warm spare interpreter (faster server starts)"
SPARE_INFO = ("A Python process with mlx_lm (or mlx_vlm) already imported takes the next "
              "server start; a new one starts in the background. Its memory is shown on "
              "the Servers tab.")


def build(services: Services) -> TabLoader:
    """Builds the panel; returns a loader that fills it for the user of a request."""
    spares = services.supervisor.spares
    gr.Markdown("### Settings")
    warm = gr.Checkbox(label=SPARE_LABEL, info=SPARE_INFO, elem_id="setting-warm-spare")
    result = gr.Markdown(elem_id="settings-result")

    def shown() -> Any:
        if spares.pinned_by:
            return gr.Checkbox(value=spares.enabled, interactive=False,
                               info=f"{SPARE_INFO} Set for this run by {spares.pinned_by}.")
        return gr.Checkbox(value=spares.enabled, interactive=True, info=SPARE_INFO)

    @handler(services, "settings panel load")
    def load(_actor: User) -> Any:
        return shown()

    @handler(services, "changing the warm spare setting")
    def change(actor: User, on: bool) -> dict[Any, Any]:
        if spares.pinned_by:
            raise gr.Error("This setting was fixed when the dashboard started.")
        spares.switch(actor, bool(on))
        state = "on" if spares.enabled else "off"
        return {warm: shown(), result: f"Warm spare interpreter is {state}."}

    warm.input(change, warm, [warm, result], api_name="admin_warm_spare")
    return TabLoader(load, [warm])

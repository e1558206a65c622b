"""The Profiles tab."""

from __future__ import annotations

import gradio as gr

from manager.services import Services


def build(services: Services) -> None:
    gr.Markdown("### Profiles\nComing soon.", elem_id="profiles-coming-soon")

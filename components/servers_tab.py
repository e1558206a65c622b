"""The Servers tab."""

from __future__ import annotations

import gradio as gr

from manager.services import Services


def build(services: Services) -> None:
    gr.Markdown("### Servers\nComing soon.", elem_id="servers-coming-soon")

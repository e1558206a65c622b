"""The Models tab."""

from __future__ import annotations

import gradio as gr

from manager.services import Services


def build(services: Services) -> None:
    gr.Markdown("### Models\nComing soon.", elem_id="models-coming-soon")

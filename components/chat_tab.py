"""The Chat tab."""

from __future__ import annotations

import gradio as gr

from manager.services import Services


def build(services: Services) -> None:
    gr.Markdown("### Chat\nComing soon.", elem_id="chat-coming-soon")

"""What the Chat tab's message box holds: its text and the files attached to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from manager.chat.attachments import uploaded_file


def message_parts(box: Any) -> tuple[str, list[Path]]:
    """Text and attachment paths from a MultimodalTextbox value; every path must be in
    Gradio's upload folder (raises NotUploaded before anything opens it)."""
    if not isinstance(box, dict):
        return (box or "") if isinstance(box, str) else "", []
    files = []
    for item in box.get("files") or []:
        path = item.get("path") if isinstance(item, dict) else item
        if path:
            files.append(uploaded_file(str(path), [gr.utils.get_upload_folder()]))
    return str(box.get("text") or ""), files

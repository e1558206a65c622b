"""The open chat as Markdown (shown and copied to the clipboard) or as a JSON file."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from components.chat.page import ChatPage
from components.session import handler
from manager.accounts.auth import User

log = logging.getLogger(__name__)

EXPORTS_DIR = Path(tempfile.gettempdir()) / "mlx-manager-exports"
EXPORT_KEEP_S = 3600.0
# Best effort: the clipboard API exists only on https:// and localhost pages.
COPY_JS = """
(text) => {
  if (text && navigator.clipboard) { navigator.clipboard.writeText(text).catch(() => {}); }
  return [];
}
"""


def remove_old_exports(root: Path, older_than_s: float) -> None:
    cutoff = time.time() - older_than_s
    for folder in root.iterdir():
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder)
        except OSError as exc:  # another dashboard removing it too, permissions
            log.warning("could not remove old export %s: %s", folder, exc)


def export_name(title: str, suffix: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", title).strip("-.")[:60] or "chat"
    return f"{stem}{suffix}"


def write_json_export(title: str, data: dict[str, Any]) -> Path:
    """Gradio serves a returned file from its own cache (it copies it there); a fresh
    folder keeps names apart, and folders older than an hour are removed."""
    EXPORTS_DIR.mkdir(parents=True, exist_ok=True)
    remove_old_exports(EXPORTS_DIR, EXPORT_KEEP_S)
    folder = Path(tempfile.mkdtemp(dir=EXPORTS_DIR))
    path = folder / export_name(title, ".json")
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def wire(page: ChatPage) -> None:
    services, ui = page.services, page.ui
    chats = services.chats

    @handler(services, "exporting a chat as Markdown")
    def export_markdown(user: User, chat_id: int | None) -> str:
        chat = page.read_chat(user, chat_id)
        return chats.export_markdown(user, chat.id)

    @handler(services, "exporting a chat as JSON")
    def export_file(user: User, chat_id: int | None) -> str:
        chat = page.read_chat(user, chat_id)
        return str(write_json_export(chat.summary.title, chats.export_json(user, chat.id)))

    ui.copy_md.click(export_markdown, ui.current, ui.markdown_out,
                     api_name="chat_export_markdown"
                     ).success(lambda: gr.Textbox(visible=True), None, ui.markdown_out,
                               api_visibility="private"
                     ).then(None, ui.markdown_out, None, js=COPY_JS)
    ui.export_json.click(export_file, ui.current, ui.json_out, api_name="chat_export_json"
                         ).success(lambda: gr.File(visible=True), None, ui.json_out,
                                   api_visibility="private")

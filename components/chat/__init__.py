"""The Chat tab, one concern per module: layout, the server picker, the chat list,
sending and streaming, attachments, exports; `build` puts them together."""

from components.chat.tab import build

__all__ = ["build"]

"""Chat: turns with thinking, attachments, history and MCP tools."""

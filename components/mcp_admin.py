"""The Admin tab's MCP servers panel: add, enable, disable and remove the extra MCP servers
whose tools the chat offers. The tab is shown to admins only; `services.tools` checks the
role again for every action."""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.session import TabLoader, handler
from manager.accounts.auth import User
from manager.accounts.permissions import Action, allowed
from manager.chat.mcp_config import ServerKind, parse_args
from manager.services import Services

MCP_COLUMNS = ["ID", "Name", "Kind", "Runs / URL", "Enabled", "Tools"]


def build(services: Services) -> TabLoader:
    gr.Markdown("### MCP servers\nExtra tools for the chat, next to the built-in ones.")
    with gr.Group(elem_id="admin-mcp"):
        table = gr.Dataframe(headers=MCP_COLUMNS, interactive=False, wrap=True,
                             elem_id="mcp-table")
        with gr.Row():
            name = gr.Textbox(label="Name", max_lines=1, elem_id="mcp-name")
            kind = gr.Radio([("stdio command", ServerKind.STDIO.value),
                             ("streamable HTTP URL", ServerKind.HTTP.value)],
                            value=ServerKind.STDIO.value, label="Kind", elem_id="mcp-kind")
        with gr.Row():
            command = gr.Textbox(label="Command (stdio)", max_lines=1, elem_id="mcp-command")
            arg_line = gr.Textbox(label="Arguments (stdio, split like a shell)", max_lines=1,
                                  elem_id="mcp-args")
            url = gr.Textbox(label="URL (http)", max_lines=1,
                             placeholder="http://127.0.0.1:8000/mcp", elem_id="mcp-url")
        add = gr.Button("Add server", variant="primary", size="sm", elem_id="mcp-add")
        with gr.Row():
            pick = gr.Dropdown(label="Server", choices=[], allow_custom_value=True,
                               elem_id="mcp-pick")
            enable = gr.Button("Enable", size="sm", elem_id="mcp-enable")
            disable = gr.Button("Disable", size="sm", elem_id="mcp-disable")
            remove = gr.Button("Remove", size="sm", variant="stop", elem_id="mcp-remove")
        refresh = gr.Button("Refresh and list their tools", size="sm", elem_id="mcp-refresh")
        result = gr.Markdown(elem_id="mcp-result")

    def listing(actor: User, *, list_tools: bool) -> dict[Any, Any]:
        """The table and the picker; listing tools connects to every enabled server."""
        configs = services.tools.servers(actor)
        by_server: dict[str, list[str]] = {}
        problems: dict[str, str] = {}
        if list_tools:
            toolset = services.tools.toolset()
            for tool in toolset.tools:
                by_server.setdefault(tool.server, []).append(tool.name)
            problems = {p.server: p.message for p in toolset.problems}
        rows = []
        for config in configs:
            if not list_tools:
                tools = "(press Refresh)"
            elif not config.enabled:
                tools = "(disabled)"
            else:
                tools = problems.get(config.name) or ", ".join(by_server.get(config.name, [])) \
                    or "(none)"
            rows.append([config.id if config.id is not None else "", config.name,
                         config.kind.value, config.target, "yes" if config.enabled else "no",
                         tools])
        choices = [(f"{c.name} ({'on' if c.enabled else 'off'})", c.id) for c in configs
                   if c.id is not None]
        return {table: rows, pick: gr.Dropdown(choices=choices)}

    @handler(services, "MCP servers panel load")
    def load(actor: User) -> dict[Any, Any]:
        if not allowed(actor, Action.MANAGE_TOOLS):
            return {table: [], pick: gr.Dropdown(choices=[])}
        return listing(actor, list_tools=False)

    @handler(services, "adding an MCP server")
    def on_add(actor: User, server_name: str, server_kind: str, command_line: str,
               args_line: str, address: str) -> dict[Any, Any]:
        config = services.tools.add_server(
            actor, server_name or "", server_kind or ServerKind.STDIO.value,
            command=command_line or None, args=parse_args(args_line or ""),
            url=address or None)
        return {**listing(actor, list_tools=True),
                result: f"Added the MCP server **{config.name}**."}

    def change(action: str) -> Any:
        @handler(services, f"MCP {action}")
        def on_change(actor: User, ref: Any) -> dict[Any, Any]:
            if ref is None or not str(ref).strip().isdigit():
                raise gr.Error("Pick an MCP server first.")
            server_id = int(str(ref).strip())
            if action == "remove":
                services.tools.remove_server(actor, server_id)
                message = "Removed."
            else:
                config = services.tools.set_enabled(actor, server_id, action == "enable")
                message = f"**{config.name}** is {'on' if config.enabled else 'off'}."
            return {**listing(actor, list_tools=action != "remove"), result: message}

        return on_change

    @handler(services, "listing MCP servers")
    def on_refresh(actor: User) -> dict[Any, Any]:
        return {**listing(actor, list_tools=True), result: ""}

    outputs = [table, pick, result]
    add.click(on_add, [name, kind, command, arg_line, url], outputs, api_name="mcp_add")
    for action, button in (("enable", enable), ("disable", disable), ("remove", remove)):
        button.click(change(action), pick, outputs, api_name=f"mcp_{action}")
    refresh.click(on_refresh, None, outputs, api_name="mcp_servers")
    return TabLoader(load, [table, pick])

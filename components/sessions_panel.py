"""The Admin tab's sessions panel: who is signed in where, and ending a session.

Every button resolves the acting user on the server; AuthService checks the rights.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from components.session import TabLoader, handler
from manager.accounts.auth import User
from manager.accounts.sessions import SessionRecord
from manager.services import Services

COLUMNS = ["User", "Signed in", "Last seen", "Address", "Browser"]


def session_rows(records: list[SessionRecord]) -> list[list[object]]:
    return [[r.email, r.created_at, r.last_seen_at, r.address, r.user_agent[:80]]
            for r in records]


def session_choices(records: list[SessionRecord]) -> list[tuple[str, str]]:
    return [(f"{r.email} from {r.address or 'unknown'} (since {r.created_at})", r.id)
            for r in records]


def build(services: Services) -> TabLoader:
    """Builds the panel; returns a loader that fills it for the user of a request."""
    auth = services.auth
    gr.Markdown("### Active sessions")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="sessions-table",
                         wrap=True)
    with gr.Row():
        # Choices arrive per page load; revoke_session re-checks the id and the rights.
        target = gr.Dropdown(label="Session", choices=[], elem_id="session-target", scale=3,
                             allow_custom_value=True)
        end = gr.Button("End session", variant="stop", elem_id="session-end", scale=1)
        refresh = gr.Button("Refresh", size="sm", elem_id="sessions-refresh", scale=1)
    result = gr.Markdown(elem_id="sessions-result")

    def snapshot(actor: User) -> dict[Any, Any]:
        if not actor.is_admin:
            return {table: [], target: gr.Dropdown(choices=[])}
        records = auth.list_sessions(actor, everyone=True)
        return {table: session_rows(records),
                target: gr.Dropdown(choices=session_choices(records), value=None)}

    @handler(services, "sessions panel load")
    def load(actor: User) -> dict[Any, Any]:
        return snapshot(actor)

    @handler(services, "ending a session")
    def end_session(actor: User, session_id: str | None) -> dict[Any, Any]:
        if not session_id:
            raise gr.Error("Pick a session first.")
        auth.revoke_session(actor, session_id)
        return {**snapshot(actor), result: "Session ended."}

    end.click(end_session, target, [table, target, result], api_name="admin_end_session")
    refresh.click(load, None, [table, target], api_name="admin_sessions")
    return TabLoader(load, [table, target])

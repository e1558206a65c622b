"""The Admin tab: approve, reject, disable, delete, promote and reset accounts; below
them, the MCP servers the chat's tools come from (components/mcp_admin.py).

Every button resolves the acting user on the server; the tab being hidden is not the check.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

import gradio as gr

from components import mcp_admin, sessions_panel, settings_panel
from components.live import LivePart
from components.session import TabLoader, handler
from manager.accounts.auth import Role, User
from manager.accounts.permissions import Action, allowed
from manager.changes import Topic
from manager.services import Services
from manager.units import format_ago

log = logging.getLogger(__name__)

COLUMNS = ["ID", "Email", "Role", "Status", "Created", "Approved", "Last login"]


#: Created, Approved and Last login are HTML cells: "3 min ago" with the exact time as
#: its tooltip.
DATATYPES: list[Literal["str", "number", "html"]] = [
    "number", "str", "str", "str", "html", "html", "html"]


def time_cell(iso: str | None, now: datetime) -> str:
    """ "3 min ago", the exact local time in its tooltip; "" for never."""
    if not iso:
        return ""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError as exc:
        log.debug("not an ISO time %r: %s", iso, exc)
        return html.escape(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    exact = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    ago = format_ago((now - moment).total_seconds())
    return f'<span title="{html.escape(exact)}">{html.escape(ago)}</span>'


def user_rows(users: list[User], now: datetime | None = None) -> list[list[object]]:
    now = now or datetime.now(timezone.utc)
    return [
        [u.id, u.email, u.role.value, u.status.value, time_cell(u.created_at, now),
         time_cell(u.approved_at, now), time_cell(u.last_login_at, now)]
        for u in users
    ]


def user_choices(users: list[User]) -> list[tuple[str, int]]:
    return [(f"{u.email} ({u.status.value}, {u.role.value})", u.id) for u in users]


def build(services: Services) -> TabLoader:
    """Builds the tab; returns a loader that fills it for the user of a request."""
    auth = services.auth
    gr.Markdown("## Accounts")
    table = gr.Dataframe(headers=COLUMNS, datatype=DATATYPES, interactive=False,
                         elem_id="users-table", wrap=True)
    with gr.Row():
        # Choices arrive per page load; the server re-checks every id anyway.
        target = gr.Dropdown(label="Account", choices=[], elem_id="admin-target", scale=3,
                             allow_custom_value=True)
        temp_password = gr.Textbox(
            label="Temporary password (for Reset password)", type="password", scale=2,
            elem_id="admin-temp-password",
        )
    with gr.Row():
        approve = gr.Button("Approve", variant="primary", elem_id="admin-approve")
        reject = gr.Button("Reject", elem_id="admin-reject")
        enable = gr.Button("Enable", elem_id="admin-enable")
        disable = gr.Button("Disable", elem_id="admin-disable")
        promote = gr.Button("Make admin", elem_id="admin-promote")
        demote = gr.Button("Make user", elem_id="admin-demote")
        reset = gr.Button("Reset password", elem_id="admin-reset")
        signout = gr.Button("Sign out everywhere", elem_id="admin-signout")
        delete = gr.Button("Delete…", variant="stop", elem_id="admin-delete")
    # Deleting is final, so it takes a second, explicit click.
    with gr.Row(visible=False) as confirm_row:
        gr.Markdown("**Delete this account for good?** Its chats and keys go with it.")
        confirm_delete = gr.Button("Yes, delete", variant="stop", elem_id="admin-confirm-delete")
        cancel_delete = gr.Button("Keep it", elem_id="admin-cancel-delete")
    result = gr.Markdown(elem_id="admin-result")
    refresh = gr.Button("Refresh list", size="sm", elem_id="admin-refresh")

    def snapshot(actor: User) -> tuple:
        users = auth.list_users(actor)
        return user_rows(users), gr.Dropdown(choices=user_choices(users))

    @handler(services, "admin account list")
    def load(actor: User) -> tuple:
        if not allowed(actor, Action.MANAGE_USERS):
            return [], gr.Dropdown(choices=[])
        return snapshot(actor)

    actions: dict[str, Callable[[User, int, str], str]] = {
        "approve": lambda a, uid, _: f"Approved {auth.approve(a, uid).email}.",
        "reject": lambda a, uid, _: f"Rejected {auth.reject(a, uid).email}.",
        "enable": lambda a, uid, _: f"Enabled {auth.enable(a, uid).email}.",
        "disable": lambda a, uid, _: f"Disabled {auth.disable(a, uid).email}; signed out.",
        "promote": lambda a, uid, _: f"{auth.set_role(a, uid, Role.ADMIN).email} is an admin.",
        "demote": lambda a, uid, _: f"{auth.set_role(a, uid, Role.USER).email} is a user.",
        "reset": lambda a, uid, pw: (
            f"New temporary password set for {auth.reset_password(a, uid, pw).email}; "
            "their sessions were ended."
        ),
        "delete": lambda a, uid, _: _delete(a, uid),
        "signout": lambda a, uid, _: f"Ended {auth.sign_out_everywhere(a, uid)} session(s).",
    }

    def _delete(actor: User, uid: int) -> str:
        auth.delete(actor, uid)
        return "Account deleted."

    def run(name: str) -> Callable[..., tuple]:
        @handler(services, f"admin action {name}")
        def on_action(actor: User, user_id: int | str | None, password: str) -> tuple:
            if user_id is None or not str(user_id).isdigit():
                raise gr.Error("Pick an account first.")
            message = actions[name](actor, int(user_id), password or "")
            rows, dropdown = snapshot(actor)
            return rows, dropdown, message, ""

        return on_action

    outputs = [table, target, result, temp_password]
    for name, button in (("approve", approve), ("reject", reject), ("enable", enable),
                         ("disable", disable), ("promote", promote), ("demote", demote),
                         ("reset", reset), ("signout", signout)):
        button.click(run(name), [target, temp_password], outputs, api_name=f"admin_{name}")
    refresh.click(load, None, [table, target], api_name="admin_users")
    delete.click(lambda: gr.Row(visible=True), None, confirm_row)
    cancel_delete.click(lambda: gr.Row(visible=False), None, confirm_row)
    confirm_delete.click(
        run("delete"), [target, temp_password], outputs, api_name="admin_delete"
    ).then(
        lambda: gr.Row(visible=False), None, confirm_row
    )
    mcp = mcp_admin.build(services)
    sessions = sessions_panel.build(services)
    settings = settings_panel.build(services)

    @handler(services, "admin tab load")
    def load_all(_actor: User, request: gr.Request) -> dict[Any, Any]:
        rows, dropdown = load(request)
        return {table: rows, target: dropdown, **mcp.fn(request), **sessions.fn(request),
                **{settings.outputs[0]: settings.fn(request)}}

    def redraw(actor: User) -> tuple:
        """A registration or another admin's change shows without a reload; the account
        picker keeps its value (only its choices are sent)."""
        if not allowed(actor, Action.MANAGE_USERS):
            return gr.skip(), gr.skip()
        return snapshot(actor)

    # Also redrawn when a wait ends without news, as the header's badge is: accounts
    # change through the CLI too (another process).
    return TabLoader(load_all, [table, target, *mcp.outputs, *sessions.outputs,
                                *settings.outputs],
                     live=(LivePart(frozenset({Topic.ACCOUNTS}), redraw, [table, target],
                                    on_timeout=True),))

"""Pure functions that turn domain objects into small pieces of HTML for the tabs."""

from __future__ import annotations

import html

from manager.auth import User


def header_html(user: User | None, pending: int) -> str:
    """The top bar: product name, the signed-in email, the admin's pending badge, logout."""
    if user is None:
        return "<div class='mm-header'><strong>MLX Model Manager</strong></div>"
    badge = ""
    if user.is_admin and pending > 0:
        label = f"{pending} account{'s' if pending != 1 else ''} waiting for approval"
        badge = (
            f"<span class='mm-badge' id='pending-badge' title='{label}' "
            f"aria-label='{label}'>{pending}</span>"
        )
    role = "admin" if user.is_admin else "user"
    return (
        "<div class='mm-header'>"
        "<strong class='mm-title'>MLX Model Manager</strong>"
        "<span class='mm-spacer'></span>"
        f"{badge}"
        f"<span class='mm-user' id='current-user'>{html.escape(user.email)}"
        f" <small class='mm-role'>{role}</small></span>"
        "<form method='post' action='/logout' class='mm-logout'>"
        "<button type='submit' id='logout-button'>Log out</button></form>"
        "</div>"
    )


def admin_tab_label(pending: int) -> str:
    return f"Admin ({pending})" if pending else "Admin"


DASHBOARD_CSS = """
.mm-header{display:flex;align-items:center;gap:.75rem;padding:.25rem .25rem .5rem}
.mm-title{font-size:1.15rem}.mm-spacer{flex:1}
.mm-badge{background:#dc2626;color:#fff;border-radius:999px;padding:.1rem .55rem;
font-size:.8rem;font-weight:700}
.mm-user{font-size:.9rem}.mm-role{opacity:.7}
.mm-logout{margin:0}.mm-logout button{padding:.3rem .8rem;border-radius:8px;
border:1px solid var(--border-color-primary);background:var(--button-secondary-background-fill);
cursor:pointer}
"""

"""The one place that decides who may do what: `allowed(actor, action, resource)`.

Every mutating domain method calls `require(...)` itself; the UI only asks `allowed(...)`
to decide what to show. A hidden button is never the check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from manager.errors import PermissionDenied

if TYPE_CHECKING:
    # Types only: auth's services call require(), so this module must not import auth.
    from manager.accounts.auth import User


class Action(str, Enum):
    # Admin only.
    MANAGE_USERS = "users.manage"
    MANAGE_TOOLS = "tools.manage"  # MCP servers beyond the built-in one
    MANAGE_TOOL_CHECKS = "toolcheck.manage"  # scenarios of the tool-use check
    MANAGE_FOLDERS = "library.folders"  # extra model folders
    MANAGE_SETTINGS = "settings.manage"
    VIEW_ALL = "everything.view"  # other users' keys, sessions, downloads
    BIND_NETWORK = "profile.bind_network"  # a server reachable from the LAN
    # Any active user.
    PROFILE_CREATE = "profile.create"
    SERVER_START = "server.start"
    MODEL_DOWNLOAD = "model.download"
    CHAT = "chat.use"
    # The resource's owners and admins.
    PROFILE_EDIT = "profile.edit"
    PROFILE_DELETE = "profile.delete"
    SERVER_STOP = "server.stop"
    SERVER_RESTART = "server.restart"
    DOWNLOAD_CONTROL = "download.control"  # pause, resume, cancel
    MODEL_DELETE = "model.delete"
    KEY_REVOKE = "key.revoke"
    SESSION_REVOKE = "session.revoke"


ADMIN_ONLY = frozenset({
    Action.MANAGE_USERS, Action.MANAGE_TOOLS, Action.MANAGE_TOOL_CHECKS, Action.MANAGE_FOLDERS,
    Action.MANAGE_SETTINGS, Action.VIEW_ALL, Action.BIND_NETWORK,
})
ANY_USER = frozenset({
    Action.PROFILE_CREATE, Action.SERVER_START, Action.MODEL_DOWNLOAD, Action.CHAT,
})

_WHAT = {
    Action.MANAGE_USERS: "manage accounts",
    Action.MANAGE_TOOLS: "manage MCP servers",
    Action.MANAGE_TOOL_CHECKS: "manage tool-check scenarios",
    Action.MANAGE_FOLDERS: "manage model folders",
    Action.MANAGE_SETTINGS: "change settings",
    Action.VIEW_ALL: "see other users' items",
    Action.BIND_NETWORK: "make a server reachable from other machines",
    Action.PROFILE_CREATE: "create profiles",
    Action.SERVER_START: "start servers",
    Action.MODEL_DOWNLOAD: "download models",
    Action.CHAT: "chat",
    Action.PROFILE_EDIT: "edit this profile",
    Action.PROFILE_DELETE: "delete this profile",
    Action.SERVER_STOP: "stop this server",
    Action.SERVER_RESTART: "restart this server",
    Action.DOWNLOAD_CONTROL: "control this download",
    Action.MODEL_DELETE: "delete this model",
    Action.KEY_REVOKE: "revoke this key",
    Action.SESSION_REVOKE: "end this session",
}


@dataclass(frozen=True)
class Owned:
    """Whatever a user may own: the ids of the users who count as its owners
    (a profile's creator, whoever started a server, every user who downloaded a model)."""

    owner_ids: frozenset[int]

    @classmethod
    def by(cls, *ids: int | None) -> Owned:
        return cls(frozenset(i for i in ids if i is not None))

    @classmethod
    def by_any(cls, ids: Iterable[int | None]) -> Owned:
        return cls.by(*ids)


#: For admin-only and any-user actions, which have no owner.
NOBODY = Owned(frozenset())


def allowed(actor: User | None, action: Action, resource: Owned = NOBODY) -> bool:
    """May `actor` do `action` to `resource`? `None` is the manager itself (auto-start,
    idle stop, the CLI run by the machine's owner), which may do anything."""
    if actor is None:
        return True
    if not actor.is_active:
        return False
    if actor.is_admin:
        return True
    if action in ADMIN_ONLY:
        return False
    if action in ANY_USER:
        return True
    return actor.id in resource.owner_ids


def require(actor: User | None, action: Action, resource: Owned = NOBODY) -> None:
    """Raise PermissionDenied with a message a person can act on, unless allowed."""
    if allowed(actor, action, resource):
        return
    if actor is not None and not actor.is_active:
        raise PermissionDenied("Your account is not active.")
    who = "Only an administrator" if action in ADMIN_ONLY else \
        "Only its owner or an administrator"
    raise PermissionDenied(f"{who} may {_WHAT[action]}.")

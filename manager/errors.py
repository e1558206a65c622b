"""Errors the domain raises; each message is written for the person using the dashboard."""

from __future__ import annotations


class ManagerError(Exception):
    """Base class: `message` is safe and useful to show to a user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(ManagerError):
    """Input that cannot be accepted; `field` names the form field when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(ManagerError):
    pass


class Conflict(ManagerError):
    pass


class PermissionDenied(ManagerError):
    pass


class AuthenticationFailed(ManagerError):
    pass


class AccountNotActive(AuthenticationFailed):
    """Right password, but the account is pending, rejected or disabled."""


class RateLimited(AuthenticationFailed):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageFull(ManagerError):
    """The disk holding the dashboard's data is full: what was being saved was not."""

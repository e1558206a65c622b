"""The one object that holds every service; built once in app.py and passed to each tab."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from manager.api_keys import ApiKeyService
from manager.auth import AuthService, load_or_create_secret
from manager.settings import Settings
from manager.store import Store

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    auth: AuthService
    api_keys: ApiKeyService

    @classmethod
    def create(cls, settings: Settings) -> Services:
        settings.ensure_dirs()
        store = Store(settings.db_path)
        auth = AuthService(
            store,
            load_or_create_secret(settings.secret_path),
            session_days=settings.session_days,
        )
        api_keys = ApiKeyService(store, auth)
        return cls(settings=settings, store=store, auth=auth, api_keys=api_keys)

    def close(self) -> None:
        """Stop background work; safe to call twice."""
        log.debug("services closed")

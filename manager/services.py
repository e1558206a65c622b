"""The one object that holds every service; built once in app.py and passed to each tab."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher

from manager.accounts.api_keys import ApiKeyService
from manager.accounts.auth import AuthService, load_or_create_secret
from manager.accounts.limits import RegistrationLimiter
from manager.accounts.login_codes import LoginCodes
from manager.changes import Changes, Topic
from manager.chat.engine import ChatEngine
from manager.chat.history import ChatHistory
from manager.chat.stored_responses import ResponseStore
from manager.chat.toolcheck import ToolCheck
from manager.chat.tools import McpToolbox
from manager.models.downloads import DownloadManager
from manager.models.hub import HubClient, HubConfig
from manager.models.library import Library
from manager.saved_settings import SavedSettings
from manager.servers.distributed.group import GroupLauncher
from manager.servers.distributed.remote import SshRanks
from manager.servers.distributed.ssh import SshOptions
from manager.servers.inference import InferenceClient, MetricsStore
from manager.servers.monitor import Monitor
from manager.servers.placement import Placement
from manager.servers.process import run_beside
from manager.servers.profiles import ProfileService
from manager.servers.spare import SparePool
from manager.servers.states import ServerState
from manager.servers.supervisor import Supervisor, Transition
from manager.settings import Settings
from manager.store import Store

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    auth: AuthService
    api_keys: ApiKeyService
    chats: ChatHistory
    hub: HubClient
    library: Library
    downloads: DownloadManager
    profiles: ProfileService
    supervisor: Supervisor
    monitor: Monitor
    metrics: MetricsStore
    inference: InferenceClient
    tools: McpToolbox
    placement: Placement
    chat_engine: ChatEngine
    tool_check: ToolCheck
    responses: ResponseStore
    #: What pages wait on: a counter per topic, moved by every change they show.
    changes: Changes
    #: One-time sign-in links (a notebook's iframe); kept in memory only.
    login_codes: LoginCodes = field(default_factory=LoginCodes)

    @classmethod
    def create(cls, settings: Settings, *, run_servers: bool = True,
               hasher: PasswordHasher | None = None) -> Services:
        """All services. run_servers=False (CLI commands) reads and edits the same data
        without adopting, starting or sampling the servers a dashboard runs. `hasher`:
        argon2's defaults unless given (tests pass a cheap one: hashing dominates them)."""
        settings.ensure_dirs()
        store = Store(settings.db_path)
        changes = Changes()
        auth = AuthService(
            store,
            load_or_create_secret(settings.secret_path),
            session_days=settings.session_days,
            hasher=hasher,
            registrations=RegistrationLimiter(settings.registrations_per_hour),
            on_change=changes.notifier(Topic.ACCOUNTS),
        )
        api_keys = ApiKeyService(store, auth)
        chats = ChatHistory(store, settings.uploads_dir)
        hub_cache = settings.hub_cache  # the one HF cache folder, read once here
        hub = HubClient(HubConfig.from_settings(settings))
        downloads = DownloadManager(store, hub, cache_dir=hub_cache,
                                    max_concurrent=settings.max_downloads,
                                    on_change=changes.notifier(Topic.DOWNLOADS))
        # Whoever downloaded a model may delete it: the library asks the downloads.
        library = Library(store, hub_cache, downloaded_by=downloads.downloaded_by)
        profiles = ProfileService(store, hub_cache=hub_cache)
        spares = spare_pool(settings, store, hub_cache, changes.notifier(Topic.SAMPLES))
        groups = GroupLauncher(settings.logs_dir,
                               remote=SshRanks(SshOptions.from_settings(settings)),
                               nice_steps=settings.server_nice)
        supervisor = Supervisor(store, profiles, settings.logs_dir, hub_cache=hub_cache,
                                spares=spares, groups=groups)

        def record_use(change: Transition) -> None:
            if change.new is ServerState.STARTING:
                library.touch(change.profile.model)  # the Models tab's "last used"

        supervisor.subscribe(record_use)
        supervisor.subscribe(lambda _change: changes.bump(Topic.SERVERS))
        library.set_in_use_check(supervisor.uses_model)
        monitor = Monitor(supervisor, on_sample=changes.notifier(Topic.SAMPLES))
        metrics = MetricsStore()
        inference = InferenceClient(supervisor, metrics)
        # THE start policy (budget, single flight, eviction): every start goes through it.
        placement = Placement(supervisor, profiles)
        # Lazy: the built-in MCP server process starts on the first tool listing or call.
        tools = McpToolbox(store, logs_dir=settings.logs_dir)
        chat_engine = ChatEngine(chats=chats, inference=inference, tools=tools,
                                 supervisor=supervisor, profiles=profiles)
        tool_check = ToolCheck(store=store, supervisor=supervisor, profiles=profiles,
                               placement=placement, tools=tools, metrics=metrics)
        # Responses API answers kept for previous_response_id, pruned as new ones arrive.
        responses = ResponseStore(store, settings.responses_retention_days)
        services = cls(settings=settings, store=store, auth=auth, api_keys=api_keys,
                       chats=chats, hub=hub, library=library, downloads=downloads,
                       profiles=profiles, supervisor=supervisor, monitor=monitor,
                       metrics=metrics, inference=inference, tools=tools, placement=placement,
                       chat_engine=chat_engine, tool_check=tool_check, responses=responses,
                       changes=changes)
        if run_servers:
            services._start_servers()
        return services

    def _start_servers(self) -> None:
        """Adopt, auto-start, spares, sampling, downloads: in a thread of its own while
        this one waits, so that a signal's SystemExit (exit_on_signals) or a Ctrl-C lands
        in the wait. Raised inside the start-up, it could land between a lock's acquire
        and its `with` (a Condition's or a @contextmanager's __enter__ is Python code):
        the lock stays taken, and the clean-up's stops wait on it until they give up."""
        try:
            run_beside(self._start_up, "start-up")
        except BaseException:
            # Ctrl-C during the auto-starts (or a failure): the servers started so far run
            # in their own sessions and would outlive this process. They go as at a
            # dashboard's exit (kept in service mode, for the next start to adopt).
            self.close(keep_servers=self.settings.keep_servers)
            raise

    def _start_up(self) -> None:
        # Adopt servers an earlier run left running, then clear logs nobody needs.
        self.supervisor.adopt_or_reap()
        self.supervisor.cleanup_logs()
        self.tool_check.results.close_interrupted()  # a check the last run was in never ends
        self.placement.auto_start()
        # One spare per backend in use.
        self.supervisor.spares.start({p.backend for p in self.profiles.list()})
        self.monitor.start()
        # Downloads that were running when the dashboard stopped continue now.
        self.downloads.start_workers()

    def close(self, *, keep_servers: bool = False) -> None:
        """Stop background work; safe to call twice. Model servers are stopped unless
        keep_servers (the dashboard's exit: the next start adopts them)."""
        self.downloads.close()
        self.monitor.stop()
        self.inference.close()
        self.tools.close()
        self.responses.close()
        self.supervisor.close(keep_servers=keep_servers)
        log.debug("services closed")


WARM_SPARE = "warm_spare"


def spare_pool(settings: Settings, store: Store, hub_cache: Path,
               on_change: Callable[[], None] | None = None) -> SparePool:
    """The warm spare interpreters: on unless a flag, the environment or an admin's
    saved choice says off (a flag or the environment wins, and the Admin tab says so)."""
    saved = SavedSettings(store)
    pinned = settings.warm_spare
    enabled = pinned if pinned is not None else saved.get_bool(WARM_SPARE)
    return SparePool(sys.executable, hub_cache, settings.logs_dir,
                     enabled=True if enabled is None else enabled,
                     pinned_by="" if pinned is None else
                     "--warm-spare / --no-warm-spare or MLX_MANAGER_WARM_SPARE",
                     save=lambda on: saved.set_bool(WARM_SPARE, on), on_change=on_change,
                     nice_steps=settings.server_nice)

""""Try a tool-use model": download a suggested model, make its profile, start it and
open a chat, as one flow that reports each step as it goes.

It orchestrates the layers below it (models -> servers -> chat), so it lives in the chat
layer. Every step first looks at what exists, so a second run reuses the downloaded
model, the profile, the running server and an empty chat instead of making new ones. A
step that cannot go on raises `FirstRunFailed` with what to do about it.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from manager.accounts.auth import User
from manager.chat.engine import ChatEngine
from manager.chat.history import ChatHistory
from manager.errors import Conflict, ManagerError
from manager.models.download_types import DownloadStatus, DownloadView
from manager.models.downloads import DownloadManager
from manager.models.hf_cache import cached_snapshot
from manager.models.recommended import Suggestion
from manager.servers.placement import Placement
from manager.servers.profiles import MAX_NAME, Profile, ProfileService, ProfileSpec
from manager.servers.snapshot import ServerLoading, ServerNotReady
from manager.servers.states import ServerState
from manager.servers.supervisor import Supervisor
from manager.units import format_bytes, format_duration

log = logging.getLogger(__name__)

#: Seconds between progress lines while a download runs or a model loads.
PROGRESS_EVERY_S = 1.0
#: How long a model may take to load before the flow gives up waiting (it keeps loading).
READY_TIMEOUT_S = 600.0
EXAMPLE_QUESTION = "What is the weather in Paris?"
DESCRIPTION = "Made by “Try a tool-use model”: a small model that can call tools."


class Step(enum.Enum):
    DOWNLOAD = "download"
    PROFILE = "profile"
    START = "start"
    CHAT = "chat"


@dataclass(frozen=True)
class FlowUpdate:
    """One progress line; the last one (`done`) names the profile and the chat."""

    step: Step
    text: str
    profile_id: int | None = None
    chat_id: int | None = None
    done: bool = False


class FirstRunFailed(ManagerError):
    """A step could not be done; the message says which and what to do next."""

    def __init__(self, step: Step, message: str) -> None:
        super().__init__(message)
        self.step = step


class TryToolModel:
    """The flow. One instance serves every user (it keeps no state between runs)."""

    def __init__(self, *, downloads: DownloadManager, profiles: ProfileService,
                 placement: Placement, supervisor: Supervisor, chats: ChatHistory,
                 engine: ChatEngine, progress_every: float = PROGRESS_EVERY_S,
                 ready_timeout: float = READY_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._downloads = downloads
        self._profiles = profiles
        self._placement = placement
        self._supervisor = supervisor
        self._chats = chats
        self._engine = engine
        self._every = progress_every
        self._ready_timeout = ready_timeout
        self._clock = clock

    def run(self, user: User, suggestion: Suggestion) -> Iterator[FlowUpdate]:
        """Download -> profile -> start -> chat; raises FirstRunFailed at the step that
        cannot go on. Closing the generator leaves the download and the server running
        (a second run picks them up)."""
        log.info("%s tries %s", user.email, suggestion.repo_id)
        yield from self._download(user, suggestion)
        profile = self._profile(user, suggestion)
        yield FlowUpdate(Step.PROFILE, f"Profile **{profile.name}** is ready.", profile.id)
        yield from self._start(user, profile)
        chat_id = self._chat(user, profile)
        yield FlowUpdate(
            Step.CHAT, f"Chat open on **{profile.name}** with tools on. Ask something that "
            f"needs a tool, for example “{EXAMPLE_QUESTION}”", profile.id, chat_id, done=True)

    # -- download -------------------------------------------------------------------------

    def _download(self, user: User, s: Suggestion) -> Iterator[FlowUpdate]:
        if cached_snapshot(s.repo_id, self._downloads.cache_dir) is not None:
            yield FlowUpdate(Step.DOWNLOAD, f"{s.label} is already on this machine.")
            return
        view = self._job(user, s)
        yield FlowUpdate(Step.DOWNLOAD, f"Downloading {s.label} ({s.repo_id}, about "
                                        f"{format_bytes(s.download_bytes)})…")
        while True:
            try:
                view = self._downloads.wait(view.id, timeout=self._every,
                                            until=lambda v: not v.status.active)
            except TimeoutError:
                yield FlowUpdate(Step.DOWNLOAD, progress_line(self._downloads.get(view.id)))
                continue
            break
        if view.status is DownloadStatus.DONE:
            yield FlowUpdate(Step.DOWNLOAD, f"Downloaded {s.label} "
                                            f"({format_bytes(view.bytes_total)}).")
            return
        raise FirstRunFailed(Step.DOWNLOAD, stopped_message(s, view))

    def _job(self, user: User, s: Suggestion) -> DownloadView:
        """The download of this repo: one already in the list (resumed if it stopped),
        else a new one."""
        for _attempt in range(2):
            listed = next((v for v in self._downloads.snapshot() if v.repo_id == s.repo_id),
                          None)
            try:
                if listed is None:
                    return self._downloads.start(user, s.repo_id)
                if listed.status.resumable:
                    return self._downloads.resume(user, listed.id)
                return listed
            except Conflict as exc:
                # Someone started or resumed it meanwhile: follow theirs.
                log.info("download of %s for %s: %s", s.repo_id, user.email, exc.message)
            except ManagerError as exc:
                raise FirstRunFailed(Step.DOWNLOAD, f"Could not download {s.label}: "
                                                    f"{exc.message}") from exc
        raise FirstRunFailed(Step.DOWNLOAD, f"The download of {s.label} keeps changing "
                                            "hands. Look at the Models tab, then try again.")

    # -- profile --------------------------------------------------------------------------

    def _profile(self, user: User, s: Suggestion) -> Profile:
        """A profile serving this model (the user's own first), else a new one."""
        if (found := self._existing_profile(user, s)) is not None:
            return found
        taken = {p.name.casefold() for p in self._profiles.list()}
        name = unique_name(s.repo_id.rsplit("/", 1)[-1], taken)
        try:
            profile = self._profiles.create(user, ProfileSpec(name=name, model=s.repo_id,
                                                              description=DESCRIPTION))
        except ManagerError as exc:
            # Two clicks at once: the other one's profile (same name or port) is as good.
            if (found := self._existing_profile(user, s)) is not None:
                log.info("profile for %s made meanwhile: %s", s.repo_id, exc.message)
                return found
            raise FirstRunFailed(Step.PROFILE, f"Could not create a profile for {s.label}: "
                                               f"{exc.message}") from exc
        log.info("%s: profile %s created for %s", user.email, profile.name, s.repo_id)
        return profile

    def _existing_profile(self, user: User, s: Suggestion) -> Profile | None:
        existing = [p for p in self._profiles.list() if p.model == s.repo_id]
        existing.sort(key=lambda p: p.owner_id != user.id)
        return existing[0] if existing else None

    # -- start ----------------------------------------------------------------------------

    def _start(self, user: User, profile: Profile) -> Iterator[FlowUpdate]:
        snap = self._supervisor.snapshot(profile.id)
        state = snap.state if snap is not None else ServerState.STOPPED
        if state is ServerState.READY:
            yield FlowUpdate(Step.START, f"{profile.name} is already running.", profile.id)
            return
        if state is not ServerState.STARTING:
            try:
                self._placement.start(user, profile.id)
            except Conflict as exc:
                log.info("start of %s: %s", profile.name, exc.message)  # started meanwhile
            except ManagerError as exc:
                raise FirstRunFailed(Step.START, f"Could not start {profile.name}: "
                                                 f"{exc.message}") from exc
        yield FlowUpdate(Step.START, f"Starting {profile.name}: loading the model…",
                         profile.id)
        began = self._clock()
        while True:
            try:
                self._placement.wait_ready(profile.id, self._every)
            except ServerLoading:
                waited = self._clock() - began
                if waited > self._ready_timeout:
                    raise FirstRunFailed(Step.START, (
                        f"{profile.name} is still loading after "
                        f"{format_duration(waited)}. Watch it on the Servers tab and open "
                        "the Chat tab once it is Ready.")) from None
                yield FlowUpdate(Step.START, f"Loading the model ({waited:.0f} s so far)…",
                                 profile.id)
                continue
            except ServerNotReady as exc:
                raise FirstRunFailed(Step.START, self._why_not(profile, exc)) from exc
            break
        yield FlowUpdate(Step.START, f"{profile.name} is ready on port {profile.port}.",
                         profile.id)

    def _why_not(self, profile: Profile, exc: ServerNotReady) -> str:
        snap = self._supervisor.snapshot(profile.id)
        if snap is None or snap.state not in (ServerState.FAILED, ServerState.BACKOFF) \
                or not snap.reason:
            return exc.message
        reason = snap.reason.strip()
        if not reason.endswith((".", "!", "?")):
            reason += "."
        return (f"{profile.name} did not start: {reason} Its log is on the Servers tab. "
                "Press Try again to start it again.")

    # -- chat -----------------------------------------------------------------------------

    def _chat(self, user: User, profile: Profile) -> int:
        """The user's newest empty chat on this profile, else a new one."""
        empty = next((c for c in self._chats.list(user, profile.id) if c.message_count == 0),
                     None)
        if empty is not None:
            return empty.id
        return self._engine.start_chat(user, profile).id


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or "base (2)", "base (3)", ... the first not in `taken` (casefolded)."""
    base = base[:MAX_NAME - 5]
    if base.casefold() not in taken:
        return base
    n = 2
    while f"{base} ({n})".casefold() in taken:
        n += 1
    return f"{base} ({n})"


def progress_line(view: DownloadView) -> str:
    """"12.0 MB of 968.0 MB (1 %) · 4.0 MB/s · about 4 min left"; unknowns left out."""
    parts = [format_bytes(view.bytes_done)]
    if view.bytes_total:
        parts[0] += f" of {format_bytes(view.bytes_total)}"
    if view.fraction is not None:
        parts[0] += f" ({view.fraction * 100:.0f} %)"
    if view.speed_bps:
        parts.append(f"{format_bytes(view.speed_bps)}/s")
    if view.eta_seconds is not None:
        parts.append(f"about {format_duration(view.eta_seconds)} left")
    status = "" if view.status is DownloadStatus.RUNNING else f" ({view.status.value})"
    return "Downloading: " + " · ".join(parts) + status


def stopped_message(s: Suggestion, view: DownloadView) -> str:
    """Why the download is not done, and what to press."""
    kept = (f"The {format_bytes(view.bytes_done)} already fetched are kept."
            if view.bytes_done else "")
    if view.status is DownloadStatus.FAILED:
        return (f"The download of {s.label} stopped: {view.error or 'no reason given.'} "
                "Press Try again to continue it.")
    if view.status is DownloadStatus.PAUSED:
        return (f"The download of {s.label} was paused. {kept} Press Try again (or Resume "
                "on the Models tab) to continue it.").replace("  ", " ")
    return (f"The download of {s.label} was cancelled. Press Try again to start it "
            "anew.")

"""Running a tool-use check: every scenario through the Chat tab's own path (ChatEngine,
the MCP toolbox and the built-in MCP server), graded and stored as it completes.

Deterministic: temperature 0, a fixed seed (mlx_lm takes `seed`) and a token cap on
every request. Bounded: at most `max_rounds` tool rounds per scenario, and a scenario
gets `scenario_timeout_s` (checked on every event, and the check's own inference client
gives up on a server that sends nothing for that long). If the server goes away
mid-suite, that scenario and the rest are stored as not run, with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from manager.accounts.auth import Role, User
from manager.accounts.auth import Status as UserStatus
from manager.accounts.permissions import Action, require
from manager.chat.engine import ChatEngine
from manager.chat.events import NOT_RUN, ChatEvent, ChatEventKind, ChatOptions
from manager.chat.toolcheck.grading import grade
from manager.chat.toolcheck.results import (
    CallRecord,
    CheckRun,
    RunStatus,
    ScenarioResult,
    Status,
    Transcript,
)
from manager.chat.toolcheck.scenarios import BUILTIN_SCENARIOS, Scenario
from manager.chat.toolcheck.scratch import ScratchHistory
from manager.chat.toolcheck.store import CheckStore
from manager.chat.tools import McpToolbox
from manager.errors import ManagerError, ValidationError
from manager.servers.inference import InferenceClient, MetricsStore
from manager.servers.placement import Placement
from manager.servers.process import alive
from manager.servers.profiles import Profile, ProfileService
from manager.servers.states import ServerState
from manager.servers.supervisor import Supervisor
from manager.store import Store

log = logging.getLogger(__name__)

#: Who "owns" a check's scratch chats when the manager itself runs it (the CLI): the
#: scratch history never stores it anywhere.
_MANAGER = User(0, "manager", Role.ADMIN, UserStatus.ACTIVE, 0, "", None, None)


@dataclass(frozen=True)
class CheckLimits:
    scenario_timeout_s: float = 120.0
    max_rounds: int = 4
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    tool_timeout_s: float = 20.0
    start_timeout_s: float = 300.0


@dataclass(frozen=True)
class Progress:
    """Sent after each scenario: `done` of `total`, and the result just stored."""

    run_id: int
    done: int
    total: int
    result: ScenarioResult


ProgressListener = Callable[[Progress], None]


def model_revision(path: Path) -> str:
    """The commit of a Hugging Face snapshot, else a short digest of the folder's files
    (names, sizes, modification times): a changed local model gets a new revision."""
    if path.parent.name == "snapshots":
        return path.name[:12]
    digest = hashlib.sha256()
    try:
        for item in sorted(path.iterdir()):
            if item.is_file():
                stat = item.stat()
                digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    except OSError as exc:
        log.info("revision of %s unknown: %s", path, exc)
        return "unknown"
    return "local-" + digest.hexdigest()[:10]


class _Collector:
    """Folds a turn's events into a transcript and token counts."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.calls: list[CallRecord] = []
        self.answer = ""
        self.rounds = 0
        self.error: str | None = None
        self.round_cap = False
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def feed(self, event: ChatEvent) -> None:
        kind = event.kind
        if kind is ChatEventKind.ROUND:
            self.rounds, self.answer = event.round, ""
        elif kind is ChatEventKind.ANSWER:
            self.answer += event.text
        elif kind is ChatEventKind.RECLASSIFIED:
            self.answer = ""
        elif kind is ChatEventKind.TOOL_FINISHED and event.call and event.outcome:
            self.calls.append(CallRecord(self.rounds, event.call.name, event.call.arguments,
                                         event.outcome.status, event.outcome.text))
            self.round_cap = self.round_cap or event.outcome.status == NOT_RUN
        elif kind is ChatEventKind.STATS and event.stats is not None:
            stats = event.stats
            if stats.prompt_tokens is not None:
                self.prompt_tokens = (self.prompt_tokens or 0) + stats.prompt_tokens
            if stats.completion_tokens is not None:
                self.completion_tokens = (self.completion_tokens or 0) + stats.completion_tokens
        elif kind is ChatEventKind.ERROR:
            self.error = event.text

    def transcript(self, *, timed_out: bool, error: str | None = None) -> Transcript:
        return Transcript(self.prompt, tuple(self.calls), self.answer, self.rounds,
                          error or self.error, self.round_cap, timed_out)


class ToolCheck:
    """Runs checks and answers for their results; safe to share between threads (each
    run keeps its state to itself, so two checks at once never mix)."""

    def __init__(self, *, store: Store, supervisor: Supervisor, profiles: ProfileService,
                 placement: Placement, tools: McpToolbox, metrics: MetricsStore,
                 limits: CheckLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.results = CheckStore(store)
        self._supervisor = supervisor
        self._profiles = profiles
        self._placement = placement
        self._tools = tools
        self._metrics = metrics
        self.limits = limits or CheckLimits()
        self._clock = clock

    def scenarios(self) -> list[Scenario]:
        """The built-in suite and every enabled scenario an admin added."""
        return [*BUILTIN_SCENARIOS,
                *(s.scenario for s in self.results.scenarios(enabled_only=True))]

    def metadata(self, profiles: Sequence[Profile]) -> dict[int, dict[str, Any]]:
        """profile id -> the measured score of its current model, for /v1/models: only
        profiles whose latest check ran the model they serve now."""
        latest = self.results.latest_by_profile(results=False)
        out = {}
        for profile in profiles:
            run = latest.get(profile.id)
            if run is not None and run.model == profile.model:
                out[profile.id] = {"score": run.score, "total": run.total, "label": run.label,
                                   "checked_at": run.finished_at or run.started_at,
                                   "model_revision": run.model_revision}
        return out

    def run(self, actor: User | None, profile_id: int, *,
            on_progress: ProgressListener | None = None,
            scenarios: Sequence[Scenario] | None = None) -> CheckRun:
        """Check the profile's model (starting its server if needed); the finished run."""
        require(actor, Action.CHAT)
        profile = self._profiles.get(profile_id)
        suite = list(scenarios if scenarios is not None else self.scenarios())
        if not suite:
            raise ValidationError("There are no scenarios to run.")
        self._ensure_ready(actor, profile)
        run_id = self.results.open_run(
            profile_id=profile.id, profile_name=profile.name, model=profile.model,
            revision=self._revision(profile), setup=self._setup(profile),
            user_id=actor.id if actor is not None else None, total=len(suite))
        log.info("tool check %s of %s started (%d scenarios)", run_id, profile.name,
                 len(suite))
        owner = actor if actor is not None else _MANAGER
        client = InferenceClient(self._supervisor, self._metrics,
                                 read_timeout_s=self.limits.scenario_timeout_s)
        stopped: str | None = None
        try:
            for position, scenario in enumerate(suite):
                if stopped is None:
                    result = self._run_scenario(owner, profile, scenario, client)
                    if result.status is Status.NOT_RUN:
                        stopped = (f"not run: the server stopped answering during "
                                   f"'{scenario.name}'")
                else:
                    result = ScenarioResult(scenario.name, scenario.title, scenario.category,
                                            Status.NOT_RUN, stopped)
                self.results.add_result(run_id, position, result)
                if on_progress is not None:
                    on_progress(Progress(run_id, position + 1, len(suite), result))
        finally:
            client.close()
            finished = self.results.close_run(
                run_id, RunStatus.DONE if stopped is None else RunStatus.STOPPED)
        log.info("tool check %s of %s: %s", run_id, profile.name, finished.label)
        return finished

    # -- internals -------------------------------------------------------------------------

    def _ensure_ready(self, actor: User | None, profile: Profile) -> None:
        snap = self._supervisor.snapshot(profile.id)
        if snap is None or snap.state not in (ServerState.READY, ServerState.STARTING):
            self._placement.start(actor, profile.id, by="tool check")
        self._placement.wait_ready(profile.id, self.limits.start_timeout_s)

    def _revision(self, profile: Profile) -> str:
        snap = self._supervisor.snapshot(profile.id)
        try:
            path = Path(snap.model_path) if snap is not None and snap.model_path \
                else self._profiles.resolve_model(profile.model)
        except ManagerError as exc:
            log.info("model of %s not found for its revision: %s", profile.name, exc.message)
            return "unknown"
        return model_revision(path)

    def _setup(self, profile: Profile) -> dict[str, Any]:
        """What about the profile may change a score: shown beside each run."""
        limits = self.limits
        return {"thinking": profile.thinking, "system_prompt": profile.system_prompt[:200],
                "backend": profile.backend.value, "temperature": limits.temperature,
                "seed": limits.seed, "max_tokens": limits.max_tokens,
                "max_rounds": limits.max_rounds}

    def _server_alive(self, profile: Profile) -> bool:
        snap = self._supervisor.snapshot(profile.id)
        if snap is None or snap.state is not ServerState.READY or snap.pid is None:
            return False
        try:
            return alive(psutil.Process(snap.pid))
        except psutil.Error as exc:
            log.info("server of %s is gone: %s", profile.name, exc)
            return False

    def _run_scenario(self, owner: User, profile: Profile, scenario: Scenario,
                      client: InferenceClient) -> ScenarioResult:
        limits = self.limits
        toolset = self._tools.toolset()
        schemas = {tool.name: tool.parameters for tool in toolset.tools}
        engine = ChatEngine(chats=ScratchHistory(), inference=client, tools=self._tools,
                            supervisor=self._supervisor, profiles=self._profiles)
        options = ChatOptions(tools=True, max_tool_rounds=limits.max_rounds,
                              tool_timeout=limits.tool_timeout_s,
                              temperature=limits.temperature, seed=limits.seed,
                              max_tokens=limits.max_tokens)
        chat = engine.start_chat(owner, profile)
        collector = _Collector(scenario.prompt)
        started = self._clock()
        deadline = started + limits.scenario_timeout_s
        timed_out = False
        with closing(engine.turn(owner, chat.id, profile.id, scenario.prompt, (),
                                 options)) as events:
            for event in events:
                collector.feed(event)
                if self._clock() > deadline:
                    timed_out = True
                    break
        latency = self._clock() - started
        timed_out = timed_out or (collector.error is not None and self._clock() >= deadline)
        error = (f"took longer than {limits.scenario_timeout_s:g} s" if timed_out else None)
        transcript = collector.transcript(timed_out=timed_out, error=error)

        def result(status: Status, reason: str) -> ScenarioResult:
            return ScenarioResult(scenario.name, scenario.title, scenario.category, status,
                                  reason, round(latency, 3), collector.prompt_tokens,
                                  collector.completion_tokens, transcript)

        if collector.error and not collector.round_cap and not timed_out \
                and not self._server_alive(profile):
            log.info("tool check of %s: the server went away during %s: %s", profile.name,
                     scenario.name, collector.error)
            return result(Status.NOT_RUN, f"not run: {collector.error}")
        verdict = grade(scenario, transcript, schemas)
        return result(verdict.status, verdict.reason)

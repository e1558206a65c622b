"""What a tool-use check records: each scenario's transcript (the calls, their arguments and
results, the answer), its verdict in plain words, and the run that holds them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

MAX_RESULT_CHARS = 2000


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not_run"


class RunStatus(str, Enum):
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # the server went away mid-suite; the rest were not run


@dataclass(frozen=True)
class CallRecord:
    """One tool call as the model made it and what became of it."""

    round: int
    name: str
    arguments: str  # as the model wrote them
    status: str  # the toolbox's CallStatus value, or not_run
    result: str

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "name": self.name, "arguments": self.arguments,
                "status": self.status, "result": self.result[:MAX_RESULT_CHARS]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallRecord:
        return cls(int(data.get("round") or 0), str(data.get("name") or ""),
                   str(data.get("arguments") or ""), str(data.get("status") or ""),
                   str(data.get("result") or ""))


@dataclass(frozen=True)
class Transcript:
    prompt: str
    calls: tuple[CallRecord, ...] = ()
    answer: str = ""  # the last round's answer text
    rounds: int = 0
    #: The turn ended early: the engine's message (a server failure or the round cap).
    error: str | None = None
    round_cap: bool = False  # the model still asked for tools at the cap
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "calls": [c.as_dict() for c in self.calls],
                "answer": self.answer, "rounds": self.rounds, "error": self.error,
                "round_cap": self.round_cap, "timed_out": self.timed_out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transcript:
        return cls(str(data.get("prompt") or ""),
                   tuple(CallRecord.from_dict(c) for c in data.get("calls") or []),
                   str(data.get("answer") or ""), int(data.get("rounds") or 0),
                   data.get("error"), bool(data.get("round_cap")),
                   bool(data.get("timed_out")))


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    title: str
    category: str
    status: Status
    reason: str
    latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    transcript: Transcript | None = None

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


@dataclass(frozen=True)
class CheckRun:
    id: int
    profile_id: int | None
    profile_name: str
    model: str
    model_revision: str
    user_id: int | None
    status: RunStatus
    score: int
    total: int
    started_at: str
    finished_at: str | None
    setup: Mapping[str, Any]
    results: tuple[ScenarioResult, ...] = ()

    @property
    def label(self) -> str:
        """"tools 11/12", the measured badge's text."""
        return f"tools {self.score}/{self.total}"

    def summary(self) -> dict[str, Any]:
        """The JSON the CLI prints: score, total and each scenario's verdict."""
        return {"profile": self.profile_name, "model": self.model,
                "model_revision": self.model_revision, "run": self.id,
                "status": self.status.value, "score": self.score, "total": self.total,
                "checked_at": self.finished_at or self.started_at,
                "scenarios": [{"name": r.scenario, "category": r.category,
                               "passed": r.passed, "status": r.status.value,
                               "reason": r.reason, "latency_s": r.latency_s,
                               "prompt_tokens": r.prompt_tokens,
                               "completion_tokens": r.completion_tokens}
                              for r in self.results]}

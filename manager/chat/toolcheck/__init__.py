"""The tool-use check: does a model call the built-in tools correctly? Scenarios as data
(scenarios.py), grading in plain words (grading.py), the run over the Chat tab's own path
(runner.py) and the stored results with their history (store.py)."""

from manager.chat.toolcheck.results import (
    CallRecord,
    CheckRun,
    RunStatus,
    ScenarioResult,
    Status,
    Transcript,
    Verdict,
)
from manager.chat.toolcheck.runner import CheckLimits, Progress, ToolCheck, model_revision
from manager.chat.toolcheck.scenarios import (
    BUILTIN_SCENARIOS,
    ArgRule,
    CallRule,
    Scenario,
    scenario_from_json,
)
from manager.chat.toolcheck.store import CheckStore, StoredScenario

__all__ = [
    "BUILTIN_SCENARIOS", "ArgRule", "CallRecord", "CallRule", "CheckLimits", "CheckRun",
    "CheckStore", "Progress", "RunStatus", "Scenario", "ScenarioResult", "Status",
    "StoredScenario", "ToolCheck", "Transcript", "Verdict", "model_revision",
    "scenario_from_json",
]

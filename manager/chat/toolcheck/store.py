"""Where tool-use checks are kept (SQLite): runs with one row per scenario, history
included, and the scenarios an admin added."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from manager.accounts.auth import User
from manager.accounts.permissions import Action, require
from manager.chat.toolcheck.results import (
    CheckRun,
    RunStatus,
    ScenarioResult,
    Status,
    Transcript,
)
from manager.chat.toolcheck.scenarios import BUILTIN_SCENARIOS, Scenario, scenario_from_json
from manager.clock import utc_now
from manager.errors import Conflict, NotFound
from manager.store import Store, inserted_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredScenario:
    id: int
    scenario: Scenario
    enabled: bool
    created_at: str


def _result(row: Mapping[str, Any]) -> ScenarioResult:
    transcript = json.loads(row["transcript"] or "{}")
    return ScenarioResult(
        row["scenario"], row["title"], row["category"], Status(row["status"]), row["reason"],
        row["latency_s"], row["prompt_tokens"], row["completion_tokens"],
        Transcript.from_dict(transcript) if transcript else None)


def _run(row: Mapping[str, Any], results: tuple[ScenarioResult, ...]) -> CheckRun:
    return CheckRun(row["id"], row["profile_id"], row["profile_name"], row["model"],
                    row["model_revision"], row["user_id"], RunStatus(row["status"]),
                    row["score"], row["total"], row["started_at"], row["finished_at"],
                    json.loads(row["setup"] or "{}"), results)


class CheckStore:
    """Thread-safe (a connection per unit of work)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- runs ---------------------------------------------------------------------------

    def open_run(self, *, profile_id: int, profile_name: str, model: str, revision: str,
                 setup: Mapping[str, Any], user_id: int | None, total: int) -> int:
        with self._store.connect() as db:
            cursor = db.execute(
                "INSERT INTO tool_check_runs (profile_id, profile_name, model, model_revision,"
                " setup, user_id, status, score, total, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                [profile_id, profile_name, model, revision, json.dumps(dict(setup)), user_id,
                 RunStatus.RUNNING.value, total, utc_now()])
            return inserted_id(cursor)

    def add_result(self, run_id: int, position: int, result: ScenarioResult) -> None:
        transcript = result.transcript.as_dict() if result.transcript else {}
        with self._store.connect() as db:
            db.execute(
                "INSERT INTO tool_check_results (run_id, position, scenario, title, category,"
                " status, reason, latency_s, prompt_tokens, completion_tokens, transcript)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, position, result.scenario, result.title, result.category,
                 result.status.value, result.reason, result.latency_s, result.prompt_tokens,
                 result.completion_tokens, json.dumps(transcript)])
            db.execute("UPDATE tool_check_runs SET score = (SELECT count(*) FROM"
                       " tool_check_results WHERE run_id = ? AND status = ?) WHERE id = ?",
                       [run_id, Status.PASSED.value, run_id])

    def close_run(self, run_id: int, status: RunStatus) -> CheckRun:
        with self._store.connect() as db:
            db.execute("UPDATE tool_check_runs SET status = ?, finished_at = ? WHERE id = ?",
                       [status.value, utc_now(), run_id])
        return self.run(run_id)

    def close_interrupted(self) -> int:
        """Mark runs still "running" from an earlier process as stopped: that process ended
        (a crash, a kill) mid-check, so nothing will finish them. Call it only where one
        process owns the data dir (the dashboard at start). How many were closed."""
        with self._store.connect() as db:
            cursor = db.execute(
                "UPDATE tool_check_runs SET status = ?, finished_at = ? WHERE status = ?",
                [RunStatus.STOPPED.value, utc_now(), RunStatus.RUNNING.value])
            closed = cursor.rowcount
        if closed:
            log.warning("%d tool check(s) were cut off when the manager last stopped; "
                        "marked stopped", closed)
        return closed

    def run(self, run_id: int) -> CheckRun:
        with self._store.reading() as db:
            row = next(db.query("SELECT * FROM tool_check_runs WHERE id = ?", [run_id]), None)
            if row is None:
                raise NotFound("That tool check no longer exists.")
            results = tuple(_result(r) for r in db.query(
                "SELECT * FROM tool_check_results WHERE run_id = ? ORDER BY position",
                [run_id]))
        return _run(row, results)

    def history(self, profile_id: int, limit: int = 20) -> list[CheckRun]:
        """A profile's runs, newest first, without their scenario rows."""
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM tool_check_runs WHERE profile_id = ?"
                                 " ORDER BY id DESC LIMIT ?", [profile_id, limit]))
        return [_run(row, ()) for row in rows]

    def latest_by_profile(self, *, results: bool = True) -> dict[int, CheckRun]:
        """Each profile's newest finished run (with its scenario rows unless `results`
        is False: the badges and /v1/models need only the score)."""
        return {run.profile_id: run for run in self._latest("profile_id", results)
                if run.profile_id is not None}

    def latest_by_model(self, *, results: bool = True) -> dict[str, CheckRun]:
        """Each model's newest finished run, whichever profile ran it."""
        return {run.model: run for run in self._latest("model", results)}

    def _latest(self, column: str, with_results: bool) -> list[CheckRun]:
        if column not in ("profile_id", "model"):
            raise ValueError(column)
        with self._store.reading() as db:
            rows = list(db.query(
                f"SELECT * FROM tool_check_runs WHERE id IN (SELECT max(id) FROM"
                f" tool_check_runs WHERE status != ? AND {column} IS NOT NULL"
                f" GROUP BY {column})", [RunStatus.RUNNING.value]))
            ids = [row["id"] for row in rows]
            results: dict[int, list[ScenarioResult]] = {i: [] for i in ids}
            if ids and with_results:
                marks = ", ".join("?" * len(ids))
                for r in db.query(f"SELECT * FROM tool_check_results WHERE run_id IN ({marks})"
                                  " ORDER BY run_id, position", ids):
                    results[r["run_id"]].append(_result(r))
        return [_run(row, tuple(results[row["id"]])) for row in rows]

    # -- admin scenarios ------------------------------------------------------------------

    def scenarios(self, *, enabled_only: bool = False) -> list[StoredScenario]:
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM tool_check_scenarios ORDER BY id"))
        out = []
        for row in rows:
            if enabled_only and not row["enabled"]:
                continue
            try:
                scenario = scenario_from_json(row["definition"])
            except Exception as exc:  # noqa: BLE001 - one bad row must not hide the rest
                log.warning("stored tool-check scenario %s is unreadable: %s", row["id"], exc)
                continue
            out.append(StoredScenario(row["id"], scenario, bool(row["enabled"]),
                                      row["created_at"]))
        return out

    def add_scenario(self, actor: User, definition: str) -> StoredScenario:
        require(actor, Action.MANAGE_TOOL_CHECKS)
        scenario = scenario_from_json(definition)
        if any(s.name == scenario.name for s in BUILTIN_SCENARIOS):
            raise Conflict(f"'{scenario.name}' is a built-in scenario: choose another name.")
        with self._store.connect() as db:
            if next(db.query("SELECT 1 FROM tool_check_scenarios WHERE name = ?",
                             [scenario.name]), None):
                raise Conflict(f"A scenario named '{scenario.name}' already exists.")
            cursor = db.execute(
                "INSERT INTO tool_check_scenarios (name, definition, enabled, created_by,"
                " created_at) VALUES (?, ?, 1, ?, ?)",
                [scenario.name, scenario.to_json(), actor.id, utc_now()])
            scenario_id = inserted_id(cursor)
        log.info("tool-check scenario %s added by user %s", scenario.name, actor.id)
        return next(s for s in self.scenarios() if s.id == scenario_id)

    def remove_scenario(self, actor: User, scenario_id: int) -> None:
        require(actor, Action.MANAGE_TOOL_CHECKS)
        with self._store.connect() as db:
            cursor = db.execute("DELETE FROM tool_check_scenarios WHERE id = ?", [scenario_id])
            if not cursor.rowcount:
                raise NotFound("That scenario no longer exists.")
        log.info("tool-check scenario %s removed by user %s", scenario_id, actor.id)

"""The tool-use check's pure parts and its store: grading transcripts in plain words,
admin scenarios from JSON, results and history in real SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.views import local_tile_html
from manager.chat.toolcheck import (
    BUILTIN_SCENARIOS,
    CallRecord,
    CheckRun,
    RunStatus,
    Scenario,
    ScenarioResult,
    Status,
    Transcript,
    scenario_from_json,
)
from manager.chat.toolcheck.grading import grade
from manager.cli.instance import hold_data_dir
from manager.errors import Conflict, PermissionDenied, ValidationError
from manager.models.capabilities import Capabilities
from manager.models.library import LocalModel
from manager.servers.profiles import ProfileSpec
from manager.services import Services
from tests.conftest import PASSWORD
from tests.test_cli import run_cli

SCENARIOS = {s.name: s for s in BUILTIN_SCENARIOS}
TOOLS = {
    "get_weather": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}},
    "calculator": {"type": "object", "required": ["expression"],
                   "properties": {"expression": {"type": "string"}}},
}


def call(name: str, arguments: str, round_: int = 1, status: str = "ok",
         result: str = "Weather in Paris: 12.2 °C.") -> CallRecord:
    return CallRecord(round_, name, arguments, status, result)


def transcript(name: str, *calls: CallRecord, answer: str = "It is 12.2 °C.",
               **more: object) -> Transcript:
    return Transcript(SCENARIOS[name].prompt, calls, answer, len(calls) + 1, **more)  # type: ignore[arg-type]


PARIS = call("get_weather", '{"city": "Paris"}')

CASES = [
    ("weather_city", transcript("weather_city", PARIS), Status.PASSED,
     "called get_weather with city='Paris'; then answered"),
    ("weather_city", transcript("weather_city", call("get_weather", '{"city": "paris, fr"}')),
     Status.FAILED, "called get_weather with city='paris, fr' but expected Paris"),
    ("weather_city", transcript("weather_city"), Status.FAILED,
     "answered without calling get_weather"),
    ("weather_city", transcript("weather_city", call("get_weather", "{city: Paris")),
     Status.FAILED, "arguments for get_weather were not valid JSON: {city: Paris"),
    ("weather_city", transcript("weather_city", call("get_weather", '{"city": 7}')),
     Status.FAILED, "argument 'city' of get_weather was 7, but the schema asks for a string"),
    ("weather_city", transcript("weather_city", call("get_weather", "{}")), Status.FAILED,
     "called get_weather without the required argument 'city'"),
    ("weather_city", transcript("weather_city", call("send_email", "{}")), Status.FAILED,
     "called send_email, which is not one of its tools (get_weather, calculator)"),
    ("weather_city", transcript("weather_city", PARIS, answer="It is nice."), Status.FAILED,
     "the answer does not use the tool's result (it returned 12.2)"),
    ("weather_city", transcript("weather_city", PARIS, answer=""), Status.FAILED,
     "gave no final answer after the tool results"),
    ("weather_city", transcript("weather_city", PARIS, PARIS), Status.FAILED,
     "made 2 tool calls where 1 was enough"),
    ("schema_enum", transcript("schema_enum",
                               call("get_weather", '{"city": "Tokyo", "unit": "kelvin"}')),
     Status.FAILED, "argument 'unit' of get_weather was 'kelvin', not one of celsius, "
                    "fahrenheit"),
    ("chain", transcript("chain", call("calculator", '{"expression": "6*7"}', result="42"),
                         call("calculator", '{"expression": "42 + 8"}', result="50"),
                         answer="50"), Status.FAILED,
     "called calculator in the same round as the call before it, without waiting for that "
     "call's result"),
    ("no_tool_needed", transcript("no_tool_needed", answer="Bonjour"), Status.PASSED,
     "answered without a tool, as it should"),
    ("calculator_precedence", transcript(
        "calculator_precedence", call("calculator", '"{\\"expression\\": \\"2+3*4\\"}"',
                                      result="14"), answer="14"),
     Status.PASSED, "called calculator with expression='2+3*4'; then answered"),
    ("weather_city", transcript("weather_city", PARIS, round_cap=True, error="Stopped"),
     Status.FAILED, "kept calling get_weather in a loop: still asking after 1 round"),
]


@pytest.mark.parametrize(("name", "seen", "status", "reason"), CASES)
def test_grading_says_why_in_plain_words(name: str, seen: Transcript, status: Status,
                                         reason: str) -> None:
    verdict = grade(SCENARIOS[name], seen, TOOLS)
    assert (verdict.status, verdict.reason) == (status, reason)


def test_the_built_in_suite_has_at_least_twelve_scenarios_that_round_trip_as_json() -> None:
    assert len(BUILTIN_SCENARIOS) >= 12
    assert len({s.name for s in BUILTIN_SCENARIOS}) == len(BUILTIN_SCENARIOS)
    for scenario in BUILTIN_SCENARIOS:
        assert scenario_from_json(scenario.to_json()) == scenario


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"name": "x"}', "'prompt' must be a non-empty text"),
    ('{"name": "Bad Name", "prompt": "p"}', "lower-case letters"),
    ('{"name": "x", "prompt": "p", "calls": [{"args": []}]}', "Call 1 needs a 'tool'"),
    ('{"name": "x", "prompt": "p", "calls": [{"tool": "t", "args": [{"name": "a", '
     '"evaluates_to": "ten"}]}]}', "'evaluates_to' must be a number"),
    ('{"name": "x", "prompt": "p", "no_calls": true, "calls": [{"tool": "t"}]}',
     "both expect calls and forbid them"),
])
def test_an_admin_scenario_is_checked_field_by_field(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        scenario_from_json(text)


def test_admin_scenarios_and_results_are_stored(services: Services, tmp_path: Path) -> None:
    admin = services.auth.register("root@example.com", PASSWORD)
    alice = services.auth.add_user("alice@example.com", PASSWORD)
    store = services.tool_check.results
    definition = json.dumps({"name": "berlin", "prompt": "Weather in Berlin?",
                             "category": "weather", "calls": [{"tool": "get_weather", "args": [
                                 {"name": "city", "equals": "Berlin"}]}]})
    with pytest.raises(PermissionDenied, match="Only an administrator"):
        store.add_scenario(alice, definition)
    added = store.add_scenario(admin, definition)
    assert isinstance(added.scenario, Scenario) and not added.scenario.builtin
    with pytest.raises(Conflict):
        store.add_scenario(admin, definition)
    with pytest.raises(Conflict, match="built-in"):
        store.add_scenario(admin, json.dumps({"name": "chain", "prompt": "p"}))
    assert [s.name for s in services.tool_check.scenarios()][-1] == "berlin"
    store.remove_scenario(admin, added.id)
    assert len(services.tool_check.scenarios()) == len(BUILTIN_SCENARIOS)

    # Two runs of one model: history kept (newest first), the latest per model and profile.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen3"}')
    profile = services.profiles.create(None, ProfileSpec(name="p", model=str(model)))
    for score in (1, 0):
        run_id = store.open_run(profile_id=profile.id, profile_name="p", model="m",
                                revision="abc", setup={}, user_id=alice.id, total=2)
        for position in range(2):
            status = Status.PASSED if position < score else Status.FAILED
            store.add_result(run_id, position, ScenarioResult(
                f"s{position}", "S", "weather", status, "why", 0.5, 10, 2,
                Transcript("p", (PARIS,), "a", 2)))
        store.close_run(run_id, RunStatus.DONE)
    latest = store.latest_by_model()["m"]
    assert (latest.score, latest.total, latest.label) == (0, 2, "tools 0/2")
    assert latest.results[0].transcript is not None
    assert latest.results[0].transcript.calls == (PARIS,)
    assert [r.score for r in store.history(profile.id)] == [0, 1]
    assert store.latest_by_profile()[profile.id].id == latest.id
    assert latest.summary()["scenarios"][0] == {
        "name": "s0", "category": "weather", "passed": False, "status": "failed",
        "reason": "why", "latency_s": 0.5, "prompt_tokens": 10, "completion_tokens": 2}


def test_check_tools_says_what_to_do_when_it_cannot_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    unknown = run_cli("check-tools", "nope", data_dir=data_dir)
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    with hold_data_dir(data_dir, "a dashboard on port 8765"):
        busy = run_cli("check-tools", "nope", "--json", data_dir=data_dir)
    assert busy.returncode == 1
    assert "in use by a dashboard on port 8765" in busy.stderr
    assert "Tool use tab" in busy.stderr
    assert busy.stdout == ""


def _run(score: int, total: int = 12) -> CheckRun:
    return CheckRun(7, 1, "qwen-tools", "mlx-community/tiny", "abc123", None, RunStatus.DONE,
                    score, total, "2026-12-02T01:00:00+00:00", "2026-12-02T01:02:03+00:00", {})


@pytest.mark.parametrize(("score", "colour"), [(11, "green"), (6, "amber"), (5, "red")])
def test_the_measured_badge_sits_beside_the_guessed_one_on_a_model_tile(
        score: int, colour: str) -> None:
    caps = Capabilities(architecture="qwen3", tool_use=True)
    model = LocalModel("mlx-community/tiny", Path("/m/tiny"), "hf_cache", 1000, caps, True, 0.0)
    html = local_tile_html(model, None, can_delete=False, measured=_run(score))
    assert "tools · guessed" in html
    assert f">tools {score}/12</span>" in html and f"mm-chip-fit-{colour}" in html
    assert "Measured by the tool-use check on 2026-12-02 01:02 UTC" in html
    assert "tools · guessed" in local_tile_html(model, None, can_delete=False)
    assert "mm-chip-measured" not in local_tile_html(model, None, can_delete=False)


def test_a_check_cut_off_by_a_crash_is_stopped_on_the_next_start(
        services: Services, tmp_path: Path) -> None:
    # The dashboard died mid-check: its run stayed "running" forever and never left the
    # history's spinner. The next start that owns the data dir closes it as stopped.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen3"}')
    profile = services.profiles.create(None, ProfileSpec(name="p", model=str(model)))
    store = services.tool_check.results
    cut_off = store.open_run(profile_id=profile.id, profile_name="p", model="m",
                             revision="abc", setup={}, user_id=None, total=3)
    assert store.run(cut_off).status is RunStatus.RUNNING

    restarted = Services.create(services.settings, run_servers=True)
    try:
        run = restarted.tool_check.results.run(cut_off)
    finally:
        restarted.close()
    assert run.status is RunStatus.STOPPED and run.finished_at is not None
    assert store.close_interrupted() == 0  # nothing left running

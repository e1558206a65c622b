"""The tool-use check through real mlx_lm servers on scripted tiny models with known
behaviour, the real ChatEngine, MCP client and built-in MCP server, and real SQLite:
exact scores and reasons, a server dying mid-suite, two checks at once."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from manager.accounts.auth import User
from manager.api.login import SESSION_COOKIE
from manager.chat.mcp_builtin import sample_weather
from manager.chat.toolcheck import (
    BUILTIN_SCENARIOS,
    CheckLimits,
    CheckRun,
    Progress,
    RunStatus,
    ScenarioResult,
    Status,
    ToolCheck,
    Transcript,
)
from manager.net import free_port
from manager.servers.profiles import Profile, ProfileSpec
from manager.services import Services
from manager.settings import Settings
from tests.conftest import PASSWORD, TEST_HASHER, LiveDashboard, run_uvicorn
from tests.server_helpers import hf_home_env
from tests.test_cli import run_cli
from tests.toolcheck_models import make_check_models

pytestmark = pytest.mark.slow

NAMES = [s.name for s in BUILTIN_SCENARIOS]


@dataclass
class CheckEnv:
    services: Services
    profiles: dict[str, Profile]
    alice: User
    bob: User


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CheckEnv]:
    root = tmp_path_factory.mktemp("toolcheck")
    models = make_check_models(root / "models")
    with hf_home_env(root / "hf_home"):
        (root / "hf_home" / "hub").mkdir(parents=True)
        services = Services.create(Settings(data_dir=root / "data", port=free_port(),
                                            warm_spare=False),
                                   run_servers=False, hasher=TEST_HASHER)
        try:
            profiles = {}
            for name, path in models.items():
                profiles[name] = services.profiles.create(None, ProfileSpec(
                    name=name, model=str(path), port=free_port()))
            # A second profile of the silent model, for the server that dies mid-suite:
            # the check starts it itself.
            profiles["doomed"] = services.profiles.create(None, ProfileSpec(
                name="doomed", model=str(models["silent"]), port=free_port()))
            # One the command line checks, with services of its own (its server is not
            # running here: the command starts it and stops it again).
            profiles["cli"] = services.profiles.create(None, ProfileSpec(
                name="cli-silent", model=str(models["silent"]), port=free_port()))
            # One the browser journey checks (the check starts its server too).
            profiles["browser"] = services.profiles.create(None, ProfileSpec(
                name="in-browser", model=str(models["silent"]), port=free_port()))
            for name in models:
                services.supervisor.start(profiles[name].id)
            for name in models:
                services.supervisor.wait_ready(profiles[name].id, 120)
            alice = services.auth.register("alice@example.com", PASSWORD)
            bob = services.auth.add_user("bob@example.com", PASSWORD)
            yield CheckEnv(services, profiles, alice, bob)
        finally:
            services.close()


@pytest.fixture(scope="module")
def live(env: CheckEnv) -> Iterator[LiveDashboard]:
    """The real app on a socket over the module's services (gateway and browser)."""
    from app import create_app

    port = env.services.settings.port
    server, thread = run_uvicorn(create_app(env.services), port)
    yield LiveDashboard(f"http://127.0.0.1:{port}", env.services)
    server.should_exit = True
    thread.join(timeout=15)


def reasons(run: CheckRun) -> dict[str, str]:
    return {r.scenario: r.reason for r in run.results}


def passed(run: CheckRun) -> list[str]:
    return [r.scenario for r in run.results if r.passed]


def test_two_checks_at_once_keep_their_own_results_and_score_exactly(env: CheckEnv) -> None:
    """Alice checks the model that uses tools correctly while Bob checks the one that
    never calls a tool, at the same time: each run has its own 12 rows."""
    runs: dict[str, CheckRun] = {}
    progress: dict[str, list[Progress]] = {"correct": [], "silent": []}

    def check(user: User, name: str) -> None:
        runs[name] = env.services.tool_check.run(user, env.profiles[name].id,
                                                 on_progress=progress[name].append)

    threads = [threading.Thread(target=check, args=(env.alice, "correct")),
               threading.Thread(target=check, args=(env.bob, "silent"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    correct, silent = runs["correct"], runs["silent"]
    assert (correct.score, correct.total, correct.label) == (12, 12, "tools 12/12")
    assert correct.user_id == env.alice.id and silent.user_id == env.bob.id
    assert correct.status is RunStatus.DONE and correct.model == str(
        env.profiles["correct"].model)
    assert reasons(correct)["weather_city"] == "called get_weather with city='Paris'; then answered"
    assert reasons(correct)["no_tool_needed"] == "answered without a tool, as it should"
    assert reasons(correct)["chain"] == ("called calculator with expression='6 * 7'; called "
                                         "calculator with expression='42 + 8'; then answered")
    paris = correct.results[0].transcript
    assert paris is not None and paris.calls[0].status == "ok"
    assert sample_weather("Paris").text() == paris.calls[0].result
    assert paris.answer == f"It is {sample_weather('Paris').temperature:.1f} C in Paris."
    assert all(r.latency_s is not None and r.completion_tokens for r in correct.results)

    assert (silent.score, silent.total) == (2, 12)
    assert passed(silent) == ["no_tool_needed", "missing_tool"]
    assert reasons(silent)["weather_city"] == "answered without calling get_weather"
    assert reasons(silent)["valid_json"] == "answered without calling calculator"
    # Progress came per scenario, in order, for each run only.
    assert [p.done for p in progress["correct"]] == list(range(1, 13))
    assert {p.run_id for p in progress["silent"]} == {silent.id}
    stored = env.services.tool_check.results.run(silent.id)
    assert [r.scenario for r in stored.results] == NAMES and stored.score == 2
    latest = env.services.tool_check.results.latest_by_profile()
    assert latest[env.profiles["correct"].id].id == correct.id


def test_a_model_that_calls_the_wrong_tool(env: CheckEnv) -> None:
    run = env.services.tool_check.run(env.alice, env.profiles["wrong_tool"].id)
    assert (run.score, run.total) == (0, 12)
    assert reasons(run) == {
        "weather_city": "called calculator but expected get_weather",
        "calculator_precedence": "called calculator with expression='1 + 1' but expected an "
                                 "expression worth 14",
        "two_cities": "called calculator but expected get_weather",
        "no_tool_needed": "called calculator with expression='1 + 1', but this question "
                          "needs no tool",
        "missing_tool": "called calculator with expression='1 + 1', but this question needs "
                        "no tool",
        "schema_enum": "called calculator but expected get_weather",
        "valid_json": "called calculator with expression='1 + 1' but expected an expression "
                      "worth 3",
        "uses_result": "called calculator but expected get_weather",
        "chain": "called calculator with expression='1 + 1' but expected an expression "
                 "worth 42",
        "stops_after_answer": "called calculator with expression='1 + 1' but expected an "
                              "expression worth 144",
        "tool_error": "none of its calls made the tool report an error (called calculator "
                      "with expression='1 + 1')",
        "weather_and_math": "called calculator but expected get_weather",
    }


def test_a_model_with_malformed_arguments(env: CheckEnv) -> None:
    run = env.services.tool_check.run(env.alice, env.profiles["malformed"].id)
    assert (run.score, run.total) == (0, 12)
    assert set(reasons(run).values()) == {
        "arguments for get_weather were not valid JSON: city=Paris"}
    first = run.results[0].transcript
    assert first is not None and first.calls[0].status == "bad_arguments"


def test_a_model_that_loops_is_stopped_at_the_round_cap(env: CheckEnv) -> None:
    """With a cap of 2 tool rounds (the default is 4): two calls run, the third is not."""
    services = env.services
    capped = ToolCheck(store=services.store, supervisor=services.supervisor,
                       profiles=services.profiles, placement=services.placement,
                       tools=services.tools, metrics=services.metrics,
                       limits=CheckLimits(max_rounds=2))
    run = capped.run(env.alice, env.profiles["looping"].id)
    assert (run.score, run.total) == (0, 12)
    assert set(reasons(run).values()) == {
        "kept calling get_weather in a loop: still asking after 2 rounds"}
    first = run.results[0].transcript
    assert first is not None and first.round_cap and first.rounds == 3
    assert [c.status for c in first.calls] == ["ok", "ok", "not_run"]
    assert run.setup["max_rounds"] == 2 and run.setup["temperature"] == 0.0


def test_the_server_dying_mid_suite_leaves_the_rest_not_run(env: CheckEnv) -> None:
    """The check starts the stopped server itself; after the third scenario the server
    is killed: the fourth fails to get an answer and it and the rest are not run."""
    profile = env.profiles["doomed"]

    def kill_after_third(progress: Progress) -> None:
        if progress.done == 3:
            snap = env.services.supervisor.snapshot(profile.id)
            assert snap is not None and snap.pid is not None
            os.kill(snap.pid, signal.SIGKILL)

    run = env.services.tool_check.run(env.bob, profile.id, on_progress=kill_after_third)
    assert run.status is RunStatus.STOPPED and (run.score, run.total) == (0, 12)
    statuses = [r.status for r in run.results]
    assert statuses == [Status.FAILED] * 3 + [Status.NOT_RUN] * 9
    assert run.results[3].reason.startswith("not run: doomed stopped answering")
    assert {r.reason for r in run.results[4:]} == {
        "not run: the server stopped answering during 'no_tool_needed'"}
    assert env.services.tool_check.results.run(run.id).status is RunStatus.STOPPED


def test_check_tools_on_the_command_line_gates_on_the_score(env: CheckEnv) -> None:
    data_dir = env.services.settings.data_dir
    result = run_cli("check-tools", "cli-silent", "--json", "--min-score", "3",
                     data_dir=data_dir)
    assert result.returncode == 1, result.stderr
    assert "2 of 12 scenarios passed, below the minimum of 3" in result.stderr
    assert "[12/12] weather_and_math: failed" in result.stderr
    report = json.loads(result.stdout)
    assert (report["score"], report["total"], report["profile"]) == (2, 12, "cli-silent")
    assert report["scenarios"][0]["name"] == "weather_city"
    assert report["scenarios"][0]["passed"] is False
    assert report["scenarios"][0]["reason"] == "answered without calling get_weather"
    assert [s["name"] for s in report["scenarios"] if s["passed"]] == [
        "no_tool_needed", "missing_tool"]
    # Stored in the same database the dashboard reads; the command stopped its server.
    history = env.services.tool_check.results.history(env.profiles["cli"].id)
    assert [run.score for run in history] == [2]
    assert history[0].user_id is None


def test_v1_models_carries_the_measured_score_of_checked_models(env: CheckEnv,
                                                                live: LiveDashboard) -> None:
    services = env.services
    store = services.tool_check.results
    plain = services.profiles.create(None, ProfileSpec(
        name="plain", model=env.profiles["silent"].model, port=free_port()))
    moved = services.profiles.create(None, ProfileSpec(
        name="moved", model=env.profiles["silent"].model, port=free_port()))
    for profile, model in ((plain, plain.model), (moved, "another/model")):
        run_id = store.open_run(profile_id=profile.id, profile_name=profile.name, model=model,
                                revision="abc123", setup={}, user_id=None, total=1)
        store.add_result(run_id, 0, ScenarioResult("s", "S", "weather", Status.PASSED, "ok",
                                                   0.1, 1, 1, Transcript("p")))
        store.close_run(run_id, RunStatus.DONE)
    key = services.api_keys.create(env.alice, "models").secret
    with live.client(headers={"Authorization": f"Bearer {key}"}) as client:
        listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        one = client.get("/v1/models/plain").json()
    check = listed["plain"]["tool_check"]
    assert (check["score"], check["total"], check["label"]) == (1, 1, "tools 1/1")
    assert check["model_revision"] == "abc123" and check["checked_at"]
    assert one["tool_check"] == check
    # A check of the profile's earlier model says nothing about the one it serves now.
    assert "tool_check" not in listed["moved"]


@pytest.mark.browser
def test_a_check_in_the_browser_shows_progress_results_transcript_and_badge(
        env: CheckEnv, live: LiveDashboard, browser) -> None:  # noqa: ANN001
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": SESSION_COOKIE, "url": live.url,
                          "value": live.session_cookie("alice@example.com")}])
    page = context.new_page()
    try:
        page.goto(live.url + "/")
        page.get_by_role("tab", name="Tool use").click()
        page.locator("#toolcheck-profile input").click()
        page.get_by_role("option", name="in-browser").click()
        # Tool use guessed from the template, nothing measured yet. The page opened on
        # cli-silent (first by name), whose badge line reads the same but also shows its
        # measured chip (the command-line test above measured it; run alone, this waits
        # for nothing): only the pick's drawing takes that away.
        page.wait_for_selector("#toolcheck-badges .mm-chip-measured", state="detached",
                               timeout=30_000)
        assert "tools · guessed" in page.inner_text("#toolcheck-badges")
        page.click("#toolcheck-run")
        page.wait_for_selector("#toolcheck-bar", timeout=30_000)
        page.wait_for_selector("#toolcheck-done:has-text('Done: tools 2/12')",
                               timeout=180_000)
        badge = page.locator("#toolcheck-badges .mm-chip-measured")
        assert badge.inner_text() == "tools 2/12"
        assert "mm-chip-fit-red" in (badge.get_attribute("class") or "")
        assert "Measured by the tool-use check on" in (badge.get_attribute("title") or "")
        # The transcript of a scenario is one click away.
        page.locator("#toolcheck-results [role=gridcell]", has_text="weather_city").first.click()
        page.wait_for_selector(
            "#toolcheck-transcript:has-text('answered without calling get_weather')",
            timeout=30_000)
        assert "What is the weather in Paris" in page.inner_text("#toolcheck-transcript")
        assert page.locator("#toolcheck-compare .js-plotly-plot").count() == 1
    finally:
        context.close()
    run = env.services.tool_check.results.history(env.profiles["browser"].id)[0]
    assert (run.score, run.user_id) == (2, env.alice.id)

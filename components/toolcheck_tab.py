"""The Tool use tab: "Check tool use" on a profile, with a progress bar while the check
runs, then its results, a scenario's transcript one click away, the profile's history,
a comparison of every checked model and (admins) the check's own scenarios.

The check runs in a worker thread (manager.chat.toolcheck.ToolCheck.run); the handler
streams its progress from a queue, so each browser tab follows its own run only.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr

from components.session import TabLoader, handler
from components.toolcheck_views import (
    HISTORY_COLUMNS,
    RESULT_COLUMNS,
    comparison_figure,
    history_rows,
    progress_html,
    result_rows,
    tool_badges_html,
    transcript_html,
)
from manager.accounts.auth import User
from manager.accounts.permissions import Action, allowed
from manager.chat.toolcheck import CheckRun, Progress
from manager.errors import ManagerError, ValidationError
from manager.models.capabilities import detect
from manager.servers.profiles import Profile
from manager.services import Services

log = logging.getLogger(__name__)

INTRO = ("## Does this model use tools correctly?\nThe check asks the profile's model "
         "questions that need the built-in weather and calculator tools (and some that need "
         "none), through the same path as the Chat tab, at temperature 0, and grades each "
         "answer. Results are kept, so a re-run after changing the profile shows whether it "
         "got better.")


def _guessed(services: Services, profile: Profile) -> bool:
    """Whether the model's files suggest tool use (the badge labelled "guessed")."""
    try:
        return detect(services.profiles.resolve_model(profile.model)).tool_use
    except ManagerError as exc:
        log.info("capabilities of %s unknown: %s", profile.name, exc.message)
        return False


NO_PROFILES = ("<p class='mm-empty' id='toolcheck-no-profiles'>No profiles to check yet: "
               "make one on the Profiles tab, or press “Try a tool-use model” above.</p>")


def build(services: Services) -> TabLoader:
    check = services.tool_check
    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(label="Profile", choices=[], scale=4, allow_custom_value=True,
                           elem_id="toolcheck-profile")
        run_button = gr.Button("Check tool use", variant="primary", scale=1,
                               elem_id="toolcheck-run")
    badges = gr.HTML(tool_badges_html(False, None), elem_id="toolcheck-badge-line")
    progress = gr.HTML("", elem_id="toolcheck-progress")
    results = gr.Dataframe(headers=RESULT_COLUMNS, interactive=False, wrap=True,
                           elem_id="toolcheck-results")
    shown_run = gr.State(None)  # the run whose rows the table shows, per browser tab
    transcript = gr.HTML(transcript_html(None), elem_id="toolcheck-transcript")
    with gr.Accordion("History of this profile", open=False):
        history = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, wrap=True,
                               elem_id="toolcheck-history")
    compare = gr.Plot(label="All checked models, by scenario category",
                      elem_id="toolcheck-compare")
    with gr.Accordion("Scenarios (administrators)", open=False, visible=False) as admin_box:
        scenario_list = gr.Markdown(elem_id="toolcheck-scenarios")
        definition = gr.Code(label="A new scenario (JSON)", language="json",
                             elem_id="toolcheck-definition",
                             value=BUILTIN_EXAMPLE)
        with gr.Row():
            add = gr.Button("Add scenario", elem_id="toolcheck-add")
            remove_pick = gr.Dropdown(label="Scenario to remove", choices=[],
                                      allow_custom_value=True, elem_id="toolcheck-remove-pick")
            remove = gr.Button("Remove", variant="stop", elem_id="toolcheck-remove")
        admin_status = gr.Markdown(elem_id="toolcheck-admin-status")

    def emails() -> dict[int, str]:
        return {u.id: u.email for u in services.auth.all_users()}

    def profile_view(selected: str | None) -> tuple:
        """Badges, table, history and transcript of the selected profile's latest run."""
        if not selected:
            return tool_badges_html(False, None), [], [], None, transcript_html(None)
        profile = services.profiles.get(int(selected))
        runs = check.results.history(profile.id)
        latest = check.results.run(runs[0].id) if runs else None
        shown = latest if latest is not None and latest.model == profile.model else None
        return (tool_badges_html(_guessed(services, profile), shown), result_rows(latest),
                history_rows(runs, emails()), latest.id if latest else None,
                transcript_html(None))

    def scenario_lines() -> tuple[str, Any]:
        stored = check.results.scenarios()
        lines = [f"- **{s.scenario.name}** ({s.scenario.category}): {s.scenario.prompt}"
                 for s in stored] or ["No scenarios of your own yet: the built-in 12 run."]
        return "\n".join(lines), gr.Dropdown(choices=[(s.scenario.name, str(s.id))
                                                      for s in stored], value=None)

    @handler(services, "tool use tab load")
    def load(user: User) -> dict[Any, Any]:
        profiles = services.profiles.list()
        selected = str(profiles[0].id) if profiles else None
        shown = profile_view(selected)
        may_admin = allowed(user, Action.MANAGE_TOOL_CHECKS)
        lines, picker = scenario_lines() if may_admin else ("", gr.Dropdown())
        return {pick: gr.Dropdown(choices=[(p.name, str(p.id)) for p in profiles],
                                  value=selected),
                badges: shown[0], results: shown[1], history: shown[2], shown_run: shown[3],
                transcript: shown[4], progress: "" if profiles else NO_PROFILES,
                compare: comparison_figure(list(check.results.latest_by_model().values())),
                admin_box: gr.Accordion(visible=may_admin), scenario_list: lines,
                remove_pick: picker}

    @handler(services, "picking a profile to check")
    def on_pick(_user: User, selected: str | None) -> tuple:
        return (*profile_view(selected), "")

    @handler(services, "checking tool use")
    def on_run(user: User, selected: str | None) -> Iterator[tuple]:
        if not selected:
            raise ValidationError("Pick a profile to check first.")
        profile_id = int(selected)
        updates: queue.Queue[Progress | CheckRun | ManagerError] = queue.Queue()

        def work() -> None:
            try:
                updates.put(check.run(user, profile_id, on_progress=updates.put))
            except ManagerError as exc:
                updates.put(exc)

        total = len(check.scenarios())
        skip = gr.skip()
        yield skip, [], skip, None, transcript_html(None), progress_html(0, total), skip
        threading.Thread(target=work, name=f"toolcheck-{profile_id}", daemon=True).start()
        while True:
            update = updates.get()
            if isinstance(update, ManagerError):
                raise update
            if isinstance(update, Progress):
                yield (skip, skip, skip, skip, skip,
                       progress_html(update.done, update.total, update.result), skip)
                continue
            shown = profile_view(selected)
            done = (f"<div class='mm-meta' id='toolcheck-done'>Done: {update.label} "
                    f"({update.status.value}).</div>")
            figure = comparison_figure(list(check.results.latest_by_model().values()))
            yield (shown[0], result_rows(update), shown[2], update.id, transcript_html(None),
                   progress_html(update.total, update.total) + done, figure)
            return

    @handler(services, "showing a check's transcript")
    def on_row(_user: User, run_id: int | None, event: gr.SelectData) -> str:
        if run_id is None or event.index is None:
            return transcript_html(None)
        row = event.index[0] if isinstance(event.index, list | tuple) else event.index
        run = check.results.run(int(run_id))
        return transcript_html(run.results[int(row)] if 0 <= int(row) < len(run.results)
                               else None)

    @handler(services, "adding a tool-check scenario")
    def on_add(user: User, text: str) -> tuple:
        added = check.results.add_scenario(user, text or "")
        return (*scenario_lines(), f"Added **{added.scenario.name}**; it runs in every "
                                   "check from now on.")

    @handler(services, "removing a tool-check scenario")
    def on_remove(user: User, scenario_id: str | None) -> tuple:
        if not scenario_id:
            raise ValidationError("Pick a scenario to remove first.")
        check.results.remove_scenario(user, int(scenario_id))
        return (*scenario_lines(), "Removed.")

    view_outputs = [badges, results, history, shown_run, transcript, progress]
    pick.input(on_pick, pick, view_outputs, api_name="toolcheck_pick")
    run_button.click(on_run, pick, [*view_outputs[:5], progress, compare],
                     api_name="toolcheck_run", concurrency_limit=None)
    results.select(on_row, shown_run, transcript)
    add.click(on_add, definition, [scenario_list, remove_pick, admin_status],
              api_name="toolcheck_add_scenario")
    remove.click(on_remove, remove_pick, [scenario_list, remove_pick, admin_status],
                 api_name="toolcheck_remove_scenario")
    return TabLoader(load, [pick, *view_outputs, compare, admin_box, scenario_list,
                            remove_pick])


BUILTIN_EXAMPLE = """{
  "name": "weather_rome",
  "title": "Weather in Rome",
  "category": "weather",
  "prompt": "What is the weather in Rome?",
  "calls": [{"tool": "get_weather", "args": [{"name": "city", "equals": "Rome"}]}],
  "max_calls": 1,
  "answer_uses_result": true
}"""

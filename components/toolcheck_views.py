"""Pure pieces of the tool-use check's UI: the measured badge beside the guessed one, the
progress bar, the results table, a scenario's transcript and the comparison chart."""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from manager.chat.toolcheck import CheckRun, ScenarioResult, Status

RESULT_COLUMNS = ["Scenario", "Category", "Result", "Why", "Seconds", "Tokens"]
HISTORY_COLUMNS = ["Checked", "Score", "Model revision", "Thinking", "System prompt", "By"]
_LABELS = {Status.PASSED: "✅ passed", Status.FAILED: "❌ failed", Status.NOT_RUN: "⏸ not run"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def score_color(run: CheckRun) -> str:
    """green: 90 % or more passed; amber: half or more; red below."""
    share = run.score / run.total if run.total else 0.0
    return "green" if share >= 0.9 else "amber" if share >= 0.5 else "red"


def checked_on(run: CheckRun) -> str:
    return (run.finished_at or run.started_at)[:16].replace("T", " ")


def measured_chip(run: CheckRun | None) -> str:
    """"tools 11/12", coloured by score, the date (and what was checked) in its tooltip."""
    if run is None:
        return ""
    tip = (f"Measured by the tool-use check on {checked_on(run)} UTC ({run.profile_name}, "
           f"model revision {run.model_revision}): {run.score} of {run.total} scenarios "
           "passed.")
    return (f"<span class='mm-chip mm-chip-measured mm-chip-fit-{score_color(run)}' "
            f"title='{_e(tip)}'>{_e(run.label)}</span>")


def guessed_chip() -> str:
    return ("<span class='mm-chip mm-chip-tools mm-chip-tools-guessed' title='Guessed from the "
            "chat template, not measured: run Check tool use (Tool use tab) to measure it'>"
            "tools · guessed</span>")


def tool_badges_html(guessed: bool, run: CheckRun | None) -> str:
    """The guessed tools chip (when the template suggests tools) and the measured one."""
    chips = (guessed_chip() if guessed else "") + measured_chip(run)
    return f"<div class='mm-badges' id='toolcheck-badges'>{chips or 'Not checked yet.'}</div>"


def progress_html(done: int, total: int, last: ScenarioResult | None = None) -> str:
    width = 100.0 * done / total if total else 0.0
    what = (f"{done} of {total}: {_e(last.scenario)} {last.status.value.replace('_', ' ')}"
            if last is not None else f"Starting the check ({total} scenarios)…")
    return (f"<div class='mm-progress' role='progressbar' id='toolcheck-bar' "
            f"aria-valuenow='{width:.0f}' aria-valuemin='0' aria-valuemax='100'>"
            f"<div class='mm-progress-bar' style='width:{width:.1f}%'></div></div>"
            f"<div class='mm-meta'>{what}</div>")


def result_rows(run: CheckRun | None) -> list[list[Any]]:
    if run is None:
        return []
    rows = []
    for result in run.results:
        tokens = (None if result.prompt_tokens is None and result.completion_tokens is None
                  else f"{result.prompt_tokens or 0} + {result.completion_tokens or 0}")
        rows.append([result.scenario, result.category, _LABELS[result.status], result.reason,
                     "n/a" if result.latency_s is None else f"{result.latency_s:.2f}",
                     tokens or "n/a"])
    return rows


def history_rows(runs: Sequence[CheckRun], emails: dict[int, str]) -> list[list[Any]]:
    rows = []
    for run in runs:
        thinking = run.setup.get("thinking")
        rows.append([checked_on(run), f"{run.score}/{run.total}"
                     + ("" if run.status.value == "done" else f" ({run.status.value})"),
                     run.model_revision,
                     "model default" if thinking is None else ("on" if thinking else "off"),
                     (run.setup.get("system_prompt") or "")[:60] or "none",
                     emails.get(run.user_id or 0, "command line")])
    return rows


def transcript_html(result: ScenarioResult | None) -> str:
    """The calls, their arguments and results, and the answer of one scenario."""
    if result is None:
        return "<div class='mm-meta'>Click a row of the results to see its transcript.</div>"
    parts = [f"<h4>{_e(result.title)} <small>({_e(result.scenario)})</small></h4>",
             f"<p><strong>{_e(_LABELS[result.status])}</strong>: {_e(result.reason)}</p>"]
    transcript = result.transcript
    if transcript is None:
        return "".join(parts)
    parts.append(f"<p><strong>Asked:</strong> {_e(transcript.prompt)}</p><ol>")
    for call in transcript.calls:
        parts.append(f"<li>round {call.round}: <code>{_e(call.name)}({_e(call.arguments)})"
                     f"</code> → <em>{_e(call.status)}</em><pre>{_e(call.result)}</pre></li>")
    parts.append("</ol>")
    if transcript.error:
        parts.append(f"<p class='mm-problem'>{_e(transcript.error)}</p>")
    parts.append(f"<p><strong>Answer:</strong></p><pre>{_e(transcript.answer or '(none)')}"
                 "</pre>")
    return f"<div id='toolcheck-transcript-body'>{''.join(parts)}</div>"


def category_shares(run: CheckRun) -> dict[str, float]:
    """Per scenario category, the percentage of its scenarios that passed."""
    totals: dict[str, int] = defaultdict(int)
    passed: dict[str, int] = defaultdict(int)
    for result in run.results:
        totals[result.category] += 1
        passed[result.category] += int(result.passed)
    return {c: 100.0 * passed[c] / totals[c] for c in totals}


def comparison_figure(runs: Sequence[CheckRun]) -> Any:
    """Grouped bars: per scenario category, the share each checked model passed."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for run in runs:
        shares = category_shares(run)
        name = run.model.rstrip("/").rsplit("/", 1)[-1] if "/" in run.model else run.model
        figure.add_bar(x=list(shares), y=list(shares.values()),
                       name=f"{name} ({run.label})",
                       hovertext=[f"{run.profile_name}, {checked_on(run)}"] * len(shares))
    figure.update_layout(barmode="group", height=320, yaxis={"title": "% passed",
                                                             "range": [0, 100]},
                         margin={"l": 40, "r": 10, "t": 30, "b": 40},
                         legend={"orientation": "h"}, title="Checked models by category")
    return figure

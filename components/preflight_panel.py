"""The Profiles form's "Preflight" for a distributed profile: one line per host saying
whether its rank can start there, and what to do when it cannot (see
manager/servers/distributed/preflight.py and docs/distributed.md)."""

from __future__ import annotations

import html

import gradio as gr

from components.session import handler
from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, allowed
from manager.servers.distributed.preflight import PreflightReport, Verdict, preflight_profile
from manager.servers.distributed.ssh import SshOptions
from manager.services import Services

NEW = "new"
_ICONS = {Verdict.OK: "✅", Verdict.WARN: "⚠️", Verdict.FAIL: "❌"}
_ACTIVE = ("starting", "ready", "stopping")


def report_html(report: PreflightReport) -> str:
    """The report as a list, one item per host (escaped: messages quote paths and hosts)."""
    items = []
    for host in report.hosts:
        shown = [f for f in host.findings if f.verdict is not Verdict.OK] or list(host.findings)
        details = "".join(f"<li>{_ICONS[f.verdict]} {html.escape(f.message)}</li>"
                          for f in shown)
        items.append(f'<li data-verdict="{host.verdict.value}"><strong>{_ICONS[host.verdict]} '
                     f"rank {host.rank} · {html.escape(host.label)}</strong><ul>{details}</ul>"
                     "</li>")
    summary = ("Every host is ready." if report.ok else
               "Some hosts are not ready: fix what their lines say, then run it again.")
    return (f'<div class="mm-preflight"><p>{summary}</p><ul>{"".join(items)}</ul>'
            f'<pre class="mm-preflight-lines">{html.escape(chr(10).join(report.lines()))}'
            "</pre></div>")


def build(services: Services, pick: gr.Dropdown) -> None:
    """A "Preflight" button under the Profiles form; it checks the picked profile."""
    with gr.Accordion("Distributed: preflight", open=False, elem_id="profile-preflight-box"):
        gr.Markdown("Checks each host of a distributed profile over ssh: reachable, the same "
                    "Python, mlx and mlx-lm, the model at its path, enough free memory, the "
                    "link, no rank left from an earlier start. See docs/distributed.md.")
        run = gr.Button("Preflight", elem_id="profile-preflight")
        result = gr.HTML(elem_id="profile-preflight-result")

    @handler(services, "preflight of a distributed profile")
    def on_preflight(user: User, selected: str | None) -> str:
        if not selected or selected == NEW:
            raise gr.Error("Pick a distributed profile first.")
        profile = services.profiles.get(int(selected))
        if not allowed(user, Action.SERVER_START, Owned.by(profile.owner_id)):
            raise gr.Error("You cannot start this profile's server, so you cannot run its "
                           "preflight either.")
        snap = services.supervisor.snapshot(profile.id)
        if snap is not None and snap.state.value in _ACTIVE:
            raise gr.Error(f"{profile.name} is running: its ranks hold the ports and memory "
                           "the preflight checks. Stop it first.")
        running = [str(p.id) for p in services.profiles.list() if p.distributed and
                   (s := services.supervisor.snapshot(p.id)) is not None
                   and s.state.value in _ACTIVE]
        model_dir = services.profiles.resolve_model(profile.model)
        report = preflight_profile(profile, str(model_dir),
                                   SshOptions.from_settings(services.settings),
                                   remote_python=services.supervisor.groups.remote_python,
                                   running=running)
        return report_html(report)

    run.click(on_preflight, pick, result, api_name="profile_preflight")

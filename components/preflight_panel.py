"""The Profiles form's "Preflight" for a distributed profile: one line per host saying
whether its rank can start there, and what to do when it cannot (see
manager/servers/distributed/preflight.py and docs/distributed.md), and a copy of the model
to the hosts that lack it, with progress."""

from __future__ import annotations

import html
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from components.session import handler
from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, allowed
from manager.errors import ManagerError
from manager.servers.distributed.hostfile import RankLaunch
from manager.servers.distributed.model_copy import copy_model
from manager.servers.distributed.preflight import (
    PreflightReport,
    Verdict,
    lacks_model,
    preflight_profile,
    profile_launches,
)
from manager.servers.distributed.ssh import SshOptions
from manager.servers.process import model_of_cmdline
from manager.servers.profiles import Profile
from manager.services import Services
from manager.units import format_bytes

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


def progress_html(host: str, sent: int, total: int) -> str:
    share = f" ({100 * sent // total} %)" if total else ""
    return (f'<p class="mm-preflight-copy">Copying the model to {html.escape(host)}: '
            f"{format_bytes(sent)} of {format_bytes(total)}{share}</p>")


def build(services: Services, pick: gr.Dropdown) -> None:
    """A "Preflight" button under the Profiles form; it checks the picked profile, and a
    second one copies the model to the hosts the preflight found without it."""
    with gr.Accordion("Distributed: preflight", open=False, elem_id="profile-preflight-box"):
        gr.Markdown("Checks each host of a distributed profile over ssh: reachable, the same "
                    "Python, mlx and mlx-lm, the model at its path, enough free memory, the "
                    "link, no rank left from an earlier start. See docs/distributed.md.")
        with gr.Row():
            run = gr.Button("Preflight", elem_id="profile-preflight")
            copy = gr.Button("Copy the model to hosts without it",
                             elem_id="profile-preflight-copy")
        result = gr.HTML(elem_id="profile-preflight-result")
    options = SshOptions.from_settings(services.settings)

    def checked(user: User, selected: str | None) -> tuple[Profile, str, list[str]]:
        """The picked profile, its model folder here and the running ranks' ids."""
        if not selected or selected == NEW:
            raise gr.Error("Pick a distributed profile first.")
        profile = services.profiles.get(int(selected))
        if not allowed(user, Action.SERVER_START, Owned.by(profile.owner_id)):
            raise gr.Error("You cannot start this profile's server, so you cannot run its "
                           "preflight either.")
        if profile.distributed is not None and profile.distributed.remote_hosts and \
                not allowed(user, Action.BIND_NETWORK):
            # It runs programs (and writes models) on other machines with this dashboard's
            # ssh keys: what an admin decides, like a server reachable from the LAN.
            raise gr.Error("Only an admin can check or copy to other machines: it logs in "
                           "to them with this dashboard's ssh keys.")
        snap = services.supervisor.snapshot(profile.id)
        if snap is not None and snap.state.value in _ACTIVE:
            raise gr.Error(f"{profile.name} is running: its ranks hold the ports and memory "
                           "the preflight checks. Stop it first.")
        running = list(services.supervisor.groups.running_rank_ids())  # not stale
        return profile, str(services.profiles.resolve_model(profile.model)), running

    def preflight(profile: Profile, model_dir: str, running: list[str]) -> PreflightReport:
        return preflight_profile(profile, model_dir, options, running=running,
                                 remote_python=services.supervisor.groups.remote_python)

    @handler(services, "preflight of a distributed profile")
    def on_preflight(user: User, selected: str | None) -> str:
        return report_html(preflight(*checked(user, selected)))

    @handler(services, "copying a model to distributed hosts")
    def on_copy(user: User, selected: str | None) -> Iterator[str]:
        profile, model_dir, running = checked(user, selected)
        report = preflight(profile, model_dir, running)
        ranks = profile_launches(profile, model_dir, services.supervisor.groups.remote_python)
        todo = [launch for launch, host in zip(ranks, report.hosts, strict=True)
                if not launch.host.is_local and lacks_model(host)]
        if not todo:
            yield "<p>No host lacks the model.</p>" + report_html(report)
            return
        for launch in todo:
            yield from _copy_with_progress(Path(model_dir), launch, options)
        yield report_html(preflight(profile, model_dir, running))

    run.click(on_preflight, pick, result, api_name="profile_preflight")
    copy.click(on_copy, pick, result, api_name="profile_preflight_copy")


def _copy_with_progress(source: Path, launch: RankLaunch, options: SshOptions
                        ) -> Iterator[str]:
    """Copy in a thread; yield a progress line for each step it reports."""
    events: queue.Queue[tuple[int, int] | BaseException | None] = queue.Queue()
    dest = model_of_cmdline(list(launch.argv))

    def work() -> None:
        try:
            copy_model(source, launch.host, dest, options,
                       lambda sent, total: events.put((sent, total)))
        except ManagerError as exc:
            events.put(exc)
            return
        events.put(None)

    threading.Thread(target=work, daemon=True, name="model-copy").start()
    while (event := events.get()) is not None:
        if isinstance(event, BaseException):
            raise event
        yield progress_html(f"{launch.host.label}:{dest}", *event)

"""The Servers tab: start a profile, watch its tile, stop or restart it.

The tiles are redrawn by the page's live feed (components/live.py) when a server
changes state or the monitor has new figures; that only formats the monitor's last
snapshot (no sampling here). The tile HTML is diffed by Gradio, so the page and the
log boxes keep their scroll positions (SERVER-03). Every start, stop and restart goes
through the placement (the one start policy: rights, memory budget, one start at a
time); a tile shows Stop and Restart only to those the domain allows to use them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gradio as gr

from components.group_view import rank_group_html
from components.live import LivePart
from components.server_chart import GAP_INTERVALS, history_figure, series
from components.session import TabLoader, handler
from components.views import server_tile_html, server_tiles_html, spare_line_html
from manager.accounts.auth import User
from manager.accounts.permissions import Action, allowed
from manager.changes import Topic
from manager.errors import ValidationError
from manager.servers.snapshot import ServerSnapshot
from manager.servers.supervisor import ServerState
from manager.services import Services

log = logging.getLogger(__name__)

#: The chart is redrawn at most this often while figures arrive (plotly is not cheap).
CHART_REFRESH_S = 10.0


def chart_due(drawn_at: float | None, now: float) -> bool:
    """Is the chart worth a redraw (its own event: each one costs the page a plotly
    render and Gradio's status passes, so not with every redraw of the tiles)?"""
    return drawn_at is None or now - drawn_at >= CHART_REFRESH_S

# One delegated listener: tile buttons become a "click" event carrying action + target.
TILE_JS = """
element.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action]');
  if (!button || button.disabled) return;
  trigger('click', {action: button.dataset.action, target: button.dataset.target});
});
"""


#: States in which a "Starting..." or "Restarting..." line is still true.
_UNDER_WAY = frozenset({ServerState.STARTING, ServerState.STOPPING, ServerState.BACKOFF})


def settled_status(snap: ServerSnapshot | None) -> str:
    """The status line once a start or restart settled, so "Starting..." never outlives
    the start: ready, failed, or nothing (stopped meanwhile)."""
    if snap is None or snap.state is ServerState.STOPPED:
        return ""
    name = snap.profile.name
    if snap.state is ServerState.READY:
        return f"{name} is ready on port {snap.profile.port}."
    if snap.state is ServerState.FAILED:
        return f"{name} failed to start: its tile shows why."
    return ""


def status_update(pending: int | None, snap: ServerSnapshot | None) -> tuple[Any, Any]:
    """(new status line, new pending profile id) for the live redraw; `gr.skip()` leaves
    either as the page has it. The pending id is written only when the start it names
    settled: a tick reads it when it sets out, and one that waited through a click on
    Start would otherwise answer with the old value and lose the new start's line."""
    if pending is None or (snap is not None and snap.state in _UNDER_WAY):
        return gr.skip(), gr.skip()
    return settled_status(snap), None


def group_html(services: Services, snap: ServerSnapshot) -> str:
    """A distributed server's ranks, from its group's last samples ("" for one process)."""
    spec = snap.profile.distributed
    group = services.supervisor.groups.group(snap.profile_id) if spec else None
    if spec is None or group is None:
        return ""
    return rank_group_html(spec, group.views(), group.host_samples())


def render_tiles(services: Services, user: User | None) -> str:
    """All tiles from the last snapshot (the monitor samples; this only formats)."""
    now = time.time()
    monitor, metrics, supervisor = services.monitor, services.metrics, services.supervisor
    tiles = [
        server_tile_html(snap, monitor.latest(snap.profile_id), metrics.get(snap.profile_id),
                         monitor.log_tail(snap.profile_id), now, monitor.gpu_label,
                         can_control=allowed(user, Action.SERVER_STOP,
                                             supervisor.owners(snap.profile_id)),
                         group=group_html(services, snap))
        for snap in supervisor.snapshots() if snap.state is not ServerState.STOPPED
    ]
    spares = supervisor.spares
    has_profiles = bool(tiles) or bool(services.profiles.list())
    return (server_tiles_html(tiles, has_profiles)
            + spare_line_html(spares.views(), spares.enabled))


def chart_figure(services: Services) -> Any:
    """Memory and CPU of every server sampled in the last minutes, stopped ones too."""
    now = time.time()
    gap_s = GAP_INTERVALS * services.monitor.idle_interval_s
    names = {p.id: p.name for p in services.profiles.list()}
    return history_figure([series(name, services.monitor.history(profile_id), now, gap_s)
                           for profile_id, name in names.items()], now)


def profile_choices(services: Services) -> list[str]:
    return [p.name for p in services.profiles.list()]


def build(services: Services) -> TabLoader:
    supervisor, monitor, placement = services.supervisor, services.monitor, services.placement
    gr.Markdown("## Servers")
    with gr.Row(equal_height=True):
        profile = gr.Dropdown(label="Profile", choices=[], filterable=True, scale=4,
                              allow_custom_value=True,
                              elem_id="server-profile",
                              info="Type to search your profiles, then press Start.")
        start = gr.Button("Start", variant="primary", scale=1, elem_id="server-start")
        reload = gr.Button("Refresh list", size="sm", scale=0, elem_id="server-refresh")
    status = gr.Markdown(elem_id="server-status")
    tiles = gr.HTML(server_tiles_html([]), elem_id="server-tiles", js_on_load=TILE_JS)
    chart = gr.Plot(label="Memory and CPU over the last minutes", elem_id="server-chart")
    chart_drawn = gr.State(None)  # monotonic time the chart was last drawn
    chart_asked = gr.State(None)  # set by the live redraw when the chart is due
    pending = gr.State(None)  # profile id whose "Starting..." line is shown
    # For API clients (and tests): the same actions as the tile buttons.
    with gr.Row(visible=False):
        api_action = gr.Textbox(elem_id="server-api-action")
        api_target = gr.Textbox(elem_id="server-api-target")
        api_button = gr.Button("Run", elem_id="server-api-run")

    def draw_tiles(user: User, pending_id: int | None, drawn_at: float | None
                   ) -> tuple[str, Any, Any, Any]:
        snap = supervisor.snapshot(pending_id) if pending_id is not None else None
        now = time.monotonic()
        return (render_tiles(services, user), *status_update(pending_id, snap),
                now if chart_due(drawn_at, now) else gr.skip())

    @handler(services, "server chart")
    def draw_chart(_user: User) -> tuple[Any, Any]:
        return chart_figure(services), time.monotonic()

    def run(action: str, target: str, user: User) -> tuple[str, int | None]:
        """One server action (its status line, the profile id while it is under way); a
        refusal reaches the page through the calling handler."""
        profile_id = services.profiles.find(target).id
        if action == "start":
            snap = placement.start(user, profile_id)
            message = f"Starting {snap.profile.name} on port {snap.profile.port}…"
        elif action == "stop":
            snap = placement.stop(user, profile_id)
            message = f"{snap.profile.name} stopped."
        elif action == "restart":
            snap = placement.restart(user, profile_id)
            message = f"Restarting {snap.profile.name}…"
        else:
            raise ValidationError(f"Unknown action {action!r}.")
        monitor.touch()
        return message, (profile_id if action in ("start", "restart") else None)

    @handler(services, "server start")
    def on_start(user: User, name: str | None) -> tuple:
        if not name:
            raise gr.Error("Pick a profile first.")
        message, under_way = run("start", name, user)
        return message, render_tiles(services, user), under_way

    @handler(services, "server tile action")
    def on_tile(user: User, evt: gr.EventData) -> tuple:
        data = getattr(evt, "_data", None) or {}
        message, under_way = run(str(data.get("action", "")), str(data.get("target", "")),
                                 user)
        return message, render_tiles(services, user), under_way

    @handler(services, "server action")
    def on_api(user: User, action: str, target: str) -> tuple:
        message, under_way = run((action or "").strip(), (target or "").strip(), user)
        return message, render_tiles(services, user), under_way

    @handler(services, "servers tab load")
    def load(user: User) -> tuple:
        monitor.touch()
        # The chart from the history buffer at once: a page that opens or reloads has
        # points before the monitor's next sample.
        return (gr.Dropdown(choices=profile_choices(services)), render_tiles(services, user),
                chart_figure(services), time.monotonic())

    @handler(services, "server profile list")
    def refresh_choices(_user: User) -> Any:
        return gr.Dropdown(choices=profile_choices(services))

    outputs = [status, tiles, pending]
    start.click(on_start, profile, outputs, api_name="server_start")
    tiles.click(on_tile, None, outputs, show_progress="hidden")
    api_button.click(on_api, [api_action, api_target], outputs, api_name="server_action")
    reload.click(refresh_choices, None, profile, api_name="server_profiles")
    profile.focus(refresh_choices, None, profile, show_progress="hidden")
    # The chart follows the tiles in its own event (plotly's figure, and the page's
    # drawing of it, must not hold up the tiles' news), and only when it is due.
    chart_asked.change(draw_chart, None, [chart, chart_drawn], show_progress="hidden",
                       trigger_mode="always_last", api_visibility="private")
    watched = frozenset({Topic.SERVERS, Topic.SAMPLES})
    return TabLoader(load, [profile, tiles, chart, chart_drawn], live=(
        LivePart(watched, draw_tiles, [tiles, status, pending, chart_asked],
                 inputs=[pending, chart_drawn]),
    ))

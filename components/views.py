"""Pure functions that turn domain objects into small pieces of HTML for the tabs."""

from __future__ import annotations

import html

from components.group_view import GROUP_CSS
from components.toolcheck_views import guessed_chip, measured_chip
from manager.accounts.auth import User
from manager.chat.toolcheck import CheckRun
from manager.models.capabilities import WEIGHTS_OVERHEAD_PERCENT, Capabilities, Fit, FitLevel
from manager.models.download_types import DownloadView
from manager.models.hub import RemoteDetails, RemoteModel
from manager.models.library import LocalModel
from manager.servers.inference import ServerMetrics
from manager.servers.monitor import ResourceSample
from manager.servers.spare import SpareView
from manager.servers.states import FAILED_STATES
from manager.servers.supervisor import ServerSnapshot, ServerState
from manager.units import format_bytes, format_duration


def header_html(user: User | None, pending: int) -> str:
    """The top bar: product name, the signed-in email, the admin's pending badge, logout."""
    if user is None:
        return "<div class='mm-header'><h1 class='mm-title'>MLX Model Manager</h1></div>"
    badge = ""
    if user.is_admin and pending > 0:
        label = f"{pending} account{'s' if pending != 1 else ''} waiting for approval"
        badge = (
            f"<span class='mm-badge' id='pending-badge' title='{label}' role='status' "
            f"aria-label='{label}'>{pending}</span>"
        )
    role = "admin" if user.is_admin else "user"
    return (
        "<div class='mm-header'>"
        # The page's one level-one heading (screen readers navigate by it).
        "<h1 class='mm-title'>MLX Model Manager</h1>"
        "<span class='mm-spacer'></span>"
        f"{badge}"
        f"<span class='mm-user' id='current-user'>{html.escape(user.email)}"
        f" <small class='mm-role'>{role}</small></span>"
        "<form method='post' action='/logout' class='mm-logout'>"
        "<button type='submit' id='logout-button'>Log out</button></form>"
        "<form method='post' action='/logout' class='mm-logout'>"
        "<input type='hidden' name='everywhere' value='1'>"
        "<button type='submit' id='logout-everywhere-button' title='End every session of "
        "this account, on every device'>Log out everywhere</button></form>"
        "</div>"
    )


def admin_tab_label(pending: int) -> str:
    return f"Admin ({pending})" if pending else "Admin"


DASHBOARD_CSS = """
.mm-header{display:flex;align-items:center;gap:.75rem;padding:.25rem .25rem .5rem}
#mm-header h1.mm-title{font-size:1.15rem;font-weight:700;margin:0;line-height:inherit}.mm-spacer{flex:1}
.mm-badge{background:#dc2626;color:#fff;border-radius:999px;padding:.1rem .55rem;
font-size:.8rem;font-weight:700}
.mm-user{font-size:.9rem}.mm-role{opacity:.7}
.mm-logout{margin:0}.mm-logout button{padding:.3rem .8rem;border-radius:8px;
border:1px solid var(--border-color-primary);background:var(--button-secondary-background-fill);
cursor:pointer}
"""


# --- Models tab ----------------------------------------------------------------------------
# Tiles are plain HTML; their buttons carry data-action / data-target and one delegated
# click listener in the tab turns a click into a Gradio event (see models_tab.TILE_JS).


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _count(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def context_label(tokens: int | None) -> str:
    if tokens is None:
        return "n/a"
    # Configs state either round thousands (128000) or powers of two (131072): both "128K".
    if tokens >= 1000 and tokens % 1000 == 0:
        return f"{tokens // 1000}K"
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else f"{tokens:,}"


def params_label(count: int | None) -> str | None:
    if count is None:
        return None
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{unit}".replace(".0", "")
    return str(count)


FIT_COLORS = {FitLevel.FITS: "green", FitLevel.TIGHT: "amber", FitLevel.TOO_BIG: "red"}


def fit_color(level: FitLevel) -> str:
    """The badge colour of a fit level: green, amber, red, or grey when unknown."""
    return FIT_COLORS.get(level, "grey")


def fit_tooltip(fit: Fit) -> str:
    """One sentence that says what the fit estimate adds up and what it means."""
    budget = format_bytes(fit.budget_bytes) if fit.budget_bytes > 0 else "n/a"
    ctx = f"{fit.context_tokens:,} tokens" if fit.context_tokens is not None else "n/a"
    if fit.weights_bytes is None:
        return f"Model size unknown: cannot tell whether it fits in {budget}."
    weights = format_bytes(fit.weights_bytes)
    if fit.budget_bytes <= 0:
        return f"Weights {weights}; memory budget unknown."
    if fit.kv_bytes is None:
        if fit.level is FitLevel.TOO_BIG:
            return (f"Needs more than {format_bytes(fit.needed_bytes)} (weights {weights}, "
                    f"KV cache unknown): too big for {budget}.")
        return (f"Weights {weights}; KV cache size for {ctx} unknown: cannot tell "
                f"whether it fits in {budget}.")
    verdict = {
        FitLevel.FITS: "fits",
        FitLevel.TIGHT: "tight fit",
        FitLevel.TOO_BIG: "too big",
    }.get(fit.level, "unknown")
    return (f"Needs about {format_bytes(fit.needed_bytes)} (weights {weights} + "
            f"{WEIGHTS_OVERHEAD_PERCENT - 100} % overhead, KV cache "
            f"{format_bytes(fit.kv_bytes)} at {ctx}) of {budget} usable: {verdict}.")


def model_badges_html(caps: Capabilities, fit: Fit | None,
                      measured: CheckRun | None = None) -> str:
    """Architecture, context, media, tools (guessed, and measured when checked), thinking,
    quantization, size, fit, guessed."""
    chips: list[str] = []

    def chip(kind: str, label: str, title: str = "") -> None:
        tip = f" title='{_e(title)}'" if title else ""
        chips.append(f"<span class='mm-chip mm-chip-{kind}'{tip}>{_e(label)}</span>")

    chip("arch", caps.architecture or "arch n/a", "Architecture (model_type)")
    chip("ctx", f"{context_label(caps.context_length)} ctx", "Context length in tokens")
    if caps.multimodal:
        chip("vision", "vision", "Understands images")
    if caps.video:
        chip("video", "video", "Understands video")
    if caps.tool_use:
        chips.append(guessed_chip())
    if measured is not None:
        chips.append(measured_chip(measured))
    if caps.thinking:
        # Like tools: read from the template and vocabulary, so labelled a guess.
        chip("thinking mm-chip-thinking-guessed", "thinking · guessed",
             "Guessed from the chat template and vocabulary (<think> markup), not measured")
    chip("quant", caps.quantization_label, "Quantization or weight dtype")
    params = params_label(caps.parameter_count)
    size_parts = [p for p in (f"{params} params" if params else None,
                              f"{format_bytes(caps.weights_bytes)} weights"
                              if caps.weights_bytes else None) if p]
    chip("size", " · ".join(size_parts) or "size n/a",
         "Parameters · size of the weight files")
    if fit is not None:
        label = {FitLevel.FITS: "fits in memory", FitLevel.TIGHT: "tight fit",
                 FitLevel.TOO_BIG: "too big", FitLevel.UNKNOWN: "fit n/a"}[fit.level]
        chip(f"fit-{fit_color(fit.level)}", label, fit_tooltip(fit))
    if caps.guessed:
        chip("guessed", "guessed", "; ".join(caps.notes) or "Guessed from the name and tags")
    return f"<div class='mm-badges'>{''.join(chips)}</div>"


def _button(action: str, target: object, label: str, *, kind: str = "",
            disabled: bool = False) -> str:
    extra = " disabled" if disabled else ""
    return (f"<button type='button' class='mm-btn {kind}' data-action='{action}' "
            f"data-target='{_e(target)}'{extra}>{_e(label)}</button>")


def remote_tile_html(model: RemoteModel, details: RemoteDetails | None, fit: Fit | None,
                     *, on_machine: bool = False) -> str:
    """A Hugging Face search hit. Never a progress bar (MODELS-03)."""
    updated = model.last_modified.strftime("%Y-%m-%d") if model.last_modified else "n/a"
    size = format_bytes(details.total_bytes) if details is not None else "n/a"
    meta = (f"<span title='Downloads'>⬇ {_count(model.downloads)}</span>"
            f"<span title='Likes'>♥ {_count(model.likes)}</span>"
            f"<span title='Last update'>updated {_e(updated)}</span>"
            f"<span title='Size of the files MLX needs'>{_e(size)} download</span>")
    badges = model_badges_html(details.caps, fit) if details is not None else ""
    problem = (f"<div class='mm-problem'>{_e(details.problem)}</div>"
               if details is not None and details.problem else "")
    if on_machine:
        action = _button("noop", model.repo_id, "On my machine", disabled=True)
    else:
        blocked = details is not None and not details.downloadable
        action = _button("download", model.repo_id, "Download", kind="mm-primary",
                         disabled=blocked)
    return (f"<div class='mm-tile' data-repo='{_e(model.repo_id)}'>"
            f"<div class='mm-tile-head'><strong class='mm-repo'>{_e(model.repo_id)}</strong>"
            f"<span class='mm-meta'>{meta}</span></div>{badges}{problem}"
            f"<div class='mm-actions'>{action}</div></div>")


def local_tile_html(model: LocalModel, fit: Fit | None, *, can_delete: bool,
                    measured: CheckRun | None = None) -> str:
    """A model on this machine, with Delete (confirmed in the tab); `measured` is its
    latest tool-use check."""
    used = model.last_used or "never"
    source = "HF cache" if model.source == "hf_cache" else model.source
    meta = (f"<span title='Size on disk'>{_e(format_bytes(model.size_bytes))} on disk</span>"
            f"<span title='Last used by a server'>last used {_e(used)}</span>"
            f"<span title='{_e(model.path)}'>{_e(source)}</span>")
    problem = ""
    if not model.complete:
        why = "; ".join(model.caps.notes) or "weights are missing"
        problem = f"<div class='mm-problem'>Incomplete, not usable: {_e(why)}</div>"
    action = _button("delete", model.path, "Delete…", kind="mm-danger") if can_delete else ""
    return (f"<div class='mm-tile' data-repo='{_e(model.name)}'>"
            f"<div class='mm-tile-head'><strong class='mm-repo'>{_e(model.name)}</strong>"
            f"<span class='mm-meta'>{meta}</span></div>"
            f"{model_badges_html(model.caps, fit, measured)}{problem}"
            f"<div class='mm-actions'>{action}</div></div>")


def download_tile_html(view: DownloadView, *, can_control: bool) -> str:
    """A download at the top of the list: bar, bytes, speed, ETA, Pause/Resume/Cancel."""
    fraction = view.fraction
    percent = f"{fraction * 100:.0f} %" if fraction is not None else "n/a"
    width = f"{fraction * 100:.1f}" if fraction is not None else "0"
    speed = f"{format_bytes(int(view.speed_bps))}/s" if view.speed_bps is not None else "n/a"
    figures = (f"<span class='mm-dl-bytes'>{_e(format_bytes(view.bytes_done))} / "
               f"{_e(format_bytes(view.bytes_total))}</span>"
               f"<span class='mm-dl-percent'>{percent}</span>"
               f"<span class='mm-dl-speed'>{_e(speed)}</span>"
               f"<span class='mm-dl-eta'>ETA {_e(format_duration(view.eta_seconds))}</span>")
    buttons = ""
    if can_control:
        if view.status.active:
            buttons += _button("pause", view.id, "Pause")
        if view.status.resumable:
            buttons += _button("resume", view.id, "Resume", kind="mm-primary")
        buttons += _button("cancel", view.id, "Cancel", kind="mm-danger")
    error = f"<div class='mm-problem'>{_e(view.error)}</div>" if view.error else ""
    return (f"<div class='mm-tile mm-download' data-repo='{_e(view.repo_id)}' "
            f"data-download='{view.id}' data-status='{view.status.value}'>"
            f"<div class='mm-tile-head'><strong class='mm-repo'>{_e(view.repo_id)}</strong>"
            f"<span class='mm-status mm-status-{view.status.value}'>{view.status.value}</span>"
            "</div>"
            f"<div class='mm-progress' role='progressbar' aria-valuenow='{width}' "
            f"aria-valuemin='0' aria-valuemax='100'><div class='mm-progress-bar' "
            f"style='width:{width}%'></div></div>"
            f"<div class='mm-meta mm-dl-figures'>{figures}</div>{error}"
            f"<div class='mm-actions'>{buttons}</div></div>")


def tile_list_html(tiles: list[str], empty: str) -> str:
    if not tiles:
        return f"<div class='mm-tiles mm-empty'>{_e(empty)}</div>"
    return f"<div class='mm-tiles'>{''.join(tiles)}</div>"


MODELS_CSS = """
#models-filterbar{position:sticky;top:0;z-index:20;background:var(--background-fill-primary);
padding:.4rem 0;border-bottom:1px solid var(--border-color-primary)}
#models-list{max-height:calc(100vh - 260px);overflow-y:auto}
.mm-tiles{display:flex;flex-direction:column;gap:.5rem}
.mm-empty{opacity:.7;padding:1rem}
.mm-tile{border:1px solid var(--border-color-primary);border-radius:10px;padding:.6rem .8rem;
background:var(--block-background-fill)}
.mm-tile-head{display:flex;flex-wrap:wrap;align-items:baseline;gap:.75rem}
.mm-repo{font-size:1rem}.mm-meta{display:flex;flex-wrap:wrap;gap:.75rem;font-size:.85rem;opacity:.8}
.mm-badges{display:flex;flex-wrap:wrap;gap:.3rem;margin:.4rem 0}
.mm-chip{font-size:.75rem;padding:.1rem .5rem;border-radius:999px;
border:1px solid var(--border-color-primary);background:var(--background-fill-secondary)}
.mm-chip-fit-green{background:#dcfce7;color:#166534;border-color:#86efac}
.mm-chip-fit-amber{background:#fef3c7;color:#92400e;border-color:#fcd34d}
.mm-chip-fit-red{background:#fee2e2;color:#991b1b;border-color:#fca5a5}
.mm-chip-guessed,.mm-chip-tools-guessed,.mm-chip-thinking-guessed{border-style:dashed;font-style:italic}
.mm-chip-measured{font-weight:600}
#toolcheck-transcript pre{white-space:pre-wrap;margin:.2rem 0}
.mm-problem{color:#b91c1c;font-size:.85rem;margin:.25rem 0}
.mm-actions{display:flex;gap:.4rem;justify-content:flex-end}
.mm-btn{padding:.25rem .8rem;border-radius:8px;border:1px solid var(--border-color-primary);
background:var(--button-secondary-background-fill);cursor:pointer}
.mm-btn[disabled]{opacity:.55;cursor:default}
.mm-primary{background:var(--button-primary-background-fill);color:var(--button-primary-text-color)}
.mm-danger{color:#b91c1c}
.mm-download{border-color:var(--color-accent)}
.mm-progress{height:8px;border-radius:4px;background:var(--background-fill-secondary);
overflow:hidden;margin:.4rem 0}
.mm-progress-bar{height:100%;background:var(--color-accent);transition:width .4s}
.mm-status{font-size:.8rem;text-transform:uppercase;opacity:.8}
.mm-status-failed{color:#b91c1c;opacity:1}
"""

DASHBOARD_CSS = DASHBOARD_CSS + MODELS_CSS


# --- Servers tab ---------------------------------------------------------------------------
# Tiles keep one fixed skeleton whatever the state, so Gradio's HTML diff updates text
# in place: the log box (a <pre>) keeps its scroll position and the "Logs" checkbox
# (a property, not an attribute) stays open across ticks (SERVER-03).


def _level_color(fraction: float | None) -> str:
    if fraction is None:
        return "#9ca3af"
    if fraction < 0.6:
        return "#16a34a"
    if fraction < 0.85:
        return "#d97706"
    return "#dc2626"


def gauge_html(label: str, fraction: float | None, value: str, detail: str = "") -> str:
    """A CSS conic-gradient dial; fraction None draws an empty grey dial with "n/a"."""
    shown = 0.0 if fraction is None else max(0.0, min(1.0, fraction))
    na = " mm-gauge-na" if fraction is None else ""
    title = f"{label}: {value}" + (f" ({detail})" if detail else "")
    return (f"<div class='mm-gauge{na}' title='{_e(title)}'>"
            f"<div class='mm-gauge-dial' style='--p:{shown * 100:.1f}%;"
            f"--c:{_level_color(fraction)}'><span>{_e(value)}</span></div>"
            f"<div class='mm-gauge-label'>{_e(label)}</div>"
            f"<div class='mm-gauge-detail'>{_e(detail)}</div></div>")


def server_tile_html(snap: ServerSnapshot, sample: ResourceSample | None,
                     metrics: ServerMetrics | None, log_tail: str, now: float,
                     gpu_label: str = "GPU", *, can_control: bool = True,
                     group: str = "") -> str:
    """One server: state, gauges (memory, CPU, GPU), speed, actions, and its log tail.
    Stop, Restart and Dismiss show only when `can_control` (the domain's `allowed`);
    `group` is a distributed server's ranks (components/group_view.py)."""
    pid = snap.profile_id
    state = snap.state
    label = state.label
    if state is ServerState.STARTING:
        label = f"Starting… {format_duration(now - snap.state_since)}"
    elif state is ServerState.STOPPING:
        label = "Stopping…"
    elif state is ServerState.BACKOFF and snap.restart_at is not None:
        label = f"Restarting in {format_duration(snap.restart_at - now)}"
    if snap.adopted and state is ServerState.READY:
        label += " (adopted)"
    live = state in (ServerState.STARTING, ServerState.READY, ServerState.STOPPING)
    sample = sample if live else None
    memory_fraction = sample.memory_fraction if sample else None
    memory = gauge_html("Memory", memory_fraction, format_bytes(sample.memory_bytes if sample else None),
                        f"of {format_bytes(sample.memory_total_bytes)}" if sample else "")
    cpu = sample.cpu_machine_percent if sample else None
    cpu_gauge = gauge_html(
        "CPU", None if cpu is None else cpu / 100, "n/a" if cpu is None else f"{cpu:.0f}%",
        f"{sample.cpu_percent / 100:.1f} cores" if sample and sample.cpu_percent is not None
        else "")
    gpu = sample.gpu_percent if sample else None
    gpu_gauge = gauge_html(gpu_label, None if gpu is None else gpu / 100,
                           "n/a" if gpu is None else f"{gpu:.0f}%",
                           format_bytes(sample.gpu_memory_bytes) if sample and sample.gpu_memory_bytes
                           else "")
    uptime = snap.uptime_s(now)
    rate = metrics.last_tokens_per_s if metrics else None
    stats = [
        ("Uptime", format_duration(uptime) if uptime is not None else "n/a"),
        ("Address", f"{snap.profile.host}:{snap.profile.port}"),
        ("PID", str(snap.pid) if snap.pid else "n/a"),
        ("Backend", snap.profile.backend.value),
        ("Last tokens/s", f"{rate:.1f}" if rate is not None else "n/a"),
        ("Tokens served", f"{metrics.completion_tokens:,}" if metrics else "0"),
        ("Requests", f"{metrics.requests:,}" if metrics else "0"),
    ]
    stats_html = "".join(f"<div><dt>{_e(k)}</dt><dd data-stat='{_e(k)}'>{_e(v)}</dd></div>"
                         for k, v in stats)
    problem = ""
    if state in FAILED_STATES:
        tail = snap.failure_tail or log_tail
        problem = (f"<div class='mm-srv-reason'>{_e(snap.reason)}</div>"
                   + (f"<pre class='mm-srv-tail'>{_e(tail)}</pre>" if tail else ""))
    elif snap.reason and state is ServerState.STOPPED:
        problem = f"<div class='mm-srv-note'>{_e(snap.reason)}</div>"
    if state is ServerState.STOPPED:
        actions = _button("start", pid, "Start", kind="mm-primary")
    elif not can_control:
        actions = ""
    elif state in (ServerState.STARTING, ServerState.READY):
        actions = (_button("stop", pid, "Stop", kind="mm-danger")
                   + _button("restart", pid, "Restart"))
    elif state is ServerState.STOPPING:
        actions = _button("stop", pid, "Stop", disabled=True) + _button("restart", pid,
                                                                         "Restart", disabled=True)
    else:  # BACKOFF, FAILED
        actions = (_button("restart", pid, "Restart", kind="mm-primary")
                   + _button("stop", pid, "Dismiss"))
    logs = snap.failure_tail if state in FAILED_STATES and not log_tail else log_tail
    model_name = snap.profile.model.rstrip("/").rsplit("/", 2)
    model_label = "/".join(model_name[-2:]) if not snap.profile.model.startswith(("/", "~", ".")) \
        else model_name[-1]
    return (
        f"<div class='mm-srv mm-srv-{state.value}' id='srv-{pid}' data-profile='{pid}'>"
        f"<div class='mm-srv-head'><strong class='mm-srv-name'>{_e(snap.profile.name)}</strong>"
        f"<span class='mm-srv-model' title='{_e(snap.profile.model)}'>{_e(model_label)}</span>"
        f"<span class='mm-srv-state mm-state-{state.value}' data-state='{state.value}'>"
        f"{_e(label)}</span></div>"
        f"<div class='mm-srv-body'><div class='mm-gauges'>{memory}{cpu_gauge}{gpu_gauge}</div>"
        f"<dl class='mm-srv-stats'>{stats_html}</dl>{group}</div>"
        f"<div class='mm-srv-problem'>{problem}</div>"
        f"<div class='mm-actions'>{actions}</div>"
        f"<div class='mm-srv-logs'><input type='checkbox' class='mm-logs-toggle' "
        f"id='srv-logs-toggle-{pid}'><label for='srv-logs-toggle-{pid}'>Logs</label>"
        f"<pre class='mm-log' id='srv-log-{pid}'>{_e(logs) or 'No output yet.'}</pre></div>"
        "</div>")


def server_tiles_html(tiles: list[str], has_profiles: bool = True) -> str:
    if not tiles and not has_profiles:
        return ("<div class='mm-srv-list mm-empty'>No profiles yet, so nothing to start. "
                "Make one on the Profiles tab (it says which model to serve), or press "
                "“Try a tool-use model” above.</div>")
    if not tiles:
        return ("<div class='mm-srv-list mm-empty'>No servers running. Pick a profile above "
                "and press Start.</div>")
    return f"<div class='mm-srv-list'>{''.join(tiles)}</div>"


def spare_line_html(spares: list[SpareView], enabled: bool) -> str:
    """One line under the tiles: the warm spare interpreters and their memory."""
    if not enabled:
        return ("<div class='mm-spare' id='mm-spare'>Warm spare interpreter: off "
                "(an admin can turn it on in the Admin tab).</div>")
    if not spares:
        return ("<div class='mm-spare' id='mm-spare'>Warm spare interpreter: none yet "
                "(one starts for each backend in use).</div>")
    parts = []
    for spare in spares:
        name = html.escape(spare.backend.value)
        if spare.problem:
            parts.append(f"{name}: not available ({html.escape(spare.problem)})")
            continue
        memory = "n/a" if spare.memory_bytes is None else format_bytes(spare.memory_bytes)
        state = "ready" if spare.warm else "importing"
        parts.append(f"{name} {state} (pid {spare.pid}, memory {memory})")
    return ("<div class='mm-spare' id='mm-spare'>Warm spare interpreter: "
            f"{'; '.join(parts)}</div>")


SERVERS_CSS = """
.mm-spare{font-size:.8rem;opacity:.75;margin-top:.5rem}
.mm-srv-list{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:.75rem}
.mm-srv{border:1px solid var(--border-color-primary);border-radius:12px;padding:.7rem .9rem;
background:var(--block-background-fill);display:flex;flex-direction:column;gap:.5rem}
.mm-srv-failed{border-color:#fca5a5}.mm-srv-ready{border-color:#86efac}
.mm-srv-head{display:flex;flex-wrap:wrap;align-items:baseline;gap:.6rem}
.mm-srv-model{font-size:.85rem;opacity:.75}
.mm-srv-state{margin-left:auto;font-size:.8rem;font-weight:600;padding:.1rem .55rem;
border-radius:999px;background:var(--background-fill-secondary)}
.mm-state-ready{background:#dcfce7;color:#166534}.mm-state-starting,.mm-state-stopping{
background:#fef3c7;color:#92400e}.mm-state-failed{background:#fee2e2;color:#991b1b}
.mm-srv-body{display:flex;flex-wrap:wrap;gap:.8rem;align-items:center}
.mm-gauges{display:flex;gap:.6rem}
.mm-gauge{display:flex;flex-direction:column;align-items:center;width:76px;font-size:.72rem}
.mm-gauge-dial{width:62px;height:62px;border-radius:50%;display:grid;place-items:center;
background:conic-gradient(var(--c) var(--p),var(--background-fill-secondary) 0)}
.mm-gauge-dial span{width:46px;height:46px;border-radius:50%;display:grid;place-items:center;
background:var(--block-background-fill);font-weight:600;font-size:.72rem}
.mm-gauge-na .mm-gauge-dial span{opacity:.6}
.mm-gauge-label{font-weight:600;margin-top:.15rem}.mm-gauge-detail{opacity:.7}
.mm-srv-stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));
gap:.1rem .8rem;margin:0;font-size:.8rem;flex:1 1 200px;min-width:200px}
.mm-srv-stats div{display:flex;justify-content:space-between;gap:.4rem;min-width:0}
.mm-srv-stats dt{opacity:.7;white-space:nowrap}
.mm-srv-stats dd{margin:0;font-variant-numeric:tabular-nums;white-space:nowrap;overflow:hidden;
text-overflow:ellipsis}
.mm-srv-reason{color:#b91c1c;font-size:.85rem}.mm-srv-note{font-size:.8rem;opacity:.75}
.mm-srv-tail,.mm-log{font-size:.72rem;max-height:180px;overflow:auto;white-space:pre-wrap;
background:var(--background-fill-secondary);border-radius:6px;padding:.4rem;margin:.3rem 0 0}
.mm-srv-logs label{cursor:pointer;font-size:.8rem;text-decoration:underline}
.mm-logs-toggle{margin-right:.3rem}
.mm-srv-logs .mm-log{display:none}
.mm-logs-toggle:checked ~ .mm-log{display:block}
#server-chart{min-height:320px}
"""

DASHBOARD_CSS = DASHBOARD_CSS + SERVERS_CSS + GROUP_CSS

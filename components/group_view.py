"""The Servers tile's view of a distributed server: link backend, and per rank its host,
state, memory and CPU (pure HTML from the group's last samples; nothing is measured here)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from manager.servers.distributed.group import RankView
from manager.servers.distributed.sampling import HostSample
from manager.servers.distributed.spec import DistributedSpec
from manager.units import format_bytes

GROUP_CSS = """
.mm-group{font-size:.78rem;width:100%}
.mm-group table{width:100%;border-collapse:collapse}
.mm-group th{text-align:left;opacity:.7;font-weight:500}
.mm-group td,.mm-group th{padding:.1rem .4rem .1rem 0;white-space:nowrap}
.mm-group td{font-variant-numeric:tabular-nums}
.mm-rank-running{color:#166534}.mm-rank-exited{color:#b91c1c}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _host_figures(sample: HostSample | None) -> tuple[str, str]:
    if sample is None:
        return "n/a", "n/a"
    if sample.error:
        return "n/a", "n/a"
    used, total = sample.memory_used, sample.memory_total
    memory = (f"{format_bytes(used)} of {format_bytes(total)}"
              if used is not None and total is not None else "n/a")
    cpu = "n/a" if sample.cpu_percent is None else f"{sample.cpu_percent:.0f}%"
    return memory, cpu


def rank_group_html(spec: DistributedSpec, views: Sequence[RankView],
                    samples: Sequence[HostSample | None]) -> str:
    """A table with one row per rank: host, where it meets the others, its state, the
    rank's own memory and CPU (ranks on this machine), and its host's memory and CPU."""
    rows = []
    for view in views:
        sample = samples[view.rank] if view.rank < len(samples) else None
        host_memory, host_cpu = _host_figures(sample)
        rank_memory = format_bytes(view.memory_bytes) if view.memory_bytes else "n/a"
        rank_cpu = "n/a" if view.cpu_percent is None else f"{view.cpu_percent:.0f}%"
        state_class = "mm-rank-" + view.state.split(" ", 1)[0]
        title = f" title='{_e(sample.error)}'" if sample is not None and sample.error else ""
        rows.append(
            f"<tr data-rank='{view.rank}'><td>{view.rank}</td><td>{_e(view.host)}</td>"
            f"<td>{_e(view.endpoint)}</td><td class='{state_class}' data-rank-state="
            f"'{_e(view.state)}'>{_e(view.state)}</td><td>{_e(rank_memory)}</td>"
            f"<td>{_e(rank_cpu)}</td><td{title}>{_e(host_memory)}</td>"
            f"<td{title}>{_e(host_cpu)}</td></tr>")
    head = ("<tr><th>Rank</th><th>Host</th><th>Link</th><th>State</th><th>Rank memory</th>"
            "<th>Rank CPU</th><th>Host memory</th><th>Host CPU</th></tr>")
    caption = (f"{spec.size} ranks · {_e(spec.backend.value)} link · "
               f"{_e(spec.parallel.value)} parallel")
    return (f"<div class='mm-group' data-backend='{_e(spec.backend.value)}'>"
            f"<div class='mm-group-caption'>{caption}</div>"
            f"<table>{head}{''.join(rows)}</table></div>")

"""The Servers tab's memory and CPU chart (issue 15 item 9).

Drawn from the monitor's history buffer (the last `HISTORY_S` of samples, kept while
nobody watches too), so a page that opens or reloads shows it at once. The x axis is
real time: a pause between two samples longer than `gap_s` (a stop, the dashboard
down) is drawn as a break in the line, never closed up. The legend sits above the plots,
the time labels below them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from manager.servers.monitor import HISTORY_S, ResourceSample

#: A gap between samples longer than this many of the monitor's slowest intervals is a
#: pause (the server stopped, or nothing sampled it), drawn as a break.
GAP_INTERVALS = 2.5


@dataclass(frozen=True)
class Series:
    """One server's points: times (local, naive: plotly draws them as given) and
    values, with a `None` value wherever a pause breaks the line."""

    name: str
    times: list[datetime]
    memory_gb: list[float | None]
    cpu_percent: list[float | None]

    @property
    def points(self) -> int:
        return sum(1 for v in self.memory_gb if v is not None)


def series(name: str, history: Sequence[ResourceSample], now: float, gap_s: float,
           span_s: float = HISTORY_S) -> Series:
    """The samples of the last `span_s` with a break in every pause longer than `gap_s`."""
    times: list[datetime] = []
    memory: list[float | None] = []
    cpu: list[float | None] = []
    previous: float | None = None
    for sample in history:
        if now - sample.at > span_s:
            continue
        if previous is not None and sample.at - previous > gap_s:
            # A point without a value between the two: plotly ends the line there.
            times.append(datetime.fromtimestamp((previous + sample.at) / 2))
            memory.append(None)
            cpu.append(None)
        times.append(datetime.fromtimestamp(sample.at))
        memory.append(None if sample.memory_bytes is None else sample.memory_bytes / 1024**3)
        cpu.append(sample.cpu_machine_percent)
        previous = sample.at
    return Series(name, times, memory, cpu)


def history_figure(all_series: Sequence[Series], now: float) -> Any:
    """Memory (GB) and CPU (% of the machine) side by side on a shared time span."""
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.1)
    shown = [s for s in all_series if s.points]
    for s in shown:
        line = {"mode": "lines+markers", "marker": {"size": 4}, "connectgaps": False,
                "legendgroup": s.name}
        figure.add_scatter(x=s.times, y=s.memory_gb, name=f"{s.name} memory", row=1, col=1,
                           **line)
        figure.add_scatter(x=s.times, y=s.cpu_percent, name=f"{s.name} CPU", row=1, col=2,
                           **line)
    start = min((t for s in shown for t in s.times), default=datetime.fromtimestamp(
        now - 60))
    span = [start, datetime.fromtimestamp(now)]
    figure.update_xaxes(type="date", range=span, tickformat="%H:%M:%S", nticks=6)
    figure.update_yaxes(rangemode="tozero")
    figure.update_yaxes(title_text="Memory (GB)", row=1, col=1)
    figure.update_yaxes(title_text="CPU (% of machine)", row=1, col=2)
    figure.update_layout(
        height=320, margin={"l": 60, "r": 10, "t": 50, "b": 40},
        # Above the plots, so the time labels below them never run into it.
        legend={"orientation": "h", "x": 0, "y": 1.02, "xanchor": "left",
                "yanchor": "bottom"},
        uirevision="servers",  # a redraw keeps the person's zoom
    )
    if not shown:
        figure.add_annotation(text="No server has run in the last minutes", showarrow=False,
                              xref="paper", yref="paper", x=0.5, y=0.5)
    return figure

"""The Servers tab's chart: real time, pauses drawn as breaks, legend clear of the labels."""

from __future__ import annotations

from datetime import datetime

from components.server_chart import history_figure, series
from manager.servers.monitor import ResourceSample

NOW = 1_800_000_000.0
GB = 1024**3


def sample(at: float, gb: float = 1.0, cpu: float | None = 50.0) -> ResourceSample:
    return ResourceSample(at=at, memory_bytes=int(gb * GB), memory_total_bytes=16 * GB,
                          cpu_percent=cpu, cpu_count=2)


def test_a_pause_between_samples_is_a_break_at_its_real_time() -> None:
    # Sampled every 2 s, stopped for 100 s, sampled again.
    history = [sample(NOW - 200 + 2 * i) for i in range(3)] + \
        [sample(NOW - 96 + 2 * i, gb=2.0) for i in range(3)]
    s = series("tiny", history, NOW, gap_s=12.5)
    assert s.points == 6
    assert s.memory_gb == [1.0, 1.0, 1.0, None, 2.0, 2.0, 2.0]
    assert s.cpu_percent[3] is None and s.cpu_percent[0] == 25.0  # % of the whole machine
    # Times are the samples' own: the break lies inside the pause.
    assert s.times[0] == datetime.fromtimestamp(NOW - 200)
    assert s.times[2] < s.times[3] < s.times[4] == datetime.fromtimestamp(NOW - 96)


def test_samples_older_than_the_span_are_left_out() -> None:
    history = [sample(NOW - 900), sample(NOW - 30), sample(NOW - 28)]
    s = series("tiny", history, NOW, gap_s=12.5, span_s=600)
    assert s.memory_gb == [1.0, 1.0]


def test_the_figure_has_a_time_axis_the_points_and_the_legend_above() -> None:
    history = [sample(NOW - 10 + 2 * i) for i in range(5)]
    figure = history_figure([series("tiny", history, NOW, 12.5), series("idle", [], NOW, 12.5)],
                            NOW)
    assert [t.name for t in figure.data] == ["tiny memory", "tiny CPU"]
    assert all("markers" in t.mode for t in figure.data)  # a lone point is seen too
    assert figure.layout.xaxis.type == "date" and figure.layout.xaxis2.type == "date"
    assert list(figure.layout.xaxis.range) == [datetime.fromtimestamp(NOW - 10),
                                               datetime.fromtimestamp(NOW)]
    # The legend sits above the plots; the time labels are below them.
    assert figure.layout.legend.yanchor == "bottom" and figure.layout.legend.y >= 1


def test_an_empty_history_says_so() -> None:
    figure = history_figure([series("idle", [], NOW, 12.5)], NOW)
    assert not figure.data
    assert "No server" in figure.layout.annotations[0].text

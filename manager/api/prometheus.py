"""The gateway's /metrics page: per-profile request figures in Prometheus text format.

A pure function of snapshots (MetricsStore, supervisor, placement counters), so the
exposition format is tested without a server. Unknown figures (no request yet) are
left out rather than written as 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from manager.servers.inference import TTFT_BUCKETS_S, ServerMetrics
from manager.servers.placement import PlacementStats
from manager.servers.profiles import Profile
from manager.servers.supervisor import ServerSnapshot, ServerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "mlx_manager_"


@dataclass(frozen=True)
class _Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _header(family: _Family) -> Iterator[str]:
    yield f"# HELP {_PREFIX}{family.name} {family.help}"
    yield f"# TYPE {_PREFIX}{family.name} {family.kind}"


_COUNTERS = (
    (_Family("requests_total", "counter", "Requests sent to the profile's server."),
     lambda m: m.requests),
    (_Family("failed_requests_total", "counter", "Requests that did not complete."),
     lambda m: m.failed_requests),
    (_Family("prompt_tokens_total", "counter", "Prompt tokens the server reported."),
     lambda m: m.prompt_tokens),
    (_Family("completion_tokens_total", "counter", "Completion tokens the server reported."),
     lambda m: m.completion_tokens),
    (_Family("decode_tokens_total", "counter",
             "Tokens after the first in streamed requests (numerator of tokens/s)."),
     lambda m: m.decode_tokens),
    (_Family("decode_seconds_total", "counter",
             "Seconds those tokens took (denominator of tokens/s)."),
     lambda m: m.decode_seconds),
)
_LAST = (
    (_Family("last_tokens_per_second", "gauge", "Decode speed of the last measured request."),
     lambda m: m.last_tokens_per_s),
    (_Family("last_time_to_first_token_seconds", "gauge",
             "Time to first token of the last streamed request."),
     lambda m: m.last_ttft_s),
)
_TTFT = _Family("time_to_first_token_seconds", "histogram",
                "Time to first token of streamed requests.")
_UP = _Family("server_up", "gauge", "1 when the profile's server is ready, else 0.")
_STARTS = _Family("gateway_starts_total", "counter",
                  "Servers the gateway started on demand for a request.")
_EVICTIONS = _Family("gateway_evictions_total", "counter",
                     "Idle servers the gateway stopped to make room for another model.")


def render(profiles: Sequence[Profile], snapshots: Mapping[int, ServerSnapshot],
           metrics: Mapping[int, ServerMetrics],
           placement: Mapping[int, PlacementStats]) -> str:
    """The exposition text for every profile (label `profile` = its name)."""
    labels = {p.id: f'profile="{escape_label(p.name)}"' for p in profiles}
    lines: list[str] = []
    lines += _header(_UP)
    for profile in profiles:
        snap = snapshots.get(profile.id)
        up = 1 if snap is not None and snap.state is ServerState.READY else 0
        lines.append(f"{_PREFIX}{_UP.name}{{{labels[profile.id]}}} {up}")
    for family, read in _COUNTERS:
        lines += _header(family)
        for profile in profiles:
            value = read(metrics.get(profile.id) or ServerMetrics())
            lines.append(f"{_PREFIX}{family.name}{{{labels[profile.id]}}} {_number(value)}")
    for family, read in _LAST:
        lines += _header(family)
        for profile in profiles:
            value = read(metrics[profile.id]) if profile.id in metrics else None
            if value is not None:
                lines.append(f"{_PREFIX}{family.name}{{{labels[profile.id]}}} {_number(value)}")
    lines += _header(_TTFT)
    for profile in profiles:
        m = metrics.get(profile.id) or ServerMetrics()
        name, label = _PREFIX + _TTFT.name, labels[profile.id]
        for bound, count in zip(TTFT_BUCKETS_S, m.ttft_buckets, strict=True):
            lines.append(f'{name}_bucket{{{label},le="{bound:g}"}} {count}')
        lines.append(f'{name}_bucket{{{label},le="+Inf"}} {m.ttft_count}')
        lines.append(f"{name}_sum{{{label}}} {_number(m.ttft_sum_s)}")
        lines.append(f"{name}_count{{{label}}} {m.ttft_count}")
    for family, attribute in ((_STARTS, "starts"), (_EVICTIONS, "evictions")):
        lines += _header(family)
        for profile in profiles:
            value = getattr(placement.get(profile.id) or PlacementStats(), attribute)
            lines.append(f"{_PREFIX}{family.name}{{{labels[profile.id]}}} {value}")
    return "\n".join(lines) + "\n"

"""What one streamed request measured: token counts, time to first token and tokens/s,
and where the rate came from.

The rate is measured here when it can be (tokens after the first, over the time they
took to arrive). When it cannot, because no chunk carried text (mlx_vlm sends no chunk
for a token that decodes to nothing, e.g. a special token), the server's own figure is
used (mlx_vlm's `timings.predicted_per_second`), and when the server reports no token
count, chunks are counted instead; `RateBasis` says which, so the page can say so.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass


class RateBasis(str, enum.Enum):
    MEASURED = "measured"  # tokens (the server's count) over the time they took here
    SERVER = "server"  # the server's own figure (mlx_vlm `timings`)
    CHUNKS = "chunks"  # no token count from the server: text chunks counted here


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @classmethod
    def parse(cls, value: object) -> Usage | None:
        if not isinstance(value, Mapping):
            return None
        return cls(_int_or_none(value.get("prompt_tokens")),
                   _int_or_none(value.get("completion_tokens")))


@dataclass(frozen=True)
class RequestStats:
    """What one request measured. None = not measurable (shown "n/a")."""

    profile_id: int
    finished_at: float  # wall clock
    duration_s: float
    ttft_s: float | None
    tokens_per_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    ok: bool = True
    rate_basis: RateBasis = RateBasis.MEASURED


def decode_rate(completion_tokens: int | None, first_at: float | None, last_at: float | None
                ) -> float | None:
    """Tokens per second after the first token (prefill excluded)."""
    if completion_tokens is None or completion_tokens < 2 or first_at is None \
            or last_at is None or last_at <= first_at:
        return None
    return (completion_tokens - 1) / (last_at - first_at)


def server_rate(payload: Mapping[str, object]) -> float | None:
    """The decode rate a server reported with its usage (mlx_vlm's `timings`)."""
    timings = payload.get("timings")
    if not isinstance(timings, Mapping):
        return None
    rate = timings.get("predicted_per_second")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
        return float(rate)
    return None


class StreamMeter:
    """Watches one stream's chunks (one thread) and gives its `RequestStats`."""

    def __init__(self, profile_id: int) -> None:
        self._profile_id = profile_id
        self._started = time.perf_counter()
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._chunks = 0  # chunks that carried output
        self.usage: Usage | None = None
        self._server_rate: float | None = None

    def saw(self, has_output: bool, usage: Usage | None, payload: Mapping[str, object]
            ) -> None:
        if has_output:
            self._last_at = time.perf_counter()
            self._first_at = self._first_at or self._last_at
            self._chunks += 1
        if usage is not None:
            self.usage = usage
            self._server_rate = server_rate(payload) or self._server_rate

    def stats(self, ok: bool) -> RequestStats:
        usage = self.usage
        completion = usage.completion_tokens if usage else None
        basis = RateBasis.MEASURED
        rate = decode_rate(completion, self._first_at, self._last_at)
        if rate is None and self._server_rate is not None:
            rate, basis = self._server_rate, RateBasis.SERVER
        elif rate is None and completion is None:
            counted = decode_rate(self._chunks, self._first_at, self._last_at)
            if counted is not None:
                rate, basis = counted, RateBasis.CHUNKS
        first = self._first_at
        return RequestStats(
            profile_id=self._profile_id, finished_at=time.time(),
            duration_s=time.perf_counter() - self._started,
            ttft_s=(first - self._started) if first is not None else None,
            tokens_per_s=rate, prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=completion, ok=ok, rate_basis=basis)

"""The gateway's overhead: streams through the dashboard vs straight to the same mlx_lm server.

A real dashboard (`app.py serve`, its own process) fronts a tiny model (~1000 tok/s on
this CPU, so per-chunk costs show). Each round runs both paths back to back (the order
alternates; --pause puts a pause before each), with 1 and 8 concurrent streams, all asking
for the same completion (usage included on both sides); statistics are over the pairs, so
load from elsewhere on the machine hits both sides. Every streaming route of the gateway
is measured against the same direct baseline (the server's own /v1/chat/completions
stream): OpenAI chat completions, Anthropic /v1/messages, and, where this build has
them, /v1/responses and Ollama's /api/chat and /api/generate (a route that answers 404
is reported as skipped).

Reports, per route and concurrency:
- added time to first token, p50 and p95 (gateway minus direct; goal p50 <= 1 ms);
- the client's TTFT outside the server's answer: client TTFT minus the TTFT the gateway
  measured from its own request to the server (/metrics), which mlx_lm's batch admission
  (a request arriving while a batch runs waits for it) does not blur. Not the goal's
  figure: besides the gateway's work it counts the client's own sending and reading of
  the first chunk, which the direct stream pays too (and the direct stream does not pay
  the gateway's request to the server, which is leaner), and with concurrent streams
  the wait behind the others in the gateway's loop, where the direct ones wait in the
  server's handler threads instead;
- with concurrent streams, how many rounds mlx_lm did not admit in one batch on each
  side, and added TTFT and tokens/s ratio over the pairs it did on both: a request that
  misses the first batch waits for its whole decode burst, which decides a round's
  figures by hundreds of ms whoever sent the requests;
- decode tokens/s ratio gateway/direct (tokens after the first over the time between
  first and last token; goal >= 0.97), and the dashboard's CPU per streamed token
  (goal <= 60 us), also net of what the idle dashboard uses in the same time.
Then requests/s of GET /v1/models with 32 concurrent clients, against the mlx_lm
server's own /v1/models and the dashboard's public /login page as baselines.

Run: .venv/bin/python -m bench.gateway [--rounds 30] [--tokens 200] [--streams 1,8]
     [--routes chat,messages,responses,ollama] [--pause 0.05] [--baseline CHECKOUT]

With --baseline (e.g. a `git worktree` of the code before a change) a second dashboard
runs that code with its own model server; the two take turns every few rounds, so both
are measured under the same load and their figures can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import psutil

from bench._gateway_dashboards import (
    Dashboard,
    prepare,  # noqa: F401 - run as bench.gateway.prepare in the measured checkout
    start_dashboard,
    stop_dashboard,
)
from bench._gateway_streams import ROUTES, Route, Side, Stream, run_round
from manager.net import free_port

ROOT = Path(__file__).resolve().parent.parent
TTFT_GOAL_MS = 1.0
RATE_GOAL = 0.97
CPU_GOAL_US = 60.0


def median_interval(values: list[float], z: float = 1.645) -> tuple[float, float]:
    """A 90 % confidence interval for the median (z = 1.645), from order statistics: the
    number of values below the true median is binomial(n, 1/2), so ranks n/2 -+ z*sqrt(n)/2
    bound it whatever the distribution. Tells a p50 above a goal from noise around it."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half))
    high = min(n - 1, math.ceil(n / 2 + half) - 1)
    return ordered[low], ordered[high]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def process_cpu_s(proc: psutil.Process) -> float:
    """The process's CPU time so far (all its threads, ended ones too). On Linux the
    scheduler's own count in nanoseconds, read through the process's CPU-time clock;
    psutil's user + system times come in 10 ms clock ticks, about one paired round's
    whole CPU at 1 stream, which made the per-token figure swing between runs."""
    if sys.platform == "linux":
        # The kernel's clock id for "this pid's CPU time" (CPUCLOCK_SCHED), there since
        # Linux 2.6.12; an OSError means the process is gone, an error here as in psutil
        # (and falling back would mix two clocks in one run).
        return time.clock_gettime_ns(((~proc.pid) << 3) | 2) / 1e9
    times = proc.cpu_times()
    return times.user + times.system


@dataclass
class Tally:
    """One gateway's figures against the direct stream, over any number of rounds."""

    added_ms: list[float] = field(default_factory=list)  # per pair: gateway - direct TTFT
    ratios: list[float] = field(default_factory=list)  # per pair: gateway / direct tokens/s
    ttft: dict[str, list[float]] = field(default_factory=lambda: {"gateway": [], "direct": []})
    # Per gateway round: client TTFT minus the TTFT the gateway measured from its own
    # request to the server: the gateway's part whatever the server's scheduling does
    # (mlx_lm only admits requests to a running batch between bursts), plus the client's
    # own HTTP work, which the direct stream has too (see the module's docstring).
    own_ms: list[float] = field(default_factory=list)
    # Concurrent streams: rounds whose requests mlx_lm did not admit in one batch, per
    # side, and added TTFT and tokens/s ratio over the pairs where both sides' were.
    split: dict[str, int] = field(default_factory=lambda: {"gateway": 0, "direct": 0})
    one_batch_added_ms: list[float] = field(default_factory=list)
    one_batch_ratios: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # the dashboard's, during gateway rounds
    wall_s: float = 0.0
    tokens: int = 0
    rounds: int = 0


def measure(tally: Tally, concurrency: int, rounds: int, gateway: Side, direct: Side,
            dashboard: psutil.Process, metrics: Callable[[], tuple[float, int]], *,
            warm: bool = True, pause_s: float = 0.0) -> Tally:
    """Paired rounds: each round runs both sides back to back (the order alternates), so
    load from elsewhere on the machine hits both; statistics are over the pairs."""
    clients = [httpx.Client(timeout=120) for _ in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        if warm:
            for side in (gateway, direct):
                run_round(pool, clients, *side)
        for n in range(rounds):
            pair: dict[str, list[Stream]] = {}
            order = [("gateway", gateway), ("direct", direct)]
            for name, side in order if (tally.rounds + n) % 2 == 0 else reversed(order):
                time.sleep(pause_s)  # see PAUSE_S
                if name == "gateway":
                    seen = metrics()
                cpu_before, wall_before = process_cpu_s(dashboard), time.perf_counter()
                pair[name] = run_round(pool, clients, *side)
                if name == "gateway":
                    tally.cpu_s += process_cpu_s(dashboard) - cpu_before
                    tally.wall_s += time.perf_counter() - wall_before
                    tally.tokens += sum(s.decode_tokens + 1 for s in pair[name])
                    total, count = metrics()
                    upstream = (total - seen[0]) / max(1, count - seen[1])
                    seen_by_client = statistics.mean(s.ttft_s for s in pair[name])
                    tally.own_ms.append((seen_by_client - upstream) * 1000)
            first = {k: statistics.median(s.ttft_s * 1000 for s in v) for k, v in pair.items()}
            rate = {k: sum(s.decode_tokens for s in v) / sum(s.decode_s for s in v)
                    for k, v in pair.items()}
            added = first["gateway"] - first["direct"]
            ratio = rate["gateway"] / rate["direct"]
            tally.added_ms.append(added)
            tally.ratios.append(ratio)
            if concurrency > 1:
                together = {k: one_batch(v) for k, v in pair.items()}
                for k, admitted in together.items():
                    tally.split[k] += not admitted
                if all(together.values()):
                    tally.one_batch_added_ms.append(added)
                    tally.one_batch_ratios.append(ratio)
            for k, v in pair.items():
                tally.ttft[k] += [s.ttft_s * 1000 for s in v]
    tally.rounds += rounds
    for client in clients:
        client.close()
    return tally


#: The longest mlx_lm decodes before it admits waiting requests (TimeBudget's budget).
BURST_S = 0.5


def one_batch(streams: list[Stream]) -> bool:
    """Whether mlx_lm admitted all of a round's concurrent requests in one batch. It
    admits a request only between decode bursts (the batch's whole decode, at most
    BURST_S), so one that missed the first batch waits that long for its first token;
    within one batch the first tokens come a few ms apart."""
    firsts = [s.ttft_s for s in streams]
    burst = min(BURST_S, statistics.median(s.decode_s for s in streams))
    return max(firsts) - min(firsts) < 0.25 * burst


def report(tally: Tally, route: str, concurrency: int, idle_share: float,
           label: str = "") -> tuple[float, float, float, float]:
    """Prints the figures; returns (added TTFT p50 ms, p95 ms, tokens/s ratio, CPU us per
    token)."""
    added_p50, added_p95 = percentile(tally.added_ms, 0.5), percentile(tally.added_ms, 0.95)
    low, high = median_interval(tally.added_ms)
    ratio = statistics.median(tally.ratios)
    ttft, ratios, own_ms = tally.ttft, tally.ratios, tally.own_ms
    print(f"{label}{route}, {concurrency} stream(s), {tally.rounds} paired rounds: TTFT p50 "
          f"direct {percentile(ttft['direct'], 0.5):.1f} ms, gateway "
          f"{percentile(ttft['gateway'], 0.5):.1f} ms; added TTFT p50 {added_p50:+.2f} ms "
          f"(90% interval {low:+.2f} to {high:+.2f}), p95 {added_p95:+.2f} ms "
          f"(goal p50 <= {TTFT_GOAL_MS:g}) "
          f"{'OK' if added_p50 <= TTFT_GOAL_MS else 'ABOVE GOAL'}")
    print(f"  decode tokens/s ratio gateway/direct: median {ratio:.3f} "
          f"(quartiles {percentile(ratios, 0.25):.3f}-{percentile(ratios, 0.75):.3f}; "
          f"goal >= {RATE_GOAL}) {'OK' if ratio >= RATE_GOAL else 'BELOW GOAL'}")
    own_p50 = percentile(own_ms, 0.5)
    print(f"  client TTFT - the gateway's own upstream TTFT, per round (the gateway's work "
          f"and the client's; not the goal's figure): p50 {own_p50:.2f} ms, p95 "
          f"{percentile(own_ms, 0.95):.2f} ms")
    if concurrency > 1:
        report_one_batch(tally)
    cpu_s, wall_s, tokens = tally.cpu_s, tally.wall_s, tally.tokens
    per_token = cpu_s / tokens * 1e6
    net = max(0.0, cpu_s - idle_share * wall_s) / tokens * 1e6
    print(f"  dashboard CPU while streaming: {per_token:.0f} us per token "
          f"({cpu_s / wall_s * 100:.0f}% of a core; goal <= {CPU_GOAL_US:g}) "
          f"{'OK' if per_token <= CPU_GOAL_US else 'ABOVE GOAL'}; net of the idle "
          f"dashboard's {idle_share * 100:.1f}% of a core: {net:.0f} us per token")
    return added_p50, added_p95, ratio, per_token


def report_one_batch(tally: Tally) -> None:
    """Concurrent streams: which rounds mlx_lm split over batches (`one_batch`), and the
    added TTFT and tokens/s ratio over the pairs it split on neither side. A split decides
    a round's median by hundreds of ms either way, whoever sent the requests."""
    pairs, split = len(tally.one_batch_added_ms), tally.split
    print(f"  rounds mlx_lm did not admit in one batch: gateway {split['gateway']}, direct "
          f"{split['direct']} of {tally.rounds}", end="")
    if not pairs:
        print("; no pair admitted in one batch on both sides")
        return
    added = percentile(tally.one_batch_added_ms, 0.5)
    low, high = median_interval(tally.one_batch_added_ms)
    print(f"; over the {pairs} pairs in one batch on both sides: added TTFT p50 "
          f"{added:+.2f} ms (90% interval {low:+.2f} to {high:+.2f}), "
          f"p95 {percentile(tally.one_batch_added_ms, 0.95):+.2f} ms "
          f"{'OK' if added <= TTFT_GOAL_MS else 'ABOVE GOAL'}, tokens/s ratio median "
          f"{statistics.median(tally.one_batch_ratios):.3f}")


def idle_cpu_share(proc: psutil.Process, seconds: float = 5.0) -> float:
    """The share of a core the dashboard uses with nothing to serve."""
    before = process_cpu_s(proc)
    time.sleep(seconds)
    return (process_cpu_s(proc) - before) / seconds


def route_available(base: str, auth: dict[str, str], route: Route, tokens: int) -> bool:
    """False when this build has no such route: 404 (an unknown /v1 endpoint), or 401
    from the session gate (a path outside the gateway needs a session)."""
    answer = httpx.post(base + route.path, headers=auth, timeout=120,
                        json={**route.body(tokens), "stream": False})
    if answer.status_code in (401, 404):
        return False
    answer.raise_for_status()
    return True


async def requests_per_s(url: str, headers: dict[str, str], clients: int = 32,
                         seconds: float = 3.0) -> float:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as client:
        deadline = time.perf_counter() + seconds
        count = 0

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                answer = await client.get(url)
                answer.raise_for_status()
                count += 1

        await asyncio.gather(*(worker() for _ in range(4)))  # warm the connections
        deadline, count = time.perf_counter() + seconds, 0
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return count / (time.perf_counter() - started)


#: With --baseline, the two dashboards take turns in blocks of this many rounds.
BLOCK = 5
#: Seconds before each side's streams (--pause). 0: back to back, as an agent's loop
#: sends them (what the last request set off as it ended, on the server and in the
#: gateway, overlaps the next one's start); a pause lets that settle first, as between a
#: person's requests.
PAUSE_S = 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--streams", default="1,8", help="concurrent streams to try")
    parser.add_argument("--routes", default=",".join(ROUTES),
                        help="gateway routes to measure: " + ", ".join(ROUTES))
    parser.add_argument("--no-rps", action="store_true", help="skip the /v1/models test")
    parser.add_argument("--pause", type=float, default=PAUSE_S,
                        help="seconds of pause before each side's streams (default %(default)s)")
    parser.add_argument("--floor", action="store_true", help="also measure a bare asyncio "
                        "byte relay (bench/bare_relay.py) in front of the same server: the "
                        "least CPU per token a Python relay on this machine needs")
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare "
                        f"with, measured in the same run (turns of {BLOCK} rounds)")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the baseline's dashboard only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf_home")
        os.environ["HF_HUB_OFFLINE"] = "1"
        (root / "hf_home" / "hub").mkdir(parents=True)
        boards: list[Dashboard] = []
        try:
            boards.append(start_dashboard("", ROOT, root / "this", args.tokens))
            if args.baseline is not None:
                env = dict(item.split("=", 1) for item in args.baseline_env)
                boards.append(start_dashboard("baseline: ", args.baseline.resolve(),
                                              root / "baseline", args.tokens, env))
                boards[0] = replace(boards[0], label="this code: ")
            return run(args, boards)
        finally:
            for board in boards:
                stop_dashboard(board)


def run(args: argparse.Namespace, boards: list[Dashboard]) -> int:
    idle = {b.label: idle_cpu_share(b.proc) for b in boards}
    for board in boards:
        print(f"{board.label}tiny model, max_tokens {args.tokens}; the idle dashboard uses "
              f"{idle[board.label] * 100:.1f}% of a core (Gradio's queue polling, the monitor)")
    for name in args.routes.split(","):
        route = ROUTES[name]
        here = [b for b in boards if route_available(b.base, b.auth, route, args.tokens)]
        for board in (b for b in boards if b not in here):
            print(f"{board.label}{route.path}: not on this build, skipped")
        for concurrency in (int(n) for n in args.streams.split(",")):
            rounds = args.rounds if concurrency == 1 else max(4, args.rounds // 2)
            tallies = {b.label: Tally() for b in here}
            block = BLOCK if len(here) > 1 else rounds
            for done in range(0, rounds, block):
                turn = here if (done // block) % 2 == 0 else here[::-1]
                for board in turn:
                    gateway = (board.base + route.path, route.body(args.tokens), board.auth,
                               route)
                    measure(tallies[board.label], concurrency, min(block, rounds - done),
                            gateway, board.direct, board.proc, board.metrics, warm=done == 0,
                            pause_s=args.pause)
            for board in here:
                report(tallies[board.label], route.path, concurrency, idle[board.label],
                       board.label)
    if args.floor:
        measure_floor(args, boards[0])
    for board in boards:
        print(f"{board.label}the idle dashboard afterwards: "
              f"{idle_cpu_share(board.proc) * 100:.1f}% of a core")
    if args.no_rps:
        return 0
    board = boards[0]
    server = board.direct[0].rsplit("/v1/", 1)[0]
    gw_rps = asyncio.run(requests_per_s(board.base + "/v1/models", board.auth))
    server_rps = asyncio.run(requests_per_s(server + "/v1/models", {}))
    login_rps = asyncio.run(requests_per_s(board.base + "/login", {}))
    print(f"GET /v1/models, 32 concurrent clients: gateway {gw_rps:.0f} req/s; "
          f"mlx_lm's own /v1/models {server_rps:.0f} req/s "
          f"(ratio {gw_rps / server_rps:.2f}); dashboard /login {login_rps:.0f} req/s "
          f"(ratio {gw_rps / login_rps:.2f})")
    return 0


def measure_floor(args: argparse.Namespace, board: Dashboard) -> None:
    """The same chat stream through a bare asyncio byte relay (no HTTP, no parsing)
    against the direct stream, with the relay's CPU per token: the floor for any Python
    relay on this machine at this load."""
    server = board.direct[0].split("/v1/", 1)[0].rsplit(":", 1)
    port = free_port()
    relay = subprocess.Popen(  # noqa: S603 - argv list, no shell
        [sys.executable, "-m", "bench.bare_relay", str(port), "127.0.0.1", server[1]],
        cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or relay.poll() is not None:
                    raise
                time.sleep(0.1)
        idle = idle_cpu_share(psutil.Process(relay.pid), 2.0)
        url, body, headers, route = board.direct
        through: Side = (url.replace(f":{server[1]}/", f":{port}/"), body, headers, route)
        for concurrency in (int(n) for n in args.streams.split(",")):
            rounds = args.rounds if concurrency == 1 else max(4, args.rounds // 2)
            tally = measure(Tally(), concurrency, rounds, through, board.direct,
                            psutil.Process(relay.pid), lambda: (0.0, 0), pause_s=args.pause)
            report(tally, "bare asyncio byte relay (the floor; it reports no upstream TTFT, "
                   "so its 'client TTFT - upstream TTFT' is the client's whole TTFT)",
                   concurrency, idle)
    finally:
        relay.terminate()
        relay.wait(30)


if __name__ == "__main__":
    sys.exit(main())

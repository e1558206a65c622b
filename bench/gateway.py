"""The gateway's overhead: streams through the dashboard vs straight to the same mlx_lm server.

A real dashboard (`app.py serve`, its own process) fronts a tiny model (~1000 tok/s on
this CPU, so per-chunk costs show). Each round runs both paths back to back (the order
alternates; --pause puts a pause before each), with 1 and 8 concurrent streams, all asking
for the same completion (usage included on both sides); statistics are over the pairs, so
load from elsewhere on the machine hits both sides. Every streaming route of the gateway
is measured against the same direct baseline (the server's own /v1/chat/completions
stream): OpenAI chat completions, Anthropic /v1/messages, and, where this build has
them, /v1/responses and Ollama's /api/chat (a route that answers 404 is reported as
skipped).

Reports, per route and concurrency:
- added time to first token, p50 and p95 (gateway minus direct; goal p50 <= 1 ms);
- the TTFT the gateway itself adds: client TTFT minus the TTFT the gateway measured
  from its own request to the server (/metrics), which mlx_lm's batch admission (a
  request arriving while a batch runs waits for it) does not blur;
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
import json
import os
import signal
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

from manager.net import free_port

ROOT = Path(__file__).resolve().parent.parent
TTFT_GOAL_MS = 1.0
RATE_GOAL = 0.97
CPU_GOAL_US = 60.0
PROMPT = [{"role": "user", "content": "Tell me a long story about a quick brown fox."}]


@dataclass(frozen=True)
class Stream:
    ttft_s: float
    decode_tokens: int
    decode_s: float


def _openai_tokens(event: dict, seen: dict) -> bool:
    """OpenAI chat chunks: True for a token; the usage chunk's count goes to `seen`."""
    if event.get("usage"):
        seen["tokens"] = event["usage"]["completion_tokens"]
    choices = event.get("choices") or []
    delta = choices[0].get("delta", {}) if choices else {}
    return bool(delta.get("content") or delta.get("reasoning"))


def _anthropic_tokens(event: dict, seen: dict) -> bool:
    if event.get("type") == "message_delta":
        seen["tokens"] = event["usage"]["output_tokens"]
    return event.get("type") == "content_block_delta"


def _responses_tokens(event: dict, seen: dict) -> bool:
    kind = event.get("type", "")
    if kind in ("response.completed", "response.incomplete"):  # incomplete: max tokens
        seen["tokens"] = event["response"]["usage"]["output_tokens"]
    return kind in ("response.output_text.delta", "response.reasoning_text.delta",
                    "response.reasoning_summary_text.delta")


def _ollama_tokens(event: dict, seen: dict) -> bool:
    if event.get("done"):
        seen["tokens"] = event.get("eval_count", 0)
    message = event.get("message") or {}
    return bool(message.get("content") or message.get("thinking"))


@dataclass(frozen=True)
class Route:
    """A streaming route of the gateway: its path, request and how to read its stream."""

    name: str
    path: str
    body: Callable[[int], dict]
    tokens: Callable[[dict, dict], bool]
    ndjson: bool = False


ROUTES = {
    "chat": Route("chat", "/v1/chat/completions", lambda n: {
        "model": "tiny", "messages": PROMPT, "max_tokens": n, "stream": True,
        "stream_options": {"include_usage": True}}, _openai_tokens),
    "messages": Route("messages", "/v1/messages", lambda n: {
        "model": "tiny", "messages": PROMPT, "max_tokens": n, "stream": True},
        _anthropic_tokens),
    "responses": Route("responses", "/v1/responses", lambda n: {
        "model": "tiny", "input": PROMPT[0]["content"], "max_output_tokens": n,
        "stream": True, "store": False}, _responses_tokens),
    "ollama": Route("ollama", "/api/chat", lambda n: {
        "model": "tiny", "messages": PROMPT, "stream": True,
        "options": {"num_predict": n}}, _ollama_tokens, ndjson=True),
}


def one_stream(client: httpx.Client, url: str, body: dict, headers: dict[str, str],
               route: Route) -> Stream:
    started = time.perf_counter()
    first = last = None
    seen = {"tokens": 0}
    with client.stream("POST", url, json=body, headers=headers) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if route.ndjson:
                if not line.strip():
                    continue
                event = json.loads(line)
            elif not line.startswith("data: ") or line == "data: [DONE]":
                continue
            else:
                event = json.loads(line[6:])
            if route.tokens(event, seen):
                last = time.perf_counter()
                first = first or last
    tokens = seen["tokens"]
    if first is None or last is None or tokens < 2:
        raise RuntimeError(f"no usable stream from {url}")
    return Stream(first - started, tokens - 1, last - first)


def run_round(pool: ThreadPoolExecutor, clients: list[httpx.Client], url: str, body: dict,
              headers: dict[str, str], route: Route) -> list[Stream]:
    jobs = [pool.submit(one_stream, c, url, body, headers, route) for c in clients]
    return [job.result() for job in jobs]


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


def upstream_ttft(base: str, auth: dict[str, str]) -> tuple[float, int]:
    """(sum of seconds, count) of the TTFT the gateway itself measured upstream (/metrics)."""
    text = httpx.get(base + "/metrics", headers=auth, timeout=30).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    name = 'mlx_manager_time_to_first_token_seconds_{}{{profile="tiny"}}'
    return values[name.format("sum")], int(values[name.format("count")])


Side = tuple[str, dict, dict, Route]  # url, body, headers, how to read the stream


@dataclass
class Tally:
    """One gateway's figures against the direct stream, over any number of rounds."""

    added_ms: list[float] = field(default_factory=list)  # per pair: gateway - direct TTFT
    ratios: list[float] = field(default_factory=list)  # per pair: gateway / direct tokens/s
    ttft: dict[str, list[float]] = field(default_factory=lambda: {"gateway": [], "direct": []})
    # Per gateway round: client TTFT minus the TTFT the gateway measured from its own
    # request to the server, i.e. the time the gateway adds whatever the server's
    # scheduling does (mlx_lm only admits requests to a running batch between bursts).
    own_ms: list[float] = field(default_factory=list)
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
            tally.added_ms.append(first["gateway"] - first["direct"])
            tally.ratios.append(rate["gateway"] / rate["direct"])
            for k, v in pair.items():
                tally.ttft[k] += [s.ttft_s * 1000 for s in v]
    tally.rounds += rounds
    for client in clients:
        client.close()
    return tally


def report(tally: Tally, route: str, concurrency: int, idle_share: float,
           label: str = "") -> tuple[float, float, float, float]:
    """Prints the figures; returns (added TTFT p50 ms, p95 ms, tokens/s ratio, CPU us per
    token)."""
    added_p50, added_p95 = percentile(tally.added_ms, 0.5), percentile(tally.added_ms, 0.95)
    ratio = statistics.median(tally.ratios)
    ttft, ratios, own_ms = tally.ttft, tally.ratios, tally.own_ms
    print(f"{label}{route}, {concurrency} stream(s), {tally.rounds} paired rounds: TTFT p50 "
          f"direct {percentile(ttft['direct'], 0.5):.1f} ms, gateway "
          f"{percentile(ttft['gateway'], 0.5):.1f} ms; added TTFT p50 {added_p50:+.2f} ms, "
          f"p95 {added_p95:+.2f} ms (goal p50 <= {TTFT_GOAL_MS:g}) "
          f"{'OK' if added_p50 <= TTFT_GOAL_MS else 'ABOVE GOAL'}")
    print(f"  decode tokens/s ratio gateway/direct: median {ratio:.3f} "
          f"(quartiles {percentile(ratios, 0.25):.3f}-{percentile(ratios, 0.75):.3f}; "
          f"goal >= {RATE_GOAL}) {'OK' if ratio >= RATE_GOAL else 'BELOW GOAL'}")
    own_p50 = percentile(own_ms, 0.5)
    print(f"  TTFT the gateway itself adds (client TTFT - the gateway's own upstream TTFT, "
          f"per round): p50 {own_p50:.2f} ms, p95 {percentile(own_ms, 0.95):.2f} ms "
          f"{'OK' if own_p50 <= TTFT_GOAL_MS else 'ABOVE GOAL'}")
    cpu_s, wall_s, tokens = tally.cpu_s, tally.wall_s, tally.tokens
    per_token = cpu_s / tokens * 1e6
    net = max(0.0, cpu_s - idle_share * wall_s) / tokens * 1e6
    print(f"  dashboard CPU while streaming: {per_token:.0f} us per token "
          f"({cpu_s / wall_s * 100:.0f}% of a core; goal <= {CPU_GOAL_US:g}) "
          f"{'OK' if per_token <= CPU_GOAL_US else 'ABOVE GOAL'}; net of the idle "
          f"dashboard's {idle_share * 100:.1f}% of a core: {net:.0f} us per token")
    return added_p50, added_p95, ratio, per_token


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


def prepare(root: Path, tokens: int) -> tuple[str, int, Path]:
    """A data dir with an admin, a key and a profile for the tiny model."""
    from manager.servers.profiles import ProfileSpec
    from manager.services import Services
    from manager.settings import Settings
    from tests.fixtures.tiny_models import make_text_model

    model = make_text_model(root / "model")
    services = Services.create(Settings(data_dir=root / "data"), run_servers=False)
    try:
        admin = services.auth.register("bench@example.com", "correct horse battery")
        key = services.api_keys.create(admin, "bench").secret
        profile = services.profiles.create(admin, ProfileSpec(
            name="tiny", model=str(model), port=free_port(), max_tokens=tokens))
    finally:
        services.close()
    return key, profile.port, model


@dataclass(frozen=True)
class Dashboard:
    """One dashboard under test, its own model server and the direct stream to it."""

    label: str
    process: subprocess.Popen[bytes]
    base: str
    auth: dict[str, str]
    data_dir: Path
    direct: Side

    @property
    def proc(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def metrics(self) -> tuple[float, int]:
        return upstream_ttft(self.base, self.auth)


def start_dashboard(label: str, code: Path, root: Path, tokens: int,
                    env: dict[str, str] | None = None) -> Dashboard:
    """A data dir made by `code`'s own bench (so its migrations), then its dashboard, its
    model server started by a first request."""
    root.mkdir(parents=True)
    made = subprocess.run(  # noqa: S603 - argv list, no shell
        [sys.executable, "-c", "import json, sys; from bench.gateway import prepare; "
         "k, p, m = prepare(__import__('pathlib').Path(sys.argv[1]), int(sys.argv[2])); "
         "print(json.dumps([k, p, str(m)]))", str(root), str(tokens)],
        cwd=code, check=True, capture_output=True, text=True)
    key, server_port, model = json.loads(made.stdout.strip().splitlines()[-1])
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - argv list, no shell
        [sys.executable, str(code / "app.py"), "serve", "--data-dir", str(root / "data"),
         "--port", str(port), "--log-level", "warning"],
        cwd=code, start_new_session=True, stdout=subprocess.DEVNULL,
        # Every round uses the one key: no per-minute limit while measuring speed.
        env={**os.environ, "MLX_MANAGER_GATEWAY_REQUESTS_PER_MINUTE": "0", **(env or {})})
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    chat = ROUTES["chat"]
    direct: Side = (f"http://127.0.0.1:{server_port}/v1/chat/completions",
              {**chat.body(tokens), "model": model}, {}, chat)
    board = Dashboard(label, process, base, auth, root / "data", direct)
    deadline = time.monotonic() + 300  # a loaded machine imports slowly
    last_error: Exception | None = None
    while True:
        try:
            if httpx.get(base + "/login", timeout=2).status_code == 200:
                break
        except httpx.HTTPError as exc:
            # Not listening yet; give up at the deadline with the last error.
            last_error = exc
        if time.monotonic() > deadline or process.poll() is not None:
            stop_dashboard(board)
            raise RuntimeError(f"the dashboard did not start ({last_error!r})")
        time.sleep(0.2)
    # The first request starts the server on demand.
    httpx.post(base + chat.path, headers=auth, timeout=120,
               json={**chat.body(tokens), "stream": False}).raise_for_status()
    return board


def stop_dashboard(board: Dashboard) -> None:
    os.killpg(board.process.pid, signal.SIGTERM)
    try:
        board.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(board.process.pid, signal.SIGKILL)
        board.process.wait()
    stop_leftovers(board.data_dir)


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
            report(tally, "bare asyncio byte relay (the floor; its 'own TTFT' is the "
                   "client's)", concurrency, idle)
    finally:
        relay.terminate()
        relay.wait(30)


def stop_leftovers(data_dir: Path) -> None:
    """The dashboard leaves its model servers running (the next start adopts them)."""
    import psutil

    from manager.servers.process import live_process
    from manager.servers.records import read_records
    from manager.store import Store

    for record in read_records(Store(data_dir / "manager.db")):
        proc = live_process(record)
        if proc is None:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(15)
                break
            except ProcessLookupError:
                break
            except psutil.TimeoutExpired:
                print(f"model server {proc.pid} ignored {sig.name}")


if __name__ == "__main__":
    sys.exit(main())

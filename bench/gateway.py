"""The gateway's overhead: streams through the dashboard vs straight to the same mlx_lm server.

A real dashboard (`app.py serve`, its own process) fronts a tiny model (~1000 tok/s on
this CPU, so per-chunk costs show). Each round runs both paths back to back (the order
alternates), with 1 and 8 concurrent streams, all asking for the same completion (usage
included on both sides); statistics are over the pairs, so load from elsewhere on the
machine hits both sides. Every streaming route of the gateway is measured against the
same direct baseline (the server's own /v1/chat/completions stream): OpenAI chat
completions, Anthropic /v1/messages, and, where this build has them, /v1/responses and
Ollama's /api/chat (a route that answers 404 is reported as skipped).

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
     [--routes chat,messages,responses,ollama]
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
from dataclasses import dataclass
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


def compare(concurrency: int, rounds: int, gateway: Side, direct: Side,
            dashboard: psutil.Process, metrics: Callable[[], tuple[float, int]],
            idle_share: float) -> tuple[float, float, float, float]:
    """Paired rounds: each round runs both sides back to back (the order alternates), so
    load from elsewhere on the machine hits both; statistics are over the pairs.
    Returns (added TTFT p50 ms, p95 ms, tokens/s ratio, CPU us per token)."""
    clients = [httpx.Client(timeout=120) for _ in range(concurrency)]
    added_ms: list[float] = []  # per pair: gateway TTFT - direct TTFT (medians of the round)
    ratios: list[float] = []  # per pair: gateway tokens/s over direct tokens/s
    ttft: dict[str, list[float]] = {"gateway": [], "direct": []}
    cpu_s, wall_s, tokens = 0.0, 0.0, 0  # the dashboard's, during gateway rounds
    # Per gateway round: client TTFT minus the TTFT the gateway measured from its own
    # request to the server, i.e. the time the gateway adds whatever the server's
    # scheduling does (mlx_lm only admits requests to a running batch between bursts).
    own_ms: list[float] = []
    with ThreadPoolExecutor(concurrency) as pool:
        for side in (gateway, direct):  # warm both paths
            run_round(pool, clients, *side)
        for n in range(rounds):
            pair: dict[str, list[Stream]] = {}
            order = [("gateway", gateway), ("direct", direct)]
            for name, side in order if n % 2 == 0 else reversed(order):
                if name == "gateway":
                    seen = metrics()
                cpu_before, wall_before = process_cpu_s(dashboard), time.perf_counter()
                pair[name] = run_round(pool, clients, *side)
                if name == "gateway":
                    cpu_s += process_cpu_s(dashboard) - cpu_before
                    wall_s += time.perf_counter() - wall_before
                    tokens += sum(s.decode_tokens + 1 for s in pair[name])
                    total, count = metrics()
                    upstream = (total - seen[0]) / max(1, count - seen[1])
                    client = statistics.mean(s.ttft_s for s in pair[name])
                    own_ms.append((client - upstream) * 1000)
            first = {k: statistics.median(s.ttft_s * 1000 for s in v) for k, v in pair.items()}
            rate = {k: sum(s.decode_tokens for s in v) / sum(s.decode_s for s in v)
                    for k, v in pair.items()}
            added_ms.append(first["gateway"] - first["direct"])
            ratios.append(rate["gateway"] / rate["direct"])
            for k, v in pair.items():
                ttft[k] += [s.ttft_s * 1000 for s in v]
    for client in clients:
        client.close()
    added_p50, added_p95 = percentile(added_ms, 0.5), percentile(added_ms, 0.95)
    ratio = statistics.median(ratios)
    route = gateway[3].path
    print(f"{route}, {concurrency} stream(s), {rounds} paired rounds: TTFT p50 direct "
          f"{percentile(ttft['direct'], 0.5):.1f} ms, gateway "
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--streams", default="1,8", help="concurrent streams to try")
    parser.add_argument("--routes", default=",".join(ROUTES),
                        help="gateway routes to measure: " + ", ".join(ROUTES))
    parser.add_argument("--no-rps", action="store_true", help="skip the /v1/models test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf_home")
        os.environ["HF_HUB_OFFLINE"] = "1"
        (root / "hf_home" / "hub").mkdir(parents=True)
        key, server_port, model = prepare(root, args.tokens)
        port = free_port()
        dashboard = subprocess.Popen(  # noqa: S603 - argv list, no shell
            [sys.executable, str(ROOT / "app.py"), "serve", "--data-dir", str(root / "data"),
             "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
            # Every round uses the one key: no per-minute limit while measuring speed.
            env={**os.environ, "MLX_MANAGER_GATEWAY_REQUESTS_PER_MINUTE": "0"})
        try:
            base = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {key}"}
            deadline = time.monotonic() + 300  # a loaded machine imports slowly
            last_error: Exception | None = None
            while True:
                try:
                    if httpx.get(base + "/login", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError as exc:
                    # Not listening yet; give up at the deadline with the last error.
                    last_error = exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the dashboard did not start ({last_error!r})")
                time.sleep(0.2)
            # The first request starts the server on demand.
            chat = ROUTES["chat"]
            httpx.post(base + chat.path, headers=auth, timeout=120,
                       json={**chat.body(args.tokens), "stream": False}).raise_for_status()
            direct = (f"http://127.0.0.1:{server_port}/v1/chat/completions",
                      {**chat.body(args.tokens), "model": str(model)}, {}, chat)
            proc = psutil.Process(dashboard.pid)
            idle = idle_cpu_share(proc)
            print(f"tiny model, max_tokens {args.tokens}; the idle dashboard uses "
                  f"{idle * 100:.1f}% of a core (Gradio's queue polling, the monitor)")
            for name in args.routes.split(","):
                route = ROUTES[name]
                if not route_available(base, auth, route, args.tokens):
                    print(f"{route.path}: not on this build, skipped")
                    continue
                gateway = (base + route.path, route.body(args.tokens), auth, route)
                for concurrency in (int(n) for n in args.streams.split(",")):
                    rounds = args.rounds if concurrency == 1 else max(4, args.rounds // 2)
                    compare(concurrency, rounds, gateway, direct, proc,
                            lambda: upstream_ttft(base, auth), idle)
            print(f"the idle dashboard afterwards: {idle_cpu_share(proc) * 100:.1f}% of a core")
            if args.no_rps:
                return 0
            gw_rps = asyncio.run(requests_per_s(base + "/v1/models", auth))
            server_rps = asyncio.run(requests_per_s(
                f"http://127.0.0.1:{server_port}/v1/models", {}))
            login_rps = asyncio.run(requests_per_s(base + "/login", {}))
            print(f"GET /v1/models, 32 concurrent clients: gateway {gw_rps:.0f} req/s; "
                  f"mlx_lm's own /v1/models {server_rps:.0f} req/s "
                  f"(ratio {gw_rps / server_rps:.2f}); dashboard /login {login_rps:.0f} req/s "
                  f"(ratio {gw_rps / login_rps:.2f})")
        finally:
            os.killpg(dashboard.pid, signal.SIGTERM)
            try:
                dashboard.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(dashboard.pid, signal.SIGKILL)
                dashboard.wait()
            stop_leftovers(root / "data")
    return 0


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

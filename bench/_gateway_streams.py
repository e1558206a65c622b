"""What bench.gateway sends and how it reads the answer: each streaming route's request,
its stream read to the end with the time to first token and the decode rate."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

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


def _ollama_generate_tokens(event: dict, seen: dict) -> bool:
    if event.get("done"):
        seen["tokens"] = event.get("eval_count", 0)
    return bool(event.get("response") or event.get("thinking"))


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
    "generate": Route("generate", "/api/generate", lambda n: {
        "model": "tiny", "prompt": PROMPT[0]["content"], "stream": True,
        "options": {"num_predict": n}}, _ollama_generate_tokens, ndjson=True),
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


Side = tuple[str, dict, dict, Route]  # url, body, headers, how to read the stream

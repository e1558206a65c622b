"""What the gateway writes on the wire, as pure functions: errors in each API's own
format, the model list, profile lookup and the model name the client sees (streams:
manager/api/stream_formats.py).

Kept apart from the routes (manager/gateway.py) so each mapping is table-tested
without a server.
"""

from __future__ import annotations

import enum
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from manager.api.anthropic import anthropic_error, sse
from manager.errors import ManagerError, NotFound, PermissionDenied, ValidationError
from manager.json_text import loads_strict
from manager.servers.failure_report import beyond_answering
from manager.servers.inference import InferenceError
from manager.servers.placement import InsufficientMemory, StartFailed
from manager.servers.profiles import Profile
from manager.servers.supervisor import ServerLoading, ServerNotReady, ServerSnapshot, ServerState

log = logging.getLogger(__name__)

GATEWAY_PREFIX = "/v1"
#: Ollama's API (manager/api/ollama_routes.py).
OLLAMA_PREFIX = "/api"
METRICS_PATH = "/metrics"
ANTHROPIC_PATHS = ("/v1/messages",)
#: Seconds a client should wait before asking again for a model that is loading.
LOADING_RETRY_AFTER_S = 5

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiFormat(str, enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OLLAMA = "ollama"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def is_gateway_path(path: str) -> bool:
    """Paths that answer to API keys (and never to a session cookie)."""
    return path == METRICS_PATH or _under(path, GATEWAY_PREFIX) or _under(path, OLLAMA_PREFIX)


def api_format(path: str) -> ApiFormat:
    """Anthropic's format for /v1/messages and below, Ollama's for /api, OpenAI's for
    everything else."""
    if _under(path, OLLAMA_PREFIX):
        return ApiFormat.OLLAMA
    for prefix in ANTHROPIC_PATHS:
        if path == prefix or path.startswith(prefix + "/"):
            return ApiFormat.ANTHROPIC
    return ApiFormat.OPENAI


def api_key_from(headers: Mapping[str, str]) -> str | None:
    """The key of `Authorization: Bearer <key>` (OpenAI SDK) or `x-api-key` (Anthropic)."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


# --- errors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A request that cannot be answered: HTTP status and a message for the caller.
    `retry` False tells the SDKs not to retry (x-should-retry: false)."""

    status: int
    message: str
    code: str
    retry: bool = False
    retry_after_s: int | None = None
    #: The request field at fault, when there is one (OpenAI's `param`).
    param: str | None = None
    #: The methods the path takes (a 405's Allow header).
    allow: tuple[str, ...] = ()

    def headers(self) -> dict[str, str]:
        out = {"x-should-retry": "true" if self.retry else "false"}
        if self.retry_after_s is not None:
            out["retry-after"] = str(self.retry_after_s)
        if self.allow:
            out["allow"] = ", ".join(self.allow)
        return out


class GatewayError(ManagerError):
    """A refusal decided by the gateway itself (no key, bad JSON, wrong endpoint...)."""

    def __init__(self, status: int, message: str, code: str, *,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.failure = Failure(status, message, code, param=param)


def openai_error(failure: Failure) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(failure.status, "server_error" if failure.status >= 500
                             else "invalid_request_error")
    return {"error": {"message": failure.message, "type": kind, "param": failure.param,
                      "code": failure.code}}


def error_body(fmt: ApiFormat, failure: Failure) -> dict[str, Any]:
    if fmt is ApiFormat.ANTHROPIC:
        return anthropic_error(failure.status, failure.message)
    if fmt is ApiFormat.OLLAMA:
        return {"error": failure.message}
    return openai_error(failure)


def stream_error(fmt: ApiFormat, failure: Failure) -> bytes:
    """An error after the stream began (status 200 already sent), as each SDK reads it."""
    if fmt is ApiFormat.ANTHROPIC:
        return sse("error", anthropic_error(failure.status, failure.message))
    if fmt is ApiFormat.OLLAMA:  # one NDJSON line
        return dumps({"error": failure.message}) + b"\n"
    return b"data: " + dumps(openai_error(failure)) + b"\n\n"


def failure_for(exc: BaseException) -> Failure:
    """The answer to give for an exception raised while serving a request."""
    if isinstance(exc, GatewayError):
        return exc.failure
    if isinstance(exc, NotFound):
        return Failure(404, exc.message, "model_not_found")
    if isinstance(exc, ValidationError):
        return Failure(400, exc.message, "invalid_request", param=exc.field)
    if isinstance(exc, PermissionDenied):
        return Failure(403, exc.message, "permission_denied")
    if isinstance(exc, InsufficientMemory):
        return Failure(503, exc.message, "insufficient_memory")
    if isinstance(exc, StartFailed):
        return Failure(503, exc.message, "server_start_failed")
    if isinstance(exc, ServerLoading):
        return Failure(503, exc.message, "model_loading", retry=True,
                       retry_after_s=LOADING_RETRY_AFTER_S)
    if isinstance(exc, ServerNotReady):
        return Failure(503, exc.message, "model_not_ready")
    if isinstance(exc, InferenceError):
        # mlx_lm answers 404 for whatever its handling of a request raised (a template
        # that refuses the messages, a bad argument), but for a dead generation thread.
        if exc.status_code in (400, 404, 413, 422) and beyond_answering(exc.message) is None:
            return Failure(400, exc.message, "invalid_request")
        return Failure(502, exc.message, "backend_error", retry=True)
    if isinstance(exc, ManagerError):
        return Failure(503, exc.message, "unavailable")
    log.error("gateway request failed unexpectedly", exc_info=exc)
    return Failure(500, "The gateway failed to answer; the dashboard's log says why.",
                   "internal_error")


#: What a catch-all route takes (the gateway's unknown paths, Ollama's model management).
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


@dataclass(frozen=True)
class Methods:
    """The methods each route of a router takes, by path: the catch-all that answers a
    known path asked with another method says so (a 405 and its Allow header)."""

    routes: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = ()

    @classmethod
    def of(cls, routes: Iterable[Any]) -> Methods:
        """A router's routes; those that take every method (catch-alls) are left out."""
        return cls(tuple((route.path_regex, frozenset(route.methods)) for route in routes
                         if getattr(route, "methods", None)
                         and not set(ALL_METHODS) <= route.methods))

    def refusal(self, method: str, path: str) -> Failure | None:
        """The 405 for `method` at `path`, or None when no route has that path."""
        allowed = {m for pattern, methods in self.routes if pattern.match(path)
                   for m in methods}
        if not allowed or method in allowed:
            return None
        allow = tuple(sorted(allowed))
        return Failure(405, f"{method} is not served at {path}: use {' or '.join(allow)}.",
                       "method_not_allowed", allow=allow)


# --- requests ----------------------------------------------------------------------------


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def parse_body(raw: bytes | bytearray) -> dict[str, Any]:
    """The JSON object of a request body, or a 400 GatewayError saying what is wrong."""
    return parse_body_strict(raw)[0]


def parse_body_strict(raw: bytes | bytearray) -> tuple[dict[str, Any], bool]:
    """`parse_body`, and whether its numbers and strings are known to be finite and
    valid Unicode (json_text.loads_strict)."""
    try:
        body, strict = loads_strict(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayError(400, f"The request body is not valid JSON: {exc}.",
                           "invalid_json") from exc
    except RecursionError as exc:
        raise GatewayError(400, "The request body is nested too deeply.",
                           "invalid_json") from exc
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", "invalid_json")
    return body, strict


def requested_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GatewayError(400, "Name a model: a profile name from GET /v1/models.",
                           "model_required")
    return model.strip()


def resolve_profile(profiles: Iterable[Profile], name: str) -> Profile:
    """The profile a request names: by profile name (case-insensitive; Ollama's default
    tag ":latest" may follow it), else by the model it serves (a repo id or folder)
    when exactly one profile serves that."""
    profiles = list(profiles)
    wanted = " ".join(name.split()).casefold()
    for each in dict.fromkeys((wanted, wanted.removesuffix(":latest"))):
        for profile in profiles:
            if profile.name.casefold() == each:
                return profile
    serving = [p for p in profiles if p.model.strip().casefold() == name.strip().casefold()]
    if len(serving) == 1:
        return serving[0]
    if serving:
        names = ", ".join(repr(p.name) for p in serving)
        raise NotFound(f"{len(serving)} profiles serve {name!r}; name one of them: {names}.")
    raise NotFound(f"No profile or model named {name!r}. GET /v1/models lists them.")


def with_thinking_switch(request: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic's `thinking: {type: enabled|disabled}` as the chat template switch the
    MLX servers read (other thinking settings are left to the profile)."""
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "disabled"):
        kwargs = dict(request.get("chat_template_kwargs") or {})
        kwargs["enable_thinking"] = thinking["type"] == "enabled"
        request["chat_template_kwargs"] = kwargs
    return request


def with_developer_as_system(request: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `developer` role as `system`: the chat templates know only `system`
    and would drop a `developer` message without a word."""
    messages = request.get("messages")
    if isinstance(messages, list) and any(
            isinstance(m, Mapping) and m.get("role") == "developer" for m in messages):
        request["messages"] = [{**m, "role": "system"} if isinstance(m, Mapping)
                               and m.get("role") == "developer" else m for m in messages]
    return request


# --- model list --------------------------------------------------------------------------


def _epoch(stamp: str) -> int:
    try:
        return int(datetime.fromisoformat(stamp).timestamp())
    except (TypeError, ValueError):
        return 0


def model_entry(fmt: ApiFormat, profile: Profile, snap: ServerSnapshot | None,
                tool_check: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One model; `tool_check` (the measured tool-use score) is added when there is one."""
    state = snap.state if snap is not None else ServerState.STOPPED
    entry: dict[str, Any]
    if fmt is ApiFormat.ANTHROPIC:
        entry = {"type": "model", "id": profile.name, "display_name": profile.name,
                 "created_at": profile.created_at}
    else:
        entry = {"id": profile.name, "object": "model", "created": _epoch(profile.created_at),
                 "owned_by": "mlx-manager", "state": state.value}
    if tool_check is not None:
        entry["tool_check"] = dict(tool_check)
    return entry


def model_list(fmt: ApiFormat, profiles: list[Profile],
               snaps: Mapping[int, ServerSnapshot],
               tool_checks: Mapping[int, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    checks = tool_checks or {}
    data = [model_entry(fmt, p, snaps.get(p.id), checks.get(p.id)) for p in profiles]
    if fmt is ApiFormat.ANTHROPIC:
        return {"data": data, "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}
    return {"object": "list", "data": data}


# --- streams -----------------------------------------------------------------------------


#: What answers say in `system_fingerprint`. mlx_lm writes its versions and
#: `platform.platform()` there (kernel and glibc versions): nothing a client should learn.
SYSTEM_FINGERPRINT = "fp_mlx_manager"
_FINGERPRINT = re.compile(rb'"system_fingerprint": ?"(?:[^"\\]|\\.)*"')
_FINGERPRINT_OUT = b'"system_fingerprint": "' + SYSTEM_FINGERPRINT.encode() + b'"'


class FieldSwap:
    """Replaces a JSON field that a server writes the same way in every chunk of a stream
    (`key` and its value, found by `pattern`) with `out`, in JSON text as sent.

    The relay meets the field in every chunk: after the first match, its exact text is
    swapped with a bytes replace, and the pattern runs only where some occurrence of
    `key` is written differently. Text inside a JSON string cannot match (its quotes
    are escaped), so the literal is as safe as the pattern."""

    def __init__(self, key: bytes, pattern: re.Pattern[bytes], out: bytes,
                 seen: bytes | None = None) -> None:
        self._key = key
        self._pattern = pattern
        self._out = out
        #: The field's text as the server wrote it (`seen`: as it is likely to, a text
        #: `pattern` matches; a stream that writes it otherwise falls back to `pattern`).
        self._seen = seen

    def swap(self, data: bytes) -> tuple[bytes, int]:
        """(`data` with the field replaced, how many occurrences of `key` were not)."""
        total = data.count(self._key)
        if not total:
            return data, 0
        seen = self._seen
        if seen is not None and data.count(seen) == total:
            return data.replace(seen, self._out), 0
        first = self._pattern.search(data)
        if first is not None:
            seen = self._seen = first[0]
            if data.count(seen) == total:  # one regex pass on a stream's first chunk
                return data.replace(seen, self._out), 0
        out = self._out
        swapped, count = self._pattern.subn(lambda _: out, data)
        return swapped, total - count


def fingerprint_swap() -> FieldSwap:
    """Every `system_fingerprint` string in the chunks of one stream becomes
    SYSTEM_FINGERPRINT (see FieldSwap)."""
    return FieldSwap(b'"system_fingerprint"', _FINGERPRINT, _FINGERPRINT_OUT)


class ModelRenamer:
    """Puts the profile name where the server wrote its model path, in JSON text as the
    server sent it (a string replace; re-encoding only when the text differs)."""

    def __init__(self, served: str, public: str) -> None:
        self.public = public
        served_json, public_json = json.dumps(served), json.dumps(public)
        self._pairs = [(f'"model"{sep}{served_json}', f'"model"{sep}{public_json}')
                       for sep in (": ", ":")]

    def text(self, data: str) -> str:
        for old, new in self._pairs:
            if old in data:
                return data.replace(old, new, 1)
        if '"model"' not in data:
            return data
        return self.encode(json.loads(data))

    def payload(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        out = {**payload, "model": self.public}
        if "system_fingerprint" in out:
            out["system_fingerprint"] = SYSTEM_FINGERPRINT
        return out

    def encode(self, payload: Mapping[str, Any]) -> str:
        return json.dumps(self.payload(payload), ensure_ascii=False)


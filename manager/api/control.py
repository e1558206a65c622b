"""The dashboard's local control API: what `mlx-manager start|stop|run|pull|rm|ps` ask of
a running dashboard, which owns the servers and the download jobs.

Who may call it: a process of the same OS user on this machine. The dashboard writes a
random token per run into its data dir, readable only by that user (0600,
`manager.cli.instance.write_control`); a request must carry it as `Authorization:
Bearer`, come from this machine (a loopback address, or the dashboard's own address),
and carry no `Origin` (browsers always send one on such requests, so no web page can
use it, even one that guessed the token). It acts as the machine's owner, like the CLI
acting on the data dir directly (actor None). A session cookie or an API key never
opens it. Errors are JSON `{"error": message}` with a status per kind.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import HTTPConnection

from manager.api.session_gate import ExtraAuth
from manager.cli.chat_session import TerminalChats, event_json
from manager.cli.models import begin_pull, find_model, moved_from
from manager.errors import Conflict, ManagerError, NotFound, PermissionDenied, ValidationError
from manager.models.download_types import DownloadView
from manager.servers.snapshot import ServerSnapshot
from manager.servers.states import ServerState
from manager.services import Services

log = logging.getLogger(__name__)

PREFIX = "/control"
_OK = "control_ok"
#: The longest a start (or a download wait) is waited for in one request; the CLI asks
#: again while the server loads.
MAX_WAIT_S = 60.0
_STATUS = ((NotFound, 404), (Conflict, 409), (PermissionDenied, 403), (ValidationError, 400))


def is_control_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _local(conn: HTTPConnection) -> bool:
    client = conn.scope.get("client")
    server = conn.scope.get("server")
    if not client:
        return False
    try:
        if ipaddress.ip_address(client[0]).is_loopback:
            return True
    except ValueError:
        return False
    # Reached by the machine's LAN address (a dashboard bound to it): same host only.
    return server is not None and client[0] == server[0]


def control_auth(token: str) -> ExtraAuth:
    """The SessionGate hook: claims every control path, marks the ones that may act."""
    expected = f"Bearer {token}".encode()

    async def claim(conn: HTTPConnection) -> bool:
        if conn.scope["type"] != "http" or not is_control_path(conn.scope["path"]):
            return False
        given = conn.headers.get("authorization", "").encode()
        ok = (hmac.compare_digest(given, expected) and _local(conn)
              and "origin" not in conn.headers)
        conn.scope.setdefault("state", {})[_OK] = ok
        if not ok:
            log.warning("control request %s %s from %s refused", conn.scope.get("method"),
                        conn.scope["path"], (conn.scope.get("client") or ("?",))[0])
        return True

    return claim


def first_claim(*claims: ExtraAuth) -> ExtraAuth:
    """One SessionGate hook from several: the first that claims a request wins."""
    async def claim(conn: HTTPConnection) -> bool:
        for each in claims:
            if await each(conn):
                return True
        return False

    return claim


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status_of(exc: ManagerError) -> int:
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)


def server_json(snap: ServerSnapshot) -> dict[str, Any]:
    return {"profile": snap.profile.name, "state": snap.state.value, "pid": snap.pid,
            "port": snap.profile.port, "host": snap.profile.host, "reason": snap.reason,
            "started_at": snap.started_at, "failure_tail": snap.failure_tail[-2000:]}


def download_json(view: DownloadView) -> dict[str, Any]:
    return {"id": view.id, "repo_id": view.repo_id, "status": view.status.value,
            "bytes_done": view.bytes_done, "bytes_total": view.bytes_total,
            "speed_bps": view.speed_bps, "eta_seconds": view.eta_seconds, "error": view.error}


async def _body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise ValidationError(f"The request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError("The request body must be a JSON object.")
    return data


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"'{name}' must be a non-empty string.")
    return value.strip()


def _wait_s(data: dict[str, Any] | Any) -> float:
    value = data.get("wait", 0) if isinstance(data, dict) else 0
    return max(0.0, min(float(value), MAX_WAIT_S)) if isinstance(value, (int, float)) else 0.0


Handler = Callable[[Request], Awaitable[Response]]


def build_control_router(services: Services) -> APIRouter:
    """The control routes; include before Gradio is mounted at '/', with `control_auth`
    in the session gate."""
    router = APIRouter(include_in_schema=False)
    chats = TerminalChats(services)
    supervisor = services.supervisor
    placement = services.placement

    def guarded(handler: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            if not request.scope.get("state", {}).get(_OK):
                return _error(401, "This is the dashboard's local control API: only "
                                   "`mlx-manager` commands of the same user on this "
                                   "machine may use it.")
            try:
                result = await handler(request)
            except ManagerError as exc:
                return _error(_status_of(exc), exc.message)
            return result if isinstance(result, Response) else JSONResponse(result)
        return endpoint

    def settle(profile_id: int, wait_s: float) -> ServerSnapshot | None:
        return supervisor.wait_for(
            profile_id, lambda s: s is None or s.state is not ServerState.STARTING, wait_s)

    def start(name: str, wait_s: float, on_demand: bool) -> dict[str, Any]:
        profile = services.profiles.find(name)
        snap = supervisor.snapshot(profile.id)
        started = False
        if snap is None or snap.state not in (ServerState.READY, ServerState.STARTING):
            if on_demand:  # `run`: evictable once idle, like a gateway request's start
                started = placement.ensure_started(None, profile, by="mlx-manager run")
            else:
                placement.start(None, profile.id, by="mlx-manager start")
                started = True
        snap = settle(profile.id, wait_s)
        if snap is None:
            raise NotFound(f"No server for {profile.name}.")
        return {"server": server_json(snap), "started": started}

    async def servers(request: Request) -> dict[str, Any]:
        snaps = await to_thread.run_sync(supervisor.snapshots)
        return {"servers": [server_json(s) for s in snaps]}

    async def start_server(request: Request) -> dict[str, Any]:
        data = await _body(request)
        return await to_thread.run_sync(start, _text(data, "profile"), _wait_s(data),
                                        bool(data.get("on_demand")))

    async def wait_server(request: Request) -> dict[str, Any]:
        data = await _body(request)
        profile = await to_thread.run_sync(services.profiles.find, _text(data, "profile"))
        snap = await to_thread.run_sync(settle, profile.id, _wait_s(data))
        if snap is None:
            raise NotFound(f"{profile.name} has no server.")
        return {"server": server_json(snap)}

    async def stop_server(request: Request) -> dict[str, Any]:
        data = await _body(request)

        def stop(name: str) -> ServerSnapshot:
            profile = services.profiles.find(name)
            return placement.stop(None, profile.id, by="mlx-manager stop")

        return {"server": server_json(await to_thread.run_sync(stop, _text(data, "profile")))}

    async def pull(request: Request) -> dict[str, Any]:
        data = await _body(request)
        view, resumed_from = await to_thread.run_sync(begin_pull, services.downloads,
                                                      _text(data, "repo"))
        return {"download": download_json(view), "resumed_from": resumed_from}

    async def download(request: Request) -> dict[str, Any]:
        data = await _body(request)
        job_id, seen = data.get("id"), data.get("seen", -1)
        if not isinstance(job_id, int) or not isinstance(seen, int):
            raise ValidationError("'id' and 'seen' must be integers.")
        view = await to_thread.run_sync(lambda: services.downloads.wait(
            job_id, timeout=_wait_s(data), until=moved_from(seen)))
        return {"download": download_json(view)}

    async def pause(request: Request) -> dict[str, Any]:
        data = await _body(request)
        job_id = data.get("id")
        if not isinstance(job_id, int):
            raise ValidationError("'id' must be an integer.")

        def paused() -> DownloadView:
            services.downloads.pause(None, job_id)
            return services.downloads.wait(job_id, timeout=MAX_WAIT_S)

        return {"download": download_json(await to_thread.run_sync(paused))}

    async def remove_model(request: Request) -> dict[str, Any]:
        data = await _body(request)

        def remove(name: str) -> dict[str, Any]:
            model = find_model(services.library, name)
            services.library.delete(None, str(model.path))
            return {"name": model.name, "size_bytes": model.size_bytes}

        return {"model": await to_thread.run_sync(remove, _text(data, "model"))}

    async def open_chat(request: Request) -> dict[str, Any]:
        data = await _body(request)
        profile = await to_thread.run_sync(services.profiles.find, _text(data, "profile"))
        return {"chat": chats.open(profile)}

    async def close_chat(request: Request) -> dict[str, Any]:
        chats.close(int(request.path_params["chat_id"]))
        return {"closed": True}

    async def turn(request: Request) -> Response:
        data = await _body(request)
        events = chats.turn(int(request.path_params["chat_id"]), _text(data, "text"))

        async def lines() -> AsyncIterator[bytes]:
            try:
                while True:
                    event = await to_thread.run_sync(next, events, None)
                    if event is None:
                        return
                    yield (json.dumps(event_json(event)) + "\n").encode()
            finally:
                # The terminal left (Ctrl-C): closing the turn ends the model's request.
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(events.close)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    for path, handler, method in (
        ("/servers", servers, "GET"),
        ("/servers/start", start_server, "POST"),
        ("/servers/wait", wait_server, "POST"),
        ("/servers/stop", stop_server, "POST"),
        ("/downloads", pull, "POST"),
        ("/downloads/wait", download, "POST"),
        ("/downloads/pause", pause, "POST"),
        ("/models/delete", remove_model, "POST"),
        ("/chats", open_chat, "POST"),
        ("/chats/{chat_id:int}/turn", turn, "POST"),
        ("/chats/{chat_id:int}", close_chat, "DELETE"),
    ):
        router.add_route(PREFIX + path, guarded(handler), methods=[method],
                         include_in_schema=False)

    async def unknown(request: Request) -> Response:
        if not request.scope.get("state", {}).get(_OK):
            return _error(401, "Not allowed.")
        return _error(404, f"No control route {request.method} {request.url.path}.")

    router.add_route(PREFIX + "/{rest:path}", unknown, methods=["GET", "POST", "DELETE"],
                     include_in_schema=False)
    return router

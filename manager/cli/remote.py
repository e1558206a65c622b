"""The CLI's way to a running dashboard: it owns the servers and the download jobs, so
`start`, `stop`, `run`, `pull`, `rm` and `ps` ask it (manager/api/control.py) instead of
acting beside it.

`find_dashboard` tells which: the data dir's lock says whether a dashboard runs
(instance.py), and the control file it wrote (0600) says where and with which token.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any

import httpx
import psutil

from manager.cli.instance import ControlCredential, holder, holder_pid, read_control
from manager.errors import Conflict, ManagerError, NotFound, PermissionDenied, ValidationError

log = logging.getLogger(__name__)

#: A dashboard holds the lock a while before it listens (it loads its services and
#: Gradio, ~40 s on a busy machine): connections are retried while its process lives,
#: for at most this long.
CONNECT_PATIENCE_S = 300.0
_KINDS: dict[int, type[ManagerError]] = {400: ValidationError, 403: PermissionDenied,
                                         404: NotFound, 409: Conflict}


class DashboardUnreachable(ManagerError):
    """A dashboard holds the data dir but does not answer."""


class Dashboard:
    """An HTTP client of one running dashboard's control API."""

    def __init__(self, credential: ControlCredential) -> None:
        self.credential = credential
        self._http = httpx.Client(
            base_url=credential.url,
            headers={"Authorization": f"Bearer {credential.token}"},
            timeout=httpx.Timeout(120.0, connect=5.0), trust_env=False)

    @property
    def label(self) -> str:
        return f"the dashboard at {self.credential.url} (pid {self.credential.pid})"

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
        """One request; a refusal raises the ManagerError kind its status stands for."""
        response = self._send(lambda: self._http.request(method, "/control" + path,
                                                         json=body))
        return _payload(response)

    def stream(self, path: str, body: Mapping[str, Any]
               ) -> Generator[dict[str, Any], None, None]:
        """JSON lines as they arrive; closing the generator ends the request."""
        request = self._http.build_request("POST", "/control" + path, json=body,
                                           timeout=httpx.Timeout(600.0, connect=5.0))
        response = self._send(lambda: self._http.send(request, stream=True))
        try:
            if response.status_code >= 400:
                response.read()
                _payload(response)
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)
        except httpx.HTTPError as exc:
            raise DashboardUnreachable(f"{self.label} stopped answering: {exc}") from exc
        finally:
            response.close()

    def _send(self, attempt: Any) -> httpx.Response:
        deadline = time.monotonic() + CONNECT_PATIENCE_S
        told = False
        while True:
            try:
                return attempt()
            except httpx.ConnectError as exc:
                if time.monotonic() > deadline or not psutil.pid_exists(self.credential.pid):
                    raise DashboardUnreachable(
                        f"{self.label} holds the data dir but does not answer ({exc}). If "
                        "it hangs, stop it (Ctrl-C in its terminal) and try again.") from exc
                if not told:
                    print(f"Waiting for {self.label} to answer (it is starting)...",
                          file=sys.stderr, flush=True)
                    told = True
                log.debug("dashboard not answering yet: %s", exc)
                time.sleep(0.25)  # it holds the lock while it loads; it listens soon
            except httpx.HTTPError as exc:
                raise DashboardUnreachable(f"{self.label} did not answer: {exc}") from exc


def _payload(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        kind = _KINDS.get(response.status_code, ManagerError)
        raise kind(message or f"The dashboard answered {response.status_code}: "
                   f"{response.text[:200]}")
    if not isinstance(data, dict):
        raise ManagerError(f"The dashboard's answer was not understood: {response.text[:200]}")
    return data


def find_dashboard(data_dir: Path) -> Dashboard | None:
    """The dashboard running on this data dir, or None when nothing holds it. Raises
    ManagerError when something else holds it (a restore, a check-tools run)."""
    busy = holder(data_dir)
    if busy is None:
        return None
    credential = read_control(data_dir)
    if credential is None or credential.pid != holder_pid(busy):
        raise Conflict(f"{data_dir} is in use by {busy}, which takes no commands. Wait "
                       "until it ends, then run this again.")
    return Dashboard(credential)

"""The one way tests make a gradio_client Client: with a generous timeout.

gradio_client's requests otherwise use httpx's default of 5 s, which a loaded machine
(the suite on 2 cores) exceeds now and then: a call then fails though nothing is wrong.
The timeout only guards against a hang; tests wait for what they need, not for a time."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from manager.api.login import SESSION_COOKIE
from manager.net import tls_context

if TYPE_CHECKING:
    from gradio_client import Client

#: Seconds a single request (or a pause in an event stream) may take.
CLIENT_TIMEOUT_S = 120.0


def gradio_client(url: str, *, cookie: str | None = None,
                  headers: dict[str, str] | None = None) -> Client:
    """A quiet client of the app at `url`, signed in with `cookie` (a session cookie's
    value) if given, sending `headers` too."""
    # Imported here: most test modules that import this helper use it in one test or two.
    import httpx
    from gradio_client import Client

    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    # ssl_verify goes to every httpx client and request it makes as `verify`: the process's
    # one TLS context instead of a CA bundle loaded for each (~30 ms of CPU; a client makes
    # several per call).
    return Client(url, verbose=False, headers=sent, ssl_verify=tls_context(),
                  httpx_kwargs={"timeout": httpx.Timeout(CLIENT_TIMEOUT_S)})


def close_without_waiting(clients: Iterable[Client]) -> None:
    """Close clients in the background. `Client.close()` asks the heartbeat thread to end
    and then joins it for up to 1 s, but the thread only sees the request at its stream's
    next line (or when the server stops), so each close waited out the whole second."""
    for client in clients:
        threading.Thread(target=client.close, name="gradio-client-close", daemon=True).start()

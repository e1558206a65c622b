"""The dashboard inline in a Jupyter notebook cell, signed in, with one call:

    from app import notebook
    notebook.show()                        # this kernel runs the dashboard, as the admin
    notebook.show(user="me@example.com", password="...")   # or as that account

`show()` starts the dashboard in the kernel's background (a uvicorn thread) unless one
already answers on the port, in which case it attaches to that one over HTTP (then the
account's password is needed). It returns an IPython `IFrame` (Gradio's own
`launch(inline=True)` shows an iframe the same way) whose address is a one-time sign-in
link (manager/accounts/login_codes.py): the dashboard exchanges it for a session cookie
and redirects to `/`, so the cell shows the signed-in dashboard, not the sign-in page.

The iframe's host is `localhost` by default: a notebook at http://localhost:8888 and the
dashboard at http://localhost:7860 are the same site for the browser, so the session
cookie (SameSite=Lax) is kept inside the iframe. A notebook opened at 127.0.0.1 wants
`url_host="127.0.0.1"`.

Who is signed in, when the kernel runs the dashboard: the account given (with its
password), else the first active administrator; with no account yet, `user` and
`password` create the administrator (as the first registration would). The kernel holds
the data dir like the CLI does, so it may act for its accounts as `mlx-manager users` may.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from manager.accounts.auth import User
from manager.cli.instance import hold_data_dir, remove_control, write_control
from manager.errors import AuthenticationFailed, ManagerError
from manager.net import port_is_free
from manager.services import Services
from manager.settings import DEFAULT_PORT, Settings

log = logging.getLogger(__name__)

WIDTH = "100%"
HEIGHT = 800
#: How long a dashboard started in the kernel may take to answer (Gradio's import is slow).
START_TIMEOUT_S = 120.0
LOOPBACK = ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost")


class NotebookError(ManagerError):
    """What `show()` could not do, and what to pass instead."""


@dataclass
class NotebookDashboard:
    """A dashboard this kernel runs: `show()` again for a new signed-in cell, `stop()`."""

    services: Services
    url: str  # as the browser reaches it (the iframe's host)
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _held: ExitStack = field(repr=False)

    def show(self, user: str | None = None, password: str | None = None, *,
             width: str | int = WIDTH, height: int = HEIGHT) -> Any:
        """An IFrame of the dashboard, signed in as `user` (default: the first admin)."""
        account = _account(self.services, user, password)
        code = self.services.login_codes.issue(account.id)
        log.info("notebook cell signed in as %s", account.email)
        return _frame(f"{self.url}/login/code?code={code}", width, height, self)

    def stop(self) -> None:
        """Stop the dashboard and the model servers it started; frees the port."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.services.close()
        self._held.close()


def show(user: str | None = None, password: str | None = None, *, port: int = DEFAULT_PORT,
         host: str = "127.0.0.1", data_dir: str | Path | None = None,
         url_host: str | None = None, width: str | int = WIDTH, height: int = HEIGHT) -> Any:
    """The dashboard in this cell, signed in. Starts it in the kernel if nothing answers
    on `port`, else attaches to the running one (then `user` and `password` are needed).
    The IFrame it returns has `.dashboard`: the NotebookDashboard this kernel runs (to
    `stop()` it), or None when it attached to another process's dashboard."""
    browser_host = url_host or ("localhost" if host in LOOPBACK else host)
    if not port_is_free(host, port):
        return attach(user, password, port=port, host=host, url_host=browser_host,
                      width=width, height=height)
    return start(port=port, host=host, data_dir=data_dir, url_host=browser_host).show(
        user, password, width=width, height=height)


def start(*, port: int = DEFAULT_PORT, host: str = "127.0.0.1",
          data_dir: str | Path | None = None, url_host: str = "localhost"
          ) -> NotebookDashboard:
    """Run the dashboard in this kernel's background (its own uvicorn thread)."""
    import uvicorn

    from app import create_app

    settings = Settings.from_env(data_dir=data_dir, host=host, port=port)
    held = ExitStack()
    # One dashboard per data dir, as `mlx-manager serve` does.
    held.enter_context(hold_data_dir(settings.data_dir, f"a notebook dashboard on port {port}"))
    try:
        # As `serve` does: `mlx-manager start/stop/ps ...` then act through this dashboard.
        reach = "127.0.0.1" if host in LOOPBACK else host
        control = write_control(settings.data_dir, f"http://{reach}:{port}")
        held.callback(remove_control, settings.data_dir, control)
        services = Services.create(settings)
        app = create_app(services, control.token)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=None,
                                               log_config=None, access_log=False,
                                               timeout_graceful_shutdown=2))
        thread = threading.Thread(target=server.run, name="notebook-dashboard", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # uvicorn says it started only through this flag
        if not server.started:
            services.close()
            raise NotebookError(f"The dashboard did not start on {host}:{port}; the kernel's "
                                "log says why. Pick another port with port=.")
    except BaseException:
        held.close()
        raise
    log.info("dashboard running in this kernel on http://%s:%s", url_host, port)
    return NotebookDashboard(services, f"http://{url_host}:{port}", server, thread, held)


def attach(user: str | None, password: str | None, *, port: int = DEFAULT_PORT,
           host: str = "127.0.0.1", url_host: str = "localhost", width: str | int = WIDTH,
           height: int = HEIGHT) -> Any:
    """Sign in to a dashboard another process runs and return its signed-in IFrame."""
    if not user or not password:
        raise NotebookError(f"A dashboard already runs on port {port}: pass user= and "
                            "password= to sign in to it (or port= for a new one here).")
    reach = "127.0.0.1" if host in LOOPBACK else host
    with httpx.Client(base_url=f"http://{reach}:{port}", timeout=30) as client:
        signed = client.post("/login", data={"email": user, "password": password,
                                             "next": "/"})
        if signed.status_code != 303:
            raise NotebookError(f"Signing in as {user} on port {port} failed (HTTP "
                                f"{signed.status_code}): check the email and password.")
        issued = client.post("/login/code")
        # The helper's own session is not needed any more.
        client.post("/logout")
    if issued.status_code != 200:
        raise NotebookError(f"The dashboard on port {port} gave no sign-in link (HTTP "
                            f"{issued.status_code}); is it an older version?")
    return _frame(f"http://{url_host}:{port}{issued.json()['path']}", width, height, None)


def _account(services: Services, email: str | None, password: str | None) -> User:
    """The account a cell signs in as (see the module's docstring)."""
    auth = services.auth
    if email is None:
        admins = [u for u in auth.all_users() if u.is_admin and u.is_active]
        if admins:
            return min(admins, key=lambda u: u.id)
        raise NotebookError("No account yet: pass user= and password= once to create the "
                            "administrator.")
    found = auth.get_by_email(email)
    if found is None and not auth.all_users():
        if not password:
            raise NotebookError("No account yet: pass password= too, to create the "
                                "administrator.")
        return auth.add_user(email, password, admin=True)
    if found is None:
        raise NotebookError(f"No account {email}. Register it on the sign-in page first.")
    if password is not None:
        try:
            return auth.authenticate(email, password, "notebook")
        except AuthenticationFailed as exc:
            raise NotebookError(exc.message) from exc
    if not found.is_active:
        raise NotebookError(f"{email} is not active (an administrator approves accounts).")
    return found


def _frame(url: str, width: str | int, height: int, dashboard: NotebookDashboard | None
           ) -> Any:
    from IPython.display import IFrame

    frame = IFrame(url, width=width, height=height)
    frame.dashboard = dashboard  # type: ignore[attr-defined] # the handle to stop it
    return frame


__all__ = ["NotebookDashboard", "NotebookError", "attach", "show", "start"]

"""The warm spare interpreter: a model-server process whose imports are already done.

The dashboard runs it as `python -m manager.servers.spare_main MODULE` (a fresh
interpreter, spawned, never forked: safe with Metal) in its own session. It imports the
server module (`mlx_lm.server`, `mlx_vlm.server`), writes `warm` on stdout, then waits
for ONE JSON line on stdin:

    {"argv": [python, "-m", module, ...args], "log": path, "env": {...}, "cwd": path,
     "spare_log": path, "copied": n}

("spare_log": the spare's own log, of which the dashboard put the first n bytes in the
server's log.)

It then does what `python -m module args` would have done: its stdout and stderr go to
the log, its environment, working directory, sys.argv and sys.path[0] become the
server's, and the module's `__main__` runs in this process (runpy, as `-m` does). The
end of stdin before that line (the dashboard closed it, or died) ends the spare at
once, even halfway through its imports.

A start can be handed over while the imports still run. The output moves to the
server's log as soon as the order arrives (right after a `handed` line on stdout), with
what the spare wrote to its own log since the dashboard copied it. A spare that ends
before that (its imports failed first) leaves the rest of its log to the dashboard,
which adds it to the server's log. Either way an import that fails after the hand-over
says why in the server's log, and `warm` is never written there.

Stdlib only, nothing from the dashboard: this module runs in the child. The server
module is imported by name so the dashboard's own import checks never see mlx here.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import runpy
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

#: The first line on stdout once the imports are done.
WARM = "warm"
#: On stdout right before the output moves to the server's log.
HANDED = "handed"


def preload(module: str) -> None:
    """Import what `python -m module` would import before serving. A package's
    `__main__` is left to runpy (importing it here would run it)."""
    importlib.import_module(module)
    if module == "mlx_lm":
        importlib.import_module("mlx_lm.cli")
        importlib.import_module("mlx_lm.server")


def _tell(word: str) -> None:
    """`word` to the dashboard on stdout: on a line of its own whatever an import printed,
    unbuffered (nothing of it is left behind to reach a server's log later). A dashboard
    that is gone (it keeps its servers) is no reason to end; stderr says so."""
    try:
        sys.stdout.flush()
        os.write(1, f"\n{word}\n".encode())
    except OSError as exc:
        sys.stderr.write(f"the spare could not tell the dashboard {word!r}: {exc}\n")


def _switch_output(order: Mapping[str, Any]) -> None:
    """Write to the server's log from now on, after what the spare's own log got since
    the dashboard copied it. `handed` on stdout first: from then on the dashboard leaves
    the spare's log to the spare (it adds that log's rest itself for a spare that ended
    before). Raises OSError when the server's log cannot be opened (nothing switched)."""
    spare_log = order.get("spare_log")
    unread: OSError | None = None
    try:
        old = os.open(str(spare_log), os.O_RDONLY) if spare_log else None
    except OSError as exc:
        old, unread = None, exc  # said in the server's log below
    fd = os.open(str(order["log"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _tell(HANDED)
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)  # the server's stdin, as for a spawned one
    os.dup2(null, 0)
    os.close(null)
    if unread is not None:
        sys.stderr.write(f"(the spare's own output after the hand-over is lost: {unread})\n")
    if old is None:
        return
    with os.fdopen(old, "rb") as earlier:
        earlier.seek(int(order.get("copied", 0)))
        rest = earlier.read()
    if rest:
        os.write(2, rest)


def _become(env: Mapping[str, str], cwd: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path[0] = os.getcwd()  # `python -m` puts the working directory first


def run(module: str, order: Mapping[str, Any]) -> None:
    """Turn into the server the order describes; returns when that server ends."""
    argv = [str(a) for a in order["argv"]]
    if argv[1:3] != ["-m", module]:
        raise SystemExit(f"spare for {module} was handed {argv[1:3]}")
    env = {str(k): str(v) for k, v in order["env"].items()}
    _become(env, str(order["cwd"]))
    sys.argv = [module, *argv[3:]]  # runpy sets argv[0] to the module's file
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class _Orders:
    """The one order, read on its own thread while the imports run. One lock orders the
    output switch, the `warm` line and a failed import's last words."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Mapping[str, Any]] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._handed = False  # output goes to the server's log
        self._ending = False  # the imports failed: no switch any more

    def read(self) -> None:
        line = sys.stdin.readline()
        if not line.strip():
            os._exit(0)  # stdin ended: the dashboard is gone or wants no spare
        with self._lock:
            if self._ending:
                return  # the dashboard adds what the spare's log got (no `handed`)
            try:
                order = json.loads(line)
                _switch_output(order)
            except (ValueError, OSError) as exc:
                sys.stderr.write(f"the spare could not take its order: {exc}\n")
                sys.stderr.flush()
                os._exit(2)
            self._handed = True
        self.queue.put(order)

    def say_warm(self) -> None:
        """`warm` to the dashboard, unless an order came first (stdout is the server's
        log then). One that is gone may still have sent its order (else the end of
        stdin ends the spare)."""
        with self._lock:
            if not self._handed:
                _tell(WARM)

    def failed(self) -> NoReturn:
        """The imports raised: say why where the output goes, after a switch under way
        (not halfway through one), and end."""
        with self._lock:
            self._ending = True
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(1)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m manager.servers.spare_main MODULE")
    module = sys.argv[1]
    orders = _Orders()
    threading.Thread(target=orders.read, daemon=True).start()
    try:
        preload(module)
    except BaseException:  # noqa: BLE001 - whatever the import raised, it is told
        orders.failed()
    orders.say_warm()
    run(module, orders.queue.get())


if __name__ == "__main__":
    main()

"""The warm spare interpreter: a model-server process whose imports are already done.

The dashboard runs it as `python -m manager.servers.spare_main MODULE` (a fresh
interpreter, spawned, never forked: safe with Metal) in its own session. It imports the
server module (`mlx_lm.server`, `mlx_vlm.server`), writes `warm` on stdout, then waits
for ONE JSON line on stdin:

    {"argv": [python, "-m", module, ...args], "log": path, "env": {...}, "cwd": path}

It then does what `python -m module args` would have done: its stdout and stderr go to
the log, its environment, working directory, sys.argv and sys.path[0] become the
server's, and the module's `__main__` runs in this process (runpy, as `-m` does). The
end of stdin before that line (the dashboard closed it, or died) ends the spare at
once, even halfway through its imports.

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
from collections.abc import Mapping
from typing import Any

#: The first line on stdout once the imports are done.
WARM = "warm"


def preload(module: str) -> None:
    """Import what `python -m module` would import before serving. A package's
    `__main__` is left to runpy (importing it here would run it)."""
    importlib.import_module(module)
    if module == "mlx_lm":
        importlib.import_module("mlx_lm.cli")
        importlib.import_module("mlx_lm.server")


def _redirect_output(log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)  # the server's stdin, as for a spawned one
    os.dup2(null, 0)
    os.close(null)


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
    _redirect_output(str(order["log"]))
    _become(env, str(order["cwd"]))
    sys.argv = [module, *argv[3:]]  # runpy sets argv[0] to the module's file
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _read_order(orders: queue.Queue[str]) -> None:
    line = sys.stdin.readline()
    if not line.strip():
        os._exit(0)  # stdin ended: the dashboard is gone or wants no spare; nothing to undo
    orders.put(line)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m manager.servers.spare_main MODULE")
    module = sys.argv[1]
    orders: queue.Queue[str] = queue.Queue(maxsize=1)
    threading.Thread(target=_read_order, args=(orders,), daemon=True).start()
    preload(module)
    sys.stdout.write(WARM + "\n")
    sys.stdout.flush()
    run(module, json.loads(orders.get()))


if __name__ == "__main__":
    main()

"""The program a distributed profile's preflight and host sampling run on each host.

Sent as text to `PYTHON - MODE PARAMS_JSON` (over ssh for remote hosts, as a subprocess
here), so it imports nothing of the manager and only the standard library (psutil when
that host has it). It prints one JSON object on stdout. It never imports mlx, except for
the jaccl check, which needs mlx's own answer (`mx.distributed.is_available("jaccl")`).

Modes:
- `preflight`: interpreter and package versions, memory, the model at a path, whether
  this host can bind the rank's address and reach rank 0's, ranks of ours still running,
  RDMA (jaccl).
- `sample`: memory and CPU of the host, cheap (what the Servers tile shows per host).
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf", ".bin")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _run(argv: list[str]) -> str | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20,
                              check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        sys.stderr.write(f"{argv[0]}: {exc}\n")
        return None


def _psutil() -> Any:
    """psutil where this host's Python has it, else None (this program runs without it)."""
    if importlib.util.find_spec("psutil") is None:
        return None
    return importlib.import_module("psutil")


def memory() -> dict[str, int | None]:
    """Total and available bytes: psutil, else /proc/meminfo (Linux), else sysctl and
    vm_stat (macOS: free + inactive + speculative + purgeable pages)."""
    psutil = _psutil()
    if psutil is not None:
        vm = psutil.virtual_memory()
        return {"total": int(vm.total), "available": int(vm.available)}
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        fields = {}
        for line in meminfo.read_text().splitlines():
            name, _, rest = line.partition(":")
            fields[name] = int(rest.split()[0]) * 1024
        return {"total": fields.get("MemTotal"), "available": fields.get("MemAvailable")}
    total = _run(["sysctl", "-n", "hw.memsize"])
    stat = _run(["vm_stat"]) or ""
    page = 16384
    pages = {}
    for line in stat.splitlines():
        if "page size of" in line:
            page = int(line.split("page size of")[1].split()[0])
        name, _, value = line.partition(":")
        if value.strip().rstrip(".").isdigit():
            pages[name.strip()] = int(value.strip().rstrip("."))
    free = sum(pages.get(k, 0) for k in ("Pages free", "Pages inactive", "Pages speculative",
                                        "Pages purgeable"))
    return {"total": int(total) if total and total.strip().isdigit() else None,
            "available": free * page if pages else None}


def cpu_percent() -> float | None:
    """Whole-host CPU use over a short window (0-100)."""
    psutil = _psutil()
    if psutil is not None:
        return float(psutil.cpu_percent(interval=0.2))
    stat = Path("/proc/stat")
    if stat.exists():
        def times() -> list[int]:
            return [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        first = times()
        time.sleep(0.2)  # the measuring window, as psutil's interval
        second = times()
        delta = [b - a for a, b in zip(first, second, strict=False)]
        idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
        return round(100.0 * (1 - idle / sum(delta)), 1) if sum(delta) else None
    load = os.getloadavg()[0]
    return round(min(100.0, 100.0 * load / (os.cpu_count() or 1)), 1)


def model_facts(path: str) -> dict[str, Any]:
    target = Path(path).expanduser()
    facts: dict[str, Any] = {"path": str(target), "exists": target.exists(),
                             "is_dir": target.is_dir(), "has_config": False,
                             "weights_bytes": 0}
    if target.is_dir():
        facts["has_config"] = (target / "config.json").is_file()
        facts["weights_bytes"] = sum(p.stat().st_size for p in target.iterdir()
                                     if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return facts


def can_bind(ip: str, port: int) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            return {"ok": False, "errno": name, "error": str(exc)}
    return {"ok": True}


def can_connect(ip: str, port: int) -> dict[str, Any]:
    """Can this host open a TCP connection to rank 0's address (the ranks' network)?"""
    try:
        with socket.create_connection((ip, port), timeout=5):
            return {"ok": True}
    except OSError as exc:
        return {"ok": False, "error": str(exc) or type(exc).__name__}


def _command(pid: int) -> str:
    return (_run(["ps", "-o", "command=", "-p", str(pid)]) or "").strip()


def stale_ranks(ranks_dir: str, running: list[str]) -> list[dict[str, Any]]:
    """Ranks of ours alive on this host that no running group owns (`running`: rank ids or
    group ids, a rank id being `<group id>-...`): each remote rank's shell leaves its pid
    in ~/<ranks_dir>/<rank id>/pid. Dirs of dead ranks are removed."""
    found: list[dict[str, Any]] = []
    root = Path.home() / ranks_dir
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        pid_file = entry / "pid"
        owned = any(entry.name == r or entry.name.startswith(r + "-") for r in running)
        if owned or not pid_file.is_file():
            continue
        text = pid_file.read_text().strip()
        pid = int(text) if text.isdigit() else 0
        command = _command(pid) if pid > 1 else ""
        if command:
            found.append({"pid": pid, "pgid": _pgid(pid), "rank_id": entry.name,
                          "command": command[:200]})
        else:
            shutil.rmtree(entry, ignore_errors=True)  # a rank that ended without a stop
    return found


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def jaccl_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"mlx_has_jaccl": None, "ibv_devices": None}
    try:
        # By name: this runs on the probed host, never in the dashboard (whose import
        # checks keep mlx out of the domain).
        mx = importlib.import_module("mlx.core")
        facts["mlx_has_jaccl"] = bool(mx.distributed.is_available("jaccl"))
    except Exception as exc:  # noqa: BLE001 - any import failure is an answer to report
        facts["mlx_error"] = f"{type(exc).__name__}: {exc}"
    facts["ibv_devices"] = _run(["ibv_devices"])
    return facts


def preflight(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable,
        "versions": {"mlx": _version("mlx"), "mlx-lm": _version("mlx-lm")},
        "system": platform.system(), "mac_ver": platform.mac_ver()[0],
        "machine": platform.machine(), "memory": memory(),
        "stale": stale_ranks(str(params.get("ranks_dir") or ".mlx-manager/ranks"),
                             list(params.get("running", []))),
    }
    if params.get("model"):
        out["model"] = model_facts(str(params["model"]))
    bind = params.get("bind")
    if bind:
        out["bind"] = can_bind(str(bind[0]), int(bind[1]))
    reach = params.get("reach")
    if reach:
        out["reach"] = can_connect(str(reach[0]), int(reach[1]))
    if params.get("jaccl"):
        out["jaccl"] = jaccl_facts()
    return out


def sample() -> dict[str, Any]:
    return {"memory": memory(), "cpu_percent": cpu_percent(), "cpu_count": os.cpu_count()}


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else ""
    params = json.loads(argv[2]) if len(argv) > 2 else {}
    if mode == "preflight":
        result = preflight(params)
    elif mode == "sample":
        result = sample()
    else:
        sys.stderr.write(f"unknown mode {mode!r}\n")
        return 2
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

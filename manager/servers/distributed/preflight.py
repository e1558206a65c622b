"""The preflight of a distributed profile: one line per host saying whether its rank can
start, and what to do when it cannot.

Each host runs probe_main.py with the interpreter its rank will run (over ssh for remote
hosts, directly here), in parallel, one round trip each. The answers are then judged
here: ssh reachable (key based, non-interactive), the same Python, mlx and mlx-lm as
rank 0, the model at the path the rank will load, free memory against the host's share of
the weights, the link backend usable (ring: the rank's address binds on that host; jaccl:
macOS 26.2+, mlx built with jaccl, RDMA devices enabled), and no rank of ours left
running there from an earlier start.
"""

from __future__ import annotations

import enum
import json
import logging
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manager.errors import ManagerError, ValidationError
from manager.servers.distributed import ssh
from manager.servers.distributed.hostfile import RankLaunch, launches
from manager.servers.distributed.spec import DistributedSpec, LinkBackend, RankHost
from manager.servers.process import build_command, model_of_cmdline
from manager.servers.profiles import Profile
from manager.units import format_bytes

log = logging.getLogger(__name__)

PROBE_SOURCE = Path(__file__).with_name("probe_main.py")
PROBE_TIMEOUT_S = 90.0
#: Room a rank needs beyond its share of the weights (KV cache, activations, runtime).
MEMORY_HEADROOM = 1.2
#: The oldest macOS with RDMA over Thunderbolt (jaccl).
JACCL_MIN_MACOS = (26, 2)
COMPARED = (("python", "Python"), ("mlx", "mlx"), ("mlx-lm", "mlx-lm"))


class Verdict(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


_ORDER = {Verdict.OK: 0, Verdict.WARN: 1, Verdict.FAIL: 2}


@dataclass(frozen=True)
class Finding:
    """One check on one host; `message` says what to do when it is not OK."""

    check: str
    verdict: Verdict
    message: str


@dataclass(frozen=True)
class HostResult:
    rank: int
    label: str
    findings: tuple[Finding, ...]

    @property
    def verdict(self) -> Verdict:
        return max((f.verdict for f in self.findings), key=_ORDER.__getitem__,
                   default=Verdict.OK)

    def finding(self, check: str) -> Finding | None:
        return next((f for f in self.findings if f.check == check), None)

    def line(self) -> str:
        """`rank 1 mac2: FAIL: problem; problem` or `rank 1 mac2: ok: fact, fact`."""
        shown = [f for f in self.findings if f.verdict is not Verdict.OK] or \
            list(self.findings)
        return f"rank {self.rank} {self.label}: {self.verdict.value.upper()}: " + \
            "; ".join(f.message for f in shown)


@dataclass(frozen=True)
class PreflightReport:
    hosts: tuple[HostResult, ...]

    @property
    def ok(self) -> bool:
        return all(h.verdict is not Verdict.FAIL for h in self.hosts)

    def lines(self) -> list[str]:
        return [h.line() for h in self.hosts]


# --- running the probe -----------------------------------------------------------------


def _probe_command(python: str, mode: str, params: dict[str, Any]) -> list[str]:
    return [python, "-", mode, json.dumps(params)]


def probe(host: RankHost, python: str, mode: str, params: dict[str, Any],
          options: ssh.SshOptions, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run probe_main.py on `host` with `python`; its JSON. Raises SshError (ssh failed)
    or ManagerError (no such interpreter, the probe failed)."""
    source = PROBE_SOURCE.read_text()
    command = _probe_command(python, mode, params)
    where = host.label
    if host.is_local:
        try:
            done = subprocess.run(command, input=source, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except FileNotFoundError:
            raise ManagerError(f"No Python at {python} on {where}.") from None
        except subprocess.TimeoutExpired:
            raise ManagerError(f"{where}: the check took over {timeout_s:.0f} s.") from None
    else:
        done = ssh.run_remote(host.ssh_target, shlex.join(command), options,
                              input_text=source, timeout_s=timeout_s)
    if done.returncode == 127:  # the shell's "command not found"
        raise ManagerError(
            f"No Python at {python} on {where}: create the environment there (python3 -m "
            "venv, then pip install the same mlx and mlx-lm), and name its interpreter in "
            "that host's line (python=/path/to/venv/bin/python).")
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise ManagerError(f"{python} on {where} could not run the check "
                           f"(exit {done.returncode}: {tail[0]}).")
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        log.warning("probe on %s printed no JSON: %r", where, done.stdout[-300:])
        raise ManagerError(f"{python} on {where} answered the check with something that is "
                           "not JSON: is it a Python 3 interpreter?") from None
    return result


def _params(spec: DistributedSpec, launch: RankLaunch, options: ssh.SshOptions,
            running: Sequence[str], reach: tuple[str, int] | None) -> dict[str, Any]:
    rank = launch.rank
    model = model_of_cmdline(list(launch.argv))
    params = {"model": model, "bind": [launch.host.ip, launch.host.port(rank, spec.base_port)],
              "jaccl": spec.backend is LinkBackend.JACCL, "running": list(running),
              "ranks_dir": options.ranks_dir}
    if reach is not None and not launch.host.is_local:
        params["reach"] = list(reach)
    return params


@contextmanager
def _rank0_listener(spec: DistributedSpec) -> Iterator[tuple[str, int] | None]:
    """A listening socket on rank 0's address (another port than the rank's, which its own
    check binds) for the other hosts to connect to: can they reach this machine over the
    ranks' network? None when that address is not this machine's (rank 0's line says so)."""
    ip = spec.hosts[0].ip
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, 0))
            sock.listen(16)  # the kernel completes the handshakes; nothing is read
        except OSError as exc:
            log.info("preflight cannot listen on rank 0's address %s: %s", ip, exc)
            yield None
            return
        yield ip, int(sock.getsockname()[1])


def run_preflight(spec: DistributedSpec, launches: Sequence[RankLaunch],
                  options: ssh.SshOptions, *, running: Iterable[str] = ()) -> PreflightReport:
    """Probe every host at once, then judge each against rank 0. `running`: ids of the
    groups (or ranks) running now: their ranks are not stale."""
    running_ids = tuple(running)

    with _rank0_listener(spec) as reach:
        def one(launch: RankLaunch) -> dict[str, Any] | ManagerError:
            try:
                return probe(launch.host, launch.argv[0], "preflight",
                             _params(spec, launch, options, running_ids, reach), options)
            except ManagerError as exc:
                log.info("preflight of rank %d on %s: %s", launch.rank, launch.host.label,
                         exc.message)
                return exc

        with ThreadPoolExecutor(max_workers=max(1, len(launches))) as pool:
            answers = list(pool.map(one, launches))
    reference = answers[0] if isinstance(answers[0], dict) else None
    weights = _weights(answers)
    return PreflightReport(hosts=tuple(
        HostResult(rank=launch.rank, label=launch.host.label,
                   findings=judge(spec, launch, answer, reference, weights, options))
        for launch, answer in zip(launches, answers, strict=True)))


def _weights(answers: Sequence[dict[str, Any] | ManagerError]) -> int | None:
    sizes = [int(a.get("model", {}).get("weights_bytes") or 0) for a in answers
             if isinstance(a, dict)]
    return max(sizes) if sizes and max(sizes) > 0 else None


# --- judging the answers -----------------------------------------------------------------


def judge(spec: DistributedSpec, launch: RankLaunch, answer: dict[str, Any] | ManagerError,
          reference: dict[str, Any] | None, weights: int | None,
          options: ssh.SshOptions) -> tuple[Finding, ...]:
    """The findings for one host, from its probe's answer (or the error it ended with)."""
    if isinstance(answer, ssh.SshError):
        return (Finding("ssh", Verdict.FAIL, answer.message),)
    if isinstance(answer, ManagerError):
        return (Finding("python", Verdict.FAIL, answer.message),)
    findings = [Finding("ssh", Verdict.OK, "this machine" if launch.host.is_local
                        else "ssh ok")]
    findings.append(_versions(launch, answer, reference))
    findings.append(_model(launch, answer))
    findings.append(_memory(spec, answer, weights))
    findings.append(_backend(spec, launch, answer))
    if "reach" in answer:
        findings.append(_reach(spec, answer["reach"]))
    findings.append(_stale(launch, answer, options))
    return tuple(findings)


def _versions(launch: RankLaunch, answer: dict[str, Any],
              reference: dict[str, Any] | None) -> Finding:
    mine = {"python": answer.get("python"), **answer.get("versions", {})}
    if reference is None:
        return Finding("versions", Verdict.WARN, "versions not compared: rank 0 could not "
                       "be checked (see its line)")
    theirs = {"python": reference.get("python"), **reference.get("versions", {})}
    for key, label in COMPARED[1:]:
        if not mine.get(key):
            return Finding("versions", Verdict.FAIL,
                           f"{label} is not installed for {launch.argv[0]} there: install "
                           f"{label} {theirs.get(key)} (as on rank 0) in it, or point the "
                           "hosts line at the environment that has it "
                           "(python=/path/to/venv/bin/python)")
    different = [f"{label} {mine.get(key)} (rank 0 has {theirs.get(key)})"
                 for key, label in COMPARED if mine.get(key) != theirs.get(key)]
    if different:
        pins = " ".join(f"{label}=={theirs.get(key)}" for key, label in COMPARED[1:])
        return Finding("versions", Verdict.FAIL,
                       "different versions: " + ", ".join(different) + ". Ranks must run the "
                       f"same versions: `{launch.argv[0]} -m pip install {pins}` there"
                       + (" (and the same Python version)" if mine.get("python") !=
                          theirs.get("python") else ""))
    return Finding("versions", Verdict.OK, "Python {python}, mlx {mlx}, mlx-lm {lm}".format(
        python=mine.get("python"), mlx=mine.get("mlx"), lm=mine.get("mlx-lm")))


def _model(launch: RankLaunch, answer: dict[str, Any]) -> Finding:
    model = answer.get("model") or {}
    path = model.get("path") or model_of_cmdline(list(launch.argv))
    if not model.get("exists"):
        return Finding("model", Verdict.FAIL,
                       f"no model at {path}: copy the model folder there (e.g. `rsync -a` "
                       "it over ssh), or put that host's own path in its hosts line")
    if not model.get("is_dir") or not model.get("has_config"):
        return Finding("model", Verdict.FAIL,
                       f"{path} is not a model folder (no config.json): point the hosts "
                       "line at the folder that holds config.json and the weights")
    if not model.get("weights_bytes"):
        return Finding("model", Verdict.FAIL,
                       f"{path} has no weight files (*.safetensors): the copy is incomplete; "
                       "copy it again")
    return Finding("model", Verdict.OK,
                   f"model {format_bytes(int(model['weights_bytes']))} at {path}")


def _memory(spec: DistributedSpec, answer: dict[str, Any], weights: int | None) -> Finding:
    available = (answer.get("memory") or {}).get("available")
    if weights is None or available is None:
        return Finding("memory", Verdict.WARN,
                       "memory not compared: " + ("the model size is unknown" if weights is None
                                                  else "free memory is unknown on this host"))
    share = weights / spec.size
    need = share * MEMORY_HEADROOM
    text = (f"its 1/{spec.size} share of {format_bytes(weights)} of weights is "
            f"{format_bytes(share)}, {format_bytes(int(available))} free")
    if available < share:
        return Finding("memory", Verdict.FAIL, text + ": it will run out of memory while "
                       "sharding. Close other apps there, add a host, or use a smaller "
                       "quantization")
    if available < need:
        return Finding("memory", Verdict.WARN, text + ": little room left for the KV cache; "
                       "long prompts may run out of memory")
    return Finding("memory", Verdict.OK, text)


def _backend(spec: DistributedSpec, launch: RankLaunch, answer: dict[str, Any]) -> Finding:
    if spec.backend is LinkBackend.JACCL:
        facts = answer.get("jaccl") or {}
        wanted = [d for d in launch.host.rdma if d]
        problems = jaccl_problems(str(answer.get("system")), str(answer.get("mac_ver") or ""),
                                  facts.get("mlx_has_jaccl"), facts.get("ibv_devices"), wanted)
        if problems:
            return Finding("backend", Verdict.FAIL, "jaccl: " + " ".join(problems))
        return Finding("backend", Verdict.OK, "jaccl: RDMA devices " + ", ".join(wanted))
    endpoint = spec.endpoint(launch.rank)
    bind = answer.get("bind") or {}
    if bind.get("ok"):
        return Finding("backend", Verdict.OK, f"ring: {endpoint} free")
    if bind.get("errno") == "EADDRNOTAVAIL":
        return Finding("backend", Verdict.FAIL,
                       f"ring: {launch.host.ip} is not an address of this host: use the IP "
                       "of its Thunderbolt bridge or Ethernet interface (on a Mac: "
                       "`ipconfig getifaddr bridge0` or `en0`)")
    if bind.get("errno") == "EADDRINUSE":
        return Finding("backend", Verdict.FAIL,
                       f"ring: port {endpoint} is taken on this host (a stale rank, or another "
                       "program): stop it, or change the profile's base port")
    return Finding("backend", Verdict.FAIL,
                   f"ring: cannot listen on {endpoint} ({bind.get('error', 'unknown error')})")


def _reach(spec: DistributedSpec, reach: dict[str, Any]) -> Finding:
    ip = spec.hosts[0].ip
    if reach.get("ok"):
        return Finding("reach", Verdict.OK, f"reaches rank 0 at {ip}")
    return Finding("reach", Verdict.FAIL,
                   f"cannot reach rank 0 at {ip} ({reach.get('error', 'no answer')}): the "
                   "ranks connect to each other at the addresses of the hosts lines. Put both "
                   "machines on the same network (or Thunderbolt bridge), check rank 0's "
                   "address, and let Python accept incoming connections in this Mac's "
                   "firewall (System Settings > Network > Firewall)")


def jaccl_problems(system: str, mac_ver: str, mlx_has_jaccl: bool | None,
                   ibv_devices: str | None, wanted: Sequence[str]) -> list[str]:
    """Why jaccl cannot run on a host, from what mlx's own launcher checks (`ibv_devices`
    listing rdma_* devices) plus the OS and mlx build; empty when it can."""
    if system != "Darwin":
        return [f"this host runs {system}; jaccl (RDMA over Thunderbolt 5) needs macOS "
                f"{'.'.join(map(str, JACCL_MIN_MACOS))} or later. Use the ring backend."]
    problems = []
    if _version_tuple(mac_ver) < JACCL_MIN_MACOS:
        problems.append(f"macOS {mac_ver or 'unknown'} is too old: jaccl needs macOS "
                        f"{'.'.join(map(str, JACCL_MIN_MACOS))} or later; update macOS, or use "
                        "the ring backend.")
    if mlx_has_jaccl is False:
        problems.append("this mlx is built without jaccl: install a current mlx from PyPI "
                        "(pip install -U mlx).")
    elif mlx_has_jaccl is None:
        problems.append("mlx could not be imported to ask whether it has jaccl.")
    devices = [d for d in (ibv_devices or "").split() if d.startswith("rdma_")]
    if not devices:
        problems.append("no RDMA device is enabled: start this Mac in recovery mode, run "
                        "`rdma_ctl enable` in Terminal, restart, then check with "
                        "`ibv_devices`.")
    else:
        missing = [d for d in wanted if d not in devices]
        if missing:
            problems.append(f"RDMA device {', '.join(missing)} is not on this host (it has "
                            f"{', '.join(devices)}): check the Thunderbolt cable and port, and "
                            "the rdma= list of its hosts line.")
    return problems


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or (0,)


def _stale(launch: RankLaunch, answer: dict[str, Any], options: ssh.SshOptions) -> Finding:
    stale = answer.get("stale") or []
    if not stale:
        return Finding("stale", Verdict.OK, "no stale rank")
    first = stale[0]
    pgid = first.get("pgid") or first.get("pid")
    how = (f"`kill -TERM -- -{pgid}`" if launch.host.is_local else
           f"`ssh {launch.host.ssh_target} kill -TERM -- -{pgid}`")
    more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
    return Finding("stale", Verdict.FAIL,
                   f"a rank of an earlier start is still running here: pid {first.get('pid')} "
                   f"({first.get('rank_id')}){more}. It holds memory and ports: stop it with "
                   f"{how}")


def preflight_profile(profile: Profile, model_dir: str, options: ssh.SshOptions, *,
                      remote_python: str, python: str = sys.executable,
                      running: Iterable[str] = ()) -> PreflightReport:
    """The preflight of a distributed profile, for the ranks its start would launch
    (`remote_python`: the interpreter the group launcher runs on other hosts)."""
    dist = _distributed(profile)
    return run_preflight(dist, profile_launches(profile, model_dir, remote_python, python),
                         options, running=running)


def profile_launches(profile: Profile, model_dir: str, remote_python: str,
                     python: str = sys.executable) -> tuple[RankLaunch, ...]:
    """The ranks a start of this distributed profile would launch."""
    argv = build_command(profile, model_dir, python)
    return launches(_distributed(profile), argv, "preflight", remote_python)


def _distributed(profile: Profile) -> DistributedSpec:
    if profile.distributed is None:
        raise ValidationError(f"{profile.name} runs on one machine: the preflight checks "
                              "the hosts of a distributed profile.", "distributed")
    return profile.distributed


def lacks_model(result: HostResult) -> bool:
    """True when the host's only model problem is that there is none at its path (what a
    copy fixes)."""
    found = result.finding("model")
    return found is not None and found.verdict is Verdict.FAIL and \
        found.message.startswith("no model at ")

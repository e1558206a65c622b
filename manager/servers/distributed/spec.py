"""What a distributed profile is: the hosts its ranks run on, the link between them and how
the model is split. Pure: no processes, no ssh, no files.

A profile's server runs as one `python -m mlx_lm server` per host (a "rank"), joined by
MLX's own distributed engine. Rank 0 answers HTTP for the dashboard, so it runs on this
machine; the other ranks run wherever the user points (an ssh target each).
"""

from __future__ import annotations

import enum
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from manager.errors import ValidationError

#: The form field that every message about a distributed spec points at.
FIELD = "distributed"
#: ssh targets that mean "this machine": the rank is spawned directly, without ssh.
LOCAL_TARGETS = ("", "local")
MIN_HOSTS, MAX_HOSTS = 2, 16
MIN_PORT, MAX_PORT = 1024, 65535
DEFAULT_BASE_PORT = 32323  # mlx.launch's default starting port


class LinkBackend(str, enum.Enum):
    """MLX's distributed backend between the ranks."""

    #: TCP sockets in a ring (any network, including 127.0.0.1).
    RING = "ring"
    #: RDMA over Thunderbolt 5 (macOS 26.2+, RDMA enabled in recovery mode).
    JACCL = "jaccl"


class Parallel(str, enum.Enum):
    """How mlx_lm splits the model: tensor parallel (mlx_lm's default) or by layers."""

    TENSOR = "tensor"
    PIPELINE = "pipeline"


def _choice(kind: type[enum.Enum], value: object, what: str) -> Any:
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).strip().lower())
    except ValueError:
        names = " or ".join(repr(k.value) for k in kind)
        raise ValidationError(f"Unknown {what} {value!r}: use {names}.", FIELD) from None


@dataclass(frozen=True)
class RankHost:
    """One rank's machine.

    `ssh_target` is what `ssh` understands (an alias of the user's ssh config, `user@host`);
    "" or "local" is this machine. `address` is the IP the ranks use to reach this host
    (optionally `ip:port`; without a port, rank i listens on base_port + i). `model_path`
    is where the model lives on that host ("" = the profile's model, same path as here).
    `rdma` (jaccl only) names this host's RDMA device towards each rank, in rank order,
    "" for itself. `python` is the interpreter a remote rank runs ("" = `python3` on that
    host's PATH); local ranks run the dashboard's own.
    """

    ssh_target: str
    address: str
    model_path: str = ""
    rdma: tuple[str, ...] = ()
    python: str = ""

    @property
    def is_local(self) -> bool:
        return self.ssh_target.strip().lower() in LOCAL_TARGETS

    @property
    def label(self) -> str:
        """How messages name this host."""
        return "this machine" if self.is_local else self.ssh_target

    @property
    def ip(self) -> str:
        host, _ = _split_address(self.address)
        return host

    def port(self, rank: int, base_port: int) -> int:
        _, port = _split_address(self.address)
        return port if port is not None else base_port + rank

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ssh_target": self.ssh_target, "address": self.address}
        if self.model_path:
            out["model_path"] = self.model_path
        if self.rdma:
            out["rdma"] = list(self.rdma)
        if self.python:
            out["python"] = self.python
        return out

    @classmethod
    def from_json(cls, data: Any) -> RankHost:
        if not isinstance(data, dict):
            raise ValidationError("Each host must be an object with ssh_target and address.",
                                  FIELD)
        rdma = data.get("rdma") or []
        return cls(ssh_target=str(data.get("ssh_target") or ""),
                   address=str(data.get("address") or ""),
                   model_path=str(data.get("model_path") or ""),
                   rdma=tuple(str(d or "") for d in rdma),
                   python=str(data.get("python") or ""))


@dataclass(frozen=True)
class DistributedSpec:
    """The ranks of one profile, rank 0 first. Build it with `DistributedSpec.checked` (or
    `from_json`/`parse_hosts`), which validate; the constructor alone does not."""

    hosts: tuple[RankHost, ...]
    backend: LinkBackend = LinkBackend.RING
    parallel: Parallel = Parallel.TENSOR
    base_port: int = DEFAULT_BASE_PORT

    @property
    def size(self) -> int:
        return len(self.hosts)

    def endpoint(self, rank: int) -> str:
        """`ip:port` where rank `rank` listens for its peers."""
        host = self.hosts[rank]
        return f"{_bracket(host.ip)}:{host.port(rank, self.base_port)}"

    @property
    def local_ranks(self) -> int:
        """How many ranks run on this machine (their share of the model is held here)."""
        return sum(1 for h in self.hosts if h.is_local)

    @property
    def remote_hosts(self) -> tuple[RankHost, ...]:
        return tuple(h for h in self.hosts if not h.is_local)

    @classmethod
    def checked(cls, hosts: Iterable[RankHost], backend: LinkBackend | str = LinkBackend.RING,
                parallel: Parallel | str = Parallel.TENSOR,
                base_port: int | str | None = DEFAULT_BASE_PORT) -> DistributedSpec:
        """A valid spec, or a ValidationError (field "distributed") saying what to fix."""
        hosts = tuple(hosts)
        link = _choice(LinkBackend, backend, "link backend")
        split = _choice(Parallel, parallel, "parallel mode")
        port = _base_port(base_port)
        if len(hosts) < MIN_HOSTS:
            raise ValidationError(
                f"A distributed profile needs at least {MIN_HOSTS} hosts, one per line "
                "(\"ssh_target address [model_path]\"); the first is this machine ('local').",
                FIELD)
        if len(hosts) > MAX_HOSTS:
            raise ValidationError(f"At most {MAX_HOSTS} hosts are supported.", FIELD)
        if port + len(hosts) - 1 > MAX_PORT:
            raise ValidationError(f"Base port {port} leaves no room for {len(hosts)} ranks: "
                                  f"use a port below {MAX_PORT - len(hosts)}.", FIELD)
        cleaned = tuple(_checked_host(rank, h, len(hosts), link) for rank, h in
                        enumerate(hosts))
        if not cleaned[0].is_local:
            raise ValidationError(
                "The first host is rank 0, which answers the dashboard's requests: make it "
                "this machine (ssh target 'local') and list the other machines after it.",
                FIELD)
        spec = cls(hosts=cleaned, backend=link, parallel=split, base_port=port)
        seen: dict[str, int] = {}
        for rank in range(spec.size):
            endpoint = spec.endpoint(rank)
            if endpoint in seen:
                raise ValidationError(
                    f"Ranks {seen[endpoint]} and {rank} would both listen on {endpoint}: "
                    "give each host its own address or its own port (address ip:port).",
                    FIELD)
            seen[endpoint] = rank
        return spec

    # --- the profile store's JSON ---------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"hosts": [h.to_json() for h in self.hosts],
                           "backend": self.backend.value, "parallel": self.parallel.value,
                           "base_port": self.base_port}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> DistributedSpec | None:
        """The stored spec, or None for a profile on one machine ("" or NULL)."""
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            raise ValidationError("The stored distributed settings are not valid JSON; "
                                  "edit the profile and save its hosts again.", FIELD) from None
        if not isinstance(data, dict) or not isinstance(data.get("hosts"), list):
            raise ValidationError("The stored distributed settings have no host list; edit "
                                  "the profile and save its hosts again.", FIELD)
        return cls.checked([RankHost.from_json(h) for h in data["hosts"]],
                           data.get("backend", LinkBackend.RING.value),
                           data.get("parallel", Parallel.TENSOR.value),
                           data.get("base_port", DEFAULT_BASE_PORT))

    # --- the Profiles form's text -----------------------------------------------------------

    def hosts_text(self) -> str:
        """The hosts as the form shows them, one per line."""
        lines = []
        for h in self.hosts:
            parts = [h.ssh_target or "local", h.address]
            if h.model_path or h.rdma or h.python:
                parts.append(h.model_path or "-")
            if h.python:
                parts.append("python=" + h.python)
            if h.rdma:
                parts.append("rdma=" + ",".join(d or "-" for d in h.rdma))
            lines.append(" ".join(parts))
        return "\n".join(lines)


def parse_hosts(text: str) -> tuple[RankHost, ...]:
    """The form's hosts box: one host per line, `ssh_target address [model_path]
    [python=PATH] [rdma=dev,dev]`; blank lines and `#` comments are skipped. `-` as
    model_path means "the profile's model"."""
    hosts = []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        rdma: tuple[str, ...] = ()
        python = ""
        while words[-1].startswith(("rdma=", "python=")):
            key, _, value = words.pop().partition("=")
            if key == "rdma":
                rdma = tuple("" if d in ("", "-") else d for d in value.split(","))
            else:
                python = value
        if len(words) not in (2, 3):
            raise ValidationError(
                f"Line {number} ({line!r}): write \"ssh_target address [model_path]\", e.g. "
                "\"local 192.168.1.10\" or \"mac2 192.168.1.11 /Users/me/models/qwen\".",
                FIELD)
        model_path = words[2] if len(words) == 3 and words[2] != "-" else ""
        hosts.append(RankHost(ssh_target=words[0], address=words[1], model_path=model_path,
                              rdma=rdma, python=python))
    return tuple(hosts)


# --- helpers -----------------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, int | None]:
    """`ip`, `ip:port`, `[v6]:port` or a bare IPv6 address -> (ip, port or None)."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port) if port.isdigit() else None
    return text, None


def _bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _base_port(value: int | str | None) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_BASE_PORT
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValidationError(f"Base port must be a whole number, not {value!r}.",
                              FIELD) from None
    if not MIN_PORT <= port <= MAX_PORT:
        raise ValidationError(f"Base port must be between {MIN_PORT} and {MAX_PORT}.", FIELD)
    return port


def _checked_host(rank: int, host: RankHost, size: int, link: LinkBackend) -> RankHost:
    target = host.ssh_target.strip()
    if target.startswith("-") or any(c.isspace() for c in target):
        raise ValidationError(f"Rank {rank}: {target!r} is not an ssh target (a host name "
                              "or alias from your ssh config, or 'local').", FIELD)
    address = host.address.strip()
    ip, port = _split_address(address)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValidationError(
            f"Rank {rank} ({target or 'local'}): {address!r} is not an IP address. The ranks "
            "connect by IP (e.g. 192.168.1.11, or 127.0.0.1 to try on one machine).",
            FIELD) from None
    if port is None and ipaddress.ip_address(ip).version == 4 and ":" in address:
        raise ValidationError(f"Rank {rank}: the port in {address!r} must be a number.", FIELD)
    if port is not None and not MIN_PORT <= port <= MAX_PORT:
        raise ValidationError(f"Rank {rank}: port {port} must be between {MIN_PORT} and "
                              f"{MAX_PORT}.", FIELD)
    rdma = host.rdma
    if link is LinkBackend.JACCL:
        if len(rdma) != size or rdma[rank] or not all(d for i, d in enumerate(rdma)
                                                      if i != rank):
            raise ValidationError(
                f"Rank {rank} ({target or 'local'}): the jaccl backend needs this host's RDMA "
                f"device towards each of the {size} ranks, in rank order, with '-' for itself "
                "(e.g. \"rdma=-,rdma_en3\"). `ibv_devices` on that Mac lists them.", FIELD)
    elif rdma:
        rdma = ()  # only jaccl reads them; the ring backend links over the addresses
    model_path = host.model_path.strip()
    local = target.lower() in LOCAL_TARGETS
    python = "" if local else host.python.strip()
    return RankHost(ssh_target="local" if local else target, address=address,
                    model_path=model_path, rdma=rdma, python=python)

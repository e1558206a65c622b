"""Server profiles: what to serve and how (model, backend, port, sampling defaults).

A profile is validated as a whole before it is stored; each problem raises a
ValidationError naming the form field, so the tab can show it next to that field.

Who may do what (checked here through accounts.permissions, whatever the page shows):
- any active user may create a profile and duplicate one (the copy is theirs);
- a profile can be edited or deleted by an admin and by the user who created it;
- only an admin may bind a profile to anything but loopback. Such a server is reachable
  from other machines, so it gets its own API key (`server_key`, kept in SQLite, never
  logged or put on argv) where its backend has one; a backend without one is refused;
- `actor=None` is the machine owner at the command line (`mlx-manager profiles ...`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from manager.accounts.auth import User
from manager.accounts.permissions import Action, Owned, allowed, require
from manager.clock import utc_now
from manager.errors import Conflict, NotFound, PermissionDenied, ValidationError
from manager.models.capabilities import Capabilities, detect
from manager.models.hf_cache import cached_repo_ids, resolve_model
from manager.net import port_is_free
from manager.read_cache import Checked, ReadCache
from manager.servers.backends import Backend
from manager.servers.distributed.spec import DistributedSpec
from manager.store import Store, inserted_id

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: Ports suggested for new profiles: mlx_lm's own default first.
SUGGESTED_PORTS = range(8080, 9000)
MIN_PORT, MAX_PORT = 1024, 65535
MAX_NAME = 64
MAX_DESCRIPTION = 4000
MAX_SYSTEM_PROMPT = 32000
MAX_TOKENS_LIMIT = 1_000_000
MAX_IDLE_MINUTES = 7 * 24 * 60


#: The longest answer each server writes when neither the profile nor the request sets
#: max_tokens (mlx_lm's `--max-tokens` default; mlx_vlm's DEFAULT_MAX_TOKENS).
SERVER_MAX_TOKENS: dict[Backend, int] = {Backend.MLX_LM: 512, Backend.MLX_VLM: 2048}


@dataclass(frozen=True)
class ProfileSpec:
    """The editable fields of a profile. None means "not set" (the server's default);
    backend None means "auto" and port None means "suggest a free one"."""

    name: str
    model: str
    description: str = ""
    backend: Backend | None = None
    host: str = DEFAULT_HOST
    port: int | None = None
    context_length: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    #: Passed to the chat template (enable_thinking); None leaves the model's default.
    thinking: bool | None = None
    #: Applied to every chat and gateway request that has no system message (PRO-02).
    system_prompt: str = ""
    auto_start: bool = False
    auto_restart: bool = False
    #: Stop the server after this many minutes without requests; None or 0 = never.
    idle_timeout_minutes: int | None = None
    #: Served by several ranks (hosts) through MLX's distributed engine; None = one process.
    distributed: DistributedSpec | None = None


@dataclass(frozen=True)
class Profile:
    id: int
    name: str
    model: str
    backend: Backend
    host: str
    port: int
    description: str = ""
    context_length: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    thinking: bool | None = None
    system_prompt: str = ""
    auto_start: bool = False
    auto_restart: bool = False
    idle_timeout_minutes: int | None = None
    distributed: DistributedSpec | None = None
    owner_id: int | None = None
    created_at: str = ""
    updated_at: str = ""
    #: The model server's own API key (profiles reachable from the network); a secret.
    server_key: str | None = field(default=None, repr=False)

    @property
    def owners(self) -> Owned:
        return Owned.by(self.owner_id)

    def server_env(self) -> dict[str, str]:
        """Environment for the model server: its API key, if it has one. Passed by
        environment, not argv, so it never shows in `ps`, the log header or SQLite."""
        env_name = self.backend.api_key_env
        return {env_name: self.server_key} if env_name and self.server_key else {}

    def auth_headers(self) -> dict[str, str]:
        """Headers for the manager's own requests to this profile's server."""
        return {"Authorization": f"Bearer {self.server_key}"} if self.server_key else {}

    def spec(self) -> ProfileSpec:
        """The editable fields, e.g. to change one with dataclasses.replace()."""
        names = {f.name for f in fields(ProfileSpec)}
        return ProfileSpec(**{k: v for k, v in self.__dict__.items() if k in names})

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Profile:
        thinking = row["thinking"]
        return cls(
            id=row["id"], name=row["name"], model=row["model"], backend=Backend(row["backend"]),
            host=row["host"], port=row["port"], description=row["description"],
            context_length=row["context_length"], max_tokens=row["max_tokens"],
            temperature=row["temperature"], top_p=row["top_p"],
            thinking=None if thinking is None else bool(thinking),
            system_prompt=row["system_prompt"], auto_start=bool(row["auto_start"]),
            auto_restart=bool(row["auto_restart"]),
            idle_timeout_minutes=row["idle_timeout_minutes"], owner_id=row["owner_id"],
            created_at=row["created_at"], updated_at=row["updated_at"],
            server_key=row.get("server_key"),
            distributed=DistributedSpec.from_json(row.get("distributed")),
        )


# --- pure helpers ----------------------------------------------------------------------


def backend_for(caps: Capabilities) -> Backend:
    return Backend.MLX_VLM if caps.multimodal else Backend.MLX_LM


def _check_range(value: float | None, low: float, high: float, field: str, label: str) -> None:
    if value is not None and not low <= value <= high:
        raise ValidationError(f"{label} must be between {low:g} and {high:g}.", field)


def is_loopback(host: str) -> bool:
    """Reachable only from this machine: localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_host(host: str) -> str:
    host = (host or "").strip() or DEFAULT_HOST
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValidationError(
            f"{host!r} is not an IP address. Use 127.0.0.1 (this machine only) or 0.0.0.0 "
            "(the LAN).", "host") from None
    return host


def validate(
    spec: ProfileSpec,
    *,
    others: Iterable[Profile],
    hub_cache: Path,
    current_port: int | None = None,
    is_free: Callable[[str, int], bool] = port_is_free,
) -> tuple[ProfileSpec, Capabilities]:
    """The spec with defaults filled in (backend, port, host), or a ValidationError.

    `others` are the stored profiles except the one being edited; `current_port` is
    that profile's port (its own running server may hold it).
    """
    others = list(others)
    name = " ".join((spec.name or "").split())
    if not name:
        raise ValidationError("Give the profile a name.", "name")
    if len(name) > MAX_NAME:
        raise ValidationError(f"Keep the name under {MAX_NAME} characters.", "name")
    if any(p.name.casefold() == name.casefold() for p in others):
        raise ValidationError(f"A profile named {name!r} already exists.", "name")
    if len(spec.description or "") > MAX_DESCRIPTION:
        raise ValidationError(f"Keep the description under {MAX_DESCRIPTION} characters.",
                              "description")
    if len(spec.system_prompt or "") > MAX_SYSTEM_PROMPT:
        raise ValidationError(f"Keep the system prompt under {MAX_SYSTEM_PROMPT} characters.",
                              "system_prompt")
    model_dir = resolve_model(spec.model, hub_cache)
    caps = detect(model_dir)
    host = _check_host(spec.host)
    port = spec.port
    if port is None:
        port = suggest_port(host, others, is_free=is_free)
    if not MIN_PORT <= port <= MAX_PORT:
        raise ValidationError(f"Port must be between {MIN_PORT} and {MAX_PORT}.", "port")
    taken = next((p for p in others if p.port == port), None)
    if taken is not None:
        raise ValidationError(f"Port {port} is already used by profile {taken.name!r}.", "port")
    if port != current_port and not is_free(host, port):
        raise ValidationError(
            f"Port {port} is in use by another program on this machine. Pick another port "
            f"(for example {suggest_port(host, others, is_free=is_free)}).", "port")
    if spec.context_length is not None:
        if spec.context_length < 1:
            raise ValidationError("Context length must be a positive number of tokens.",
                                  "context_length")
        if caps.context_length is not None and spec.context_length > caps.context_length:
            raise ValidationError(
                f"Context length {spec.context_length:,} is above this model's maximum of "
                f"{caps.context_length:,} tokens.", "context_length")
    if spec.max_tokens is not None and not 1 <= spec.max_tokens <= MAX_TOKENS_LIMIT:
        raise ValidationError(f"Max tokens must be between 1 and {MAX_TOKENS_LIMIT:,}.",
                              "max_tokens")
    _check_range(spec.temperature, 0.0, 2.0, "temperature", "Temperature")
    _check_range(spec.top_p, 0.0, 1.0, "top_p", "Top-p")
    thinking = spec.thinking
    if thinking is not None and not caps.thinking:
        if thinking:
            raise ValidationError("This model has no thinking mode to switch on.", "thinking")
        thinking = None  # "off" on a model without thinking changes nothing
    idle = spec.idle_timeout_minutes or None
    if idle is not None and not 0 < idle <= MAX_IDLE_MINUTES:
        raise ValidationError(f"Idle timeout must be between 1 and {MAX_IDLE_MINUTES} minutes "
                              "(or empty for never).", "idle_timeout_minutes")
    _check_distributed(spec, caps.multimodal, host, port)
    cleaned = replace(
        spec, name=name, model=_stored_model(spec.model), host=host, port=port,
        backend=spec.backend or backend_for(caps), thinking=thinking,
        idle_timeout_minutes=idle, description=spec.description or "",
        system_prompt=spec.system_prompt or "",
    )
    return cleaned, caps


def _check_distributed(spec: ProfileSpec, multimodal: bool, host: str, port: int) -> None:
    dist = spec.distributed
    if dist is None:
        return
    if spec.backend is Backend.MLX_VLM or (spec.backend is None and multimodal):
        raise ValidationError("Only text models (mlx_lm) can be served across several hosts; "
                              "mlx_vlm has no distributed mode.", "distributed")
    http = f"{host}:{port}"
    if any(dist.endpoint(rank) == http for rank in range(dist.size)):
        raise ValidationError(f"The ranks' base port {dist.base_port} overlaps the server's "
                              f"port {port}: pick a base port away from it.", "distributed")


def suggest_port(
    host: str = DEFAULT_HOST,
    others: Iterable[Profile] = (),
    *,
    is_free: Callable[[str, int], bool] = port_is_free,
) -> int:
    """The first port from 8080 that no profile uses and nothing listens on."""
    used = {p.port for p in others}
    for port in SUGGESTED_PORTS:
        if port not in used and is_free(host, port):
            return port
    raise ValidationError("No free port between 8080 and 8999; enter one yourself.", "port")


def _stored_model(model: str) -> str:
    """A repo id as typed; a folder as an absolute path (the dashboard, the CLI and a
    service each run in a folder of their own). Symlinks are kept as typed."""
    path = Path(model.strip()).expanduser()
    return os.path.normpath(path.absolute()) if path.is_dir() else model.strip()


def copy_name(name: str, taken: Iterable[str]) -> str:
    """"X (copy)", then "X (copy 2)", ... the first name not taken (case-insensitive)."""
    lowered = {t.casefold() for t in taken}
    base = re.sub(r" \(copy(?: \d+)?\)$", "", name)
    for n in range(1, 1000):
        suffix = " (copy)" if n == 1 else f" (copy {n})"
        # A long name is shortened to make room: the suffix is what tells copies apart.
        candidate = base[:MAX_NAME - len(suffix)].rstrip() + suffix
        if candidate.casefold() not in lowered:
            return candidate
    raise Conflict("Too many copies of this profile already.")


# --- storage -----------------------------------------------------------------------------

_COLUMNS = ("name", "description", "model", "backend", "host", "port", "context_length",
            "max_tokens", "temperature", "top_p", "thinking", "system_prompt", "auto_start",
            "auto_restart", "idle_timeout_minutes", "distributed")
_ACTIVE_SERVER_STATES = ("starting", "ready", "stopping")


def _row_values(spec: ProfileSpec) -> list[Any]:
    values = {
        **spec.__dict__,
        "backend": spec.backend.value if spec.backend else None,
        "thinking": None if spec.thinking is None else int(spec.thinking),
        "auto_start": int(spec.auto_start),
        "auto_restart": int(spec.auto_restart),
        "distributed": spec.distributed.to_json() if spec.distributed else None,
    }
    return [values[c] for c in _COLUMNS]


class ProfileService:
    """CRUD over the profiles table. Reads go to SQLite each time, so changes made by
    `mlx-manager profiles ...` show up in a running dashboard."""

    def __init__(self, store: Store, *, hub_cache: Path,
                 is_free: Callable[[str, int], bool] = port_is_free) -> None:
        self._store = store
        self.hub_cache = hub_cache  # Settings.hub_cache: where repo ids are looked up
        self._is_free = is_free
        self._all: ReadCache[tuple[Profile, ...]] = ReadCache(store)  # list()'s rows

    def resolve_model(self, model: str) -> Path:
        """The folder of a profile's model: a path, or a repo id in the hub cache."""
        return resolve_model(model, self.hub_cache)

    def cached_repo_ids(self) -> list[str]:
        return cached_repo_ids(self.hub_cache)

    def list(self, checked: Checked | None = None) -> list[Profile]:
        """Every profile. `checked`: the database version this thread saw earlier in the
        same request (read_cache.ReadCache.get)."""
        # The gateway resolves a model name on every request: read on a long-lived
        # connection and kept until the database changes (read_cache).
        return list(self._all.get(None, self._read_all, checked=checked))

    def _read_all(self) -> tuple[Profile, ...]:
        rows = self._store.read().query("SELECT * FROM profiles ORDER BY name COLLATE NOCASE")
        return tuple(Profile.from_row(r) for r in rows)

    def get(self, profile_id: int) -> Profile:
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM profiles WHERE id = ?", [profile_id]))
        if not rows:
            raise NotFound("That profile no longer exists.")
        return Profile.from_row(rows[0])

    def get_by_name(self, name: str) -> Profile:
        with self._store.reading() as db:
            rows = list(db.query("SELECT * FROM profiles WHERE name = ? COLLATE NOCASE",
                                 [" ".join((name or "").split())]))
        if not rows:
            raise NotFound(f"No profile named {name!r}.")
        return Profile.from_row(rows[0])

    def find(self, ref: int | str) -> Profile:
        """By id (an int or digits) or by name."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdecimal()
                                    and ref.strip().isascii()):
            try:
                return self.get(int(ref))
            except NotFound:
                if isinstance(ref, int):
                    raise
        return self.get_by_name(str(ref))

    def suggest_port(self, host: str = DEFAULT_HOST) -> int:
        return suggest_port(host, self.list(), is_free=self._is_free)

    def create(self, actor: User | None, spec: ProfileSpec) -> Profile:
        require(actor, Action.PROFILE_CREATE)
        cleaned, _ = validate(spec, others=self.list(), hub_cache=self.hub_cache,
                              is_free=self._is_free)
        _require_remote_rights(actor, cleaned)
        key = _network_key(actor, cleaned, None)
        now = utc_now()
        placeholders = ", ".join("?" for _ in _COLUMNS)
        try:
            with self._store.connect(immediate=True) as db:
                cursor = db.execute(
                    f"INSERT INTO profiles ({', '.join(_COLUMNS)}, server_key, owner_id, "
                    f"created_at, updated_at) VALUES ({placeholders}, ?, ?, ?, ?)",
                    [*_row_values(cleaned), key, actor.id if actor else None, now, now],
                )
                profile_id = inserted_id(cursor)
        except sqlite3.IntegrityError as exc:
            log.info("profile %r not created: %s", cleaned.name, exc)
            raise ValidationError(f"A profile named {cleaned.name!r} already exists.",
                                  "name") from exc
        log.info("profile %r created by %s", cleaned.name, actor.email if actor else "cli")
        return self.get(profile_id)

    def update(self, actor: User | None, profile_id: int, spec: ProfileSpec) -> Profile:
        current = self.get(profile_id)
        self._require_owner(actor, Action.PROFILE_EDIT, current)
        others = [p for p in self.list() if p.id != profile_id]
        cleaned, _ = validate(spec, others=others, hub_cache=self.hub_cache,
                              current_port=current.port,
                              is_free=self._is_free)
        _require_remote_rights(actor, cleaned)
        key = _network_key(actor, cleaned, current.server_key)
        assignments = ", ".join(f"{c} = ?" for c in _COLUMNS)
        try:
            with self._store.connect(immediate=True) as db:
                db.execute(f"UPDATE profiles SET {assignments}, server_key = ?, updated_at = ? "
                           "WHERE id = ?", [*_row_values(cleaned), key, utc_now(), profile_id])
        except sqlite3.IntegrityError as exc:
            log.info("profile %s not updated: %s", profile_id, exc)
            raise ValidationError(f"A profile named {cleaned.name!r} already exists.",
                                  "name") from exc
        log.info("profile %r updated by %s", cleaned.name, actor.email if actor else "cli")
        return self.get(profile_id)

    def duplicate(self, actor: User | None, profile_id: int, name: str | None = None
                  ) -> Profile:
        source = self.get(profile_id)
        profiles = self.list()
        new_name = name or copy_name(source.name, [p.name for p in profiles])
        # Anyone may copy a LAN profile; the copy stays on this machine unless an admin
        # makes it (a copy gets its own server key, never the original's).
        host = source.host if allowed(actor, Action.BIND_NETWORK) else DEFAULT_HOST
        spec = replace(source.spec(), name=new_name, auto_start=False, host=host,
                       port=suggest_port(host, profiles, is_free=self._is_free))
        return self.create(actor, spec)

    def delete(self, actor: User | None, profile_id: int) -> None:
        profile = self.get(profile_id)
        self._require_owner(actor, Action.PROFILE_DELETE, profile)
        marks = ", ".join("?" for _ in _ACTIVE_SERVER_STATES)
        with self._store.connect(immediate=True) as db:
            running = list(db.query(
                f"SELECT state FROM servers WHERE profile_id = ? AND state IN ({marks})",
                [profile_id, *_ACTIVE_SERVER_STATES]))
            if running:
                raise Conflict(f"The server of {profile.name!r} is {running[0]['state']}: "
                               "stop it before deleting the profile.")
            db.execute("DELETE FROM profiles WHERE id = ?", [profile_id])
        log.info("profile %r deleted by %s", profile.name, actor.email if actor else "cli")

    @staticmethod
    def _require_owner(actor: User | None, action: Action, profile: Profile) -> None:
        if actor is not None and actor.is_active and not allowed(actor, action, profile.owners):
            # The rule is permissions'; the message points at the way out.
            raise PermissionDenied(
                f"Only an admin or the person who created {profile.name!r} can change it. "
                "Duplicate it to make your own version.")
        require(actor, action, profile.owners)


def unguarded_exposure(profile: Profile) -> str | None:
    """Why this profile must not start as it is, or None. A profile saved before network
    binds needed a server key (or edited in SQLite) could still name 0.0.0.0 without one;
    starting it would put a model server without any check on the network."""
    if is_loopback(profile.host) or profile.server_key:
        return None
    return (f"{profile.name!r} is bound to {profile.host} but its server has no API key, so "
            "anyone on the network could use it. Set its host to 127.0.0.1 (other machines "
            "reach it through this dashboard's API with a key), or have an admin save it "
            "again with a vision backend, which gets its own key.")


def _require_remote_rights(actor: User | None, cleaned: ProfileSpec) -> None:
    """Ranks on other machines run through the dashboard's own ssh keys, and ranks on a
    LAN address listen there without any key: both are an administrator's call."""
    dist = cleaned.distributed
    if dist is None or allowed(actor, Action.BIND_NETWORK):
        return
    if any(not h.is_local or not is_loopback(h.address) for h in dist.hosts):
        raise PermissionDenied(
            "Only an administrator may save a profile with ranks on other machines or on a "
            "network address: the dashboard reaches those hosts with its own ssh keys. Keep "
            "every host local on 127.0.0.1, or ask an administrator.")


def _network_key(actor: User | None, cleaned: ProfileSpec, current: str | None) -> str | None:
    """The server key a profile keeps after this change. A key, once made, is kept even
    if the profile returns to loopback: a running server may still expect it."""
    if is_loopback(cleaned.host):
        return current
    require(actor, Action.BIND_NETWORK)
    backend = cleaned.backend or Backend.MLX_LM
    if backend.api_key_env is None:
        raise ValidationError(
            f"{backend.value}'s server has no API key option, so binding it to {cleaned.host} "
            "would let anyone on the network use it. Keep 127.0.0.1: other machines reach "
            "it through this dashboard's API with a key.", "host")
    return current or secrets.token_urlsafe(32)


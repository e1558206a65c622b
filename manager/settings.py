"""Settings: one frozen object built from CLI flags and environment variables."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from manager.errors import ManagerError, ValidationError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DATA_DIR_ENV = "MLX_MANAGER_DATA_DIR"
SESSION_DAYS = 7
#: Largest request body the gateway (/v1) reads; larger ones get 413 unread.
GATEWAY_MAX_BODY_BYTES = 32 * 1024 * 1024
#: Gateway requests one API key may have in flight at once, and start per minute.
GATEWAY_CONCURRENT_PER_KEY = 8
GATEWAY_REQUESTS_PER_MINUTE = 120
#: Largest image (decoded) the gateway passes to a model server.
GATEWAY_MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Days a stored Responses API answer is kept for previous_response_id (0: none stored).
RESPONSES_RETENTION_DAYS = 30


#: Gateway limits an admin sets in the environment (MLX_MANAGER_GATEWAY_...).
_GATEWAY_ENV = {
    "MLX_MANAGER_GATEWAY_MAX_BODY_BYTES": "gateway_max_body_bytes",
    "MLX_MANAGER_GATEWAY_CONCURRENT_PER_KEY": "gateway_concurrent_per_key",
    "MLX_MANAGER_GATEWAY_REQUESTS_PER_MINUTE": "gateway_requests_per_minute",
    "MLX_MANAGER_GATEWAY_MAX_IMAGE_BYTES": "gateway_max_image_bytes",
    "MLX_MANAGER_RESPONSES_RETENTION_DAYS": "responses_retention_days",
}
REMOTE_IMAGES_ENV = "MLX_MANAGER_GATEWAY_REMOTE_IMAGES"
WARM_SPARE_ENV = "MLX_MANAGER_WARM_SPARE"
SERVER_NICE_ENV = "MLX_MANAGER_SERVER_NICE"
#: Nice steps model servers run below the dashboard by default (0: its own priority;
#: manager/servers/cpu_priority.py says why); MAX_NICE is POSIX's lowest priority.
SERVER_NICE = 5
MAX_NICE = 19
SSH_CONFIG_ENV = "MLX_MANAGER_SSH_CONFIG"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _whole_number(env: Mapping[str, str], name: str, field_name: str,
                  what: str = "a whole number") -> dict[str, Any]:
    """{field_name: the variable `name` as an int}, {} when it is not set."""
    value = env.get(name, "").strip()
    if not value:
        return {}
    try:
        return {field_name: int(value)}
    except ValueError:
        raise ValidationError(f"{name} must be {what}, not {value!r}.", field_name) from None


def _gateway_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field_name in _GATEWAY_ENV.items():
        out.update(_whole_number(env, name, field_name))
    remote = env.get(REMOTE_IMAGES_ENV, "").strip().lower()
    if remote:
        out["gateway_remote_images"] = remote in _TRUE
    return out


def _warm_spare_env(env: Mapping[str, str]) -> dict[str, Any]:
    value = env.get(WARM_SPARE_ENV, "").strip().lower()
    if not value:
        return {}
    if value not in _TRUE + _FALSE:
        raise ValidationError(f"{WARM_SPARE_ENV} must be 1 or 0 (on or off), not {value!r}.",
                              "warm_spare")
    return {"warm_spare": value in _TRUE}


def _ssh_config_env(env: Mapping[str, str]) -> dict[str, Any]:
    value = env.get(SSH_CONFIG_ENV, "").strip()
    return {"ssh_config": Path(value).expanduser()} if value else {}


def normalize_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """'https://Example.com:8443/' -> 'https://example.com:8443'; refuses anything that is
    not an http(s) origin (a path, a wildcard), so a typo cannot open CORS wide."""
    cleaned = []
    for origin in origins:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or \
                parts.path not in ("", "/") or parts.query or "*" in parts.netloc:
            raise ValidationError(f"{origin!r} is not an origin like https://host:port.",
                                  "cors_origins")
        cleaned.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(cleaned)


def _default_data_dir() -> Path:
    # data/ beside app.py, so `make run` keeps everything inside the checkout.
    return Path(__file__).resolve().parent.parent / "data"


def hub_cache_from_env(env: Mapping[str, str]) -> Path:
    """The HF hub cache huggingface_hub uses with this environment."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


@dataclass(frozen=True)
class Settings:
    """Everything the services need to know about where and how to run."""

    data_dir: Path = field(default_factory=_default_data_dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False
    session_days: int = SESSION_DAYS
    # Secure cookies only make sense behind HTTPS; off by default for the LAN use case.
    secure_cookies: bool = False
    # Hugging Face: None means HF_ENDPOINT / HF_TOKEN / HF_HUB_CACHE (or HF_HOME) from the
    # environment, else huggingface_hub's defaults, so other tools share the same cache.
    hf_endpoint: str | None = None
    hf_token: str | None = field(default=None, repr=False)
    hf_cache_dir: Path | None = None
    max_downloads: int = 2
    # Gateway limits (/v1): body size, per-API-key concurrency and rate.
    gateway_max_body_bytes: int = GATEWAY_MAX_BODY_BYTES
    gateway_concurrent_per_key: int = GATEWAY_CONCURRENT_PER_KEY
    gateway_requests_per_minute: int = GATEWAY_REQUESTS_PER_MINUTE
    gateway_max_image_bytes: int = GATEWAY_MAX_IMAGE_BYTES
    # Image URLs (http/https) in gateway requests are fetched by the gateway itself
    # only when an admin turns this on, and never from loopback or private addresses.
    gateway_remote_images: bool = False
    # Responses API answers stored (store: true) are kept this many days; 0 stores none.
    responses_retention_days: int = RESPONSES_RETENTION_DAYS
    # Browser origins (scheme://host[:port]) allowed to call the dashboard and /v1 from
    # their pages (CORS); none unless an admin lists them.
    cors_origins: tuple[str, ...] = ()
    # Account registrations accepted from one client address per hour.
    registrations_per_hour: int = 5
    # Keep a warm spare interpreter (mlx_lm/mlx_vlm already imported) for the next
    # server start. None: not set here, so the Admin tab's saved choice, else on.
    warm_spare: bool | None = None
    # Model servers run this many nice steps below the dashboard (0: at its priority), so
    # the gateway and the pages wait less for a core while a server decodes flat out.
    server_nice: int = SERVER_NICE
    # Leave the model servers running when the dashboard stops (the next start adopts
    # them); the service mode does. By default Ctrl-C stops them too.
    keep_servers: bool = False
    # The ssh client config (`ssh -F`) used to reach the hosts of distributed profiles;
    # None: ssh's own (~/.ssh/config).
    ssh_config: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment, with explicit overrides (CLI flags) on top.

        Overrides whose value is None are ignored so argparse defaults can be passed as-is.
        """
        env = os.environ if environ is None else environ
        base = cls()
        if env.get(DATA_DIR_ENV):
            base = replace(base, data_dir=Path(env[DATA_DIR_ENV]))
        base = replace(base, **_gateway_env(env), **_warm_spare_env(env),
                       **_whole_number(env, SERVER_NICE_ENV, "server_nice",
                                       f"a whole number from 0 to {MAX_NICE}"),
                       **_ssh_config_env(env))
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(str(given["data_dir"]))
        if "ssh_config" in given:
            given["ssh_config"] = Path(str(given["ssh_config"])).expanduser()
        origins = given.get("cors_origins")
        if isinstance(origins, (list, tuple)):
            given["cors_origins"] = normalize_origins(str(o) for o in origins)
        settings = replace(base, **given)
        if not 0 <= settings.server_nice <= MAX_NICE:
            raise ValidationError(f"The model servers' nice steps (--server-nice, "
                                  f"{SERVER_NICE_ENV}) must be from 0 to {MAX_NICE}, not "
                                  f"{settings.server_nice}.", "server_nice")
        return replace(settings, data_dir=settings.data_dir.expanduser().resolve())

    @property
    def hub_cache(self) -> Path:
        """THE Hugging Face hub cache: downloads go there, repo ids resolve there and
        model servers get it as HF_HUB_CACHE. `hf_cache_dir` when set, else what
        huggingface_hub itself would use: HF_HUB_CACHE, else HF_HOME/hub, else
        $XDG_CACHE_HOME (or ~/.cache)/huggingface/hub (read when asked)."""
        if self.hf_cache_dir is not None:
            return Path(self.hf_cache_dir).expanduser()
        return hub_cache_from_env(os.environ)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "manager.db"

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.logs_dir, self.uploads_dir):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise unusable_data_dir(self.data_dir, path, exc) from exc


def unusable_data_dir(data_dir: Path, path: Path, exc: Exception) -> ManagerError:
    """A data dir (or a folder or file in it) that cannot be made or written, said in one
    line with what to do (`exc`: an OSError, or SQLite's error opening the database)."""
    where = getattr(exc, "filename", None) or path  # the one that failed (a mkdir's parent)
    return ManagerError(
        f"The data dir {data_dir} cannot be used: {where}: "
        f"{getattr(exc, 'strerror', None) or exc}. Pick another with --data-dir "
        f"(or {DATA_DIR_ENV}), or make it writable.")

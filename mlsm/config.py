"""Settings: one object, four sources.

Precedence, highest first: command-line flags, ``MLSM_<KEY>`` environment variables, the
TOML file ``$XDG_CONFIG_HOME/mlsm/config.toml`` (or ``MLSM_CONFIG``), then the defaults
below. Every key is documented in ``docs/configuration.md``; a bad value raises
:class:`~mlsm.errors.ConfigError` naming the key and where it came from.

The login (master URL and token) is kept apart in ``credentials.toml`` (mode 0600) beside
the config file, because ``mlsm login`` writes it while people edit ``config.toml``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from mlsm.atomicfile import write_atomic
from mlsm.errors import ConfigError

DEFAULT_PORT = 8765
Positive = Annotated[float, Meta(gt=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]


def xdg_config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def xdg_data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def xdg_cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def config_dir() -> Path:
    return xdg_config_home() / "mlsm"


def config_file() -> Path:
    return (
        Path(os.environ["MLSM_CONFIG"])
        if os.environ.get("MLSM_CONFIG")
        else config_dir() / "config.toml"
    )


def credentials_file() -> Path:
    return config_file().parent / "credentials.toml"


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every setting of mlsm. Keep ``docs/configuration.md`` in step with this class."""

    # --- client side (CLI, dashboard)
    url: str = ""  # master URL; "" = the embedded local service
    token: str = ""  # API or session token
    ca_file: str = ""  # CA bundle to verify the master's certificate
    fingerprint: str = ""  # pinned SHA-256 fingerprint of the master's certificate
    # --- master
    host: str = "127.0.0.1"
    port: Port = DEFAULT_PORT
    data_dir: str = ""  # "" = $XDG_DATA_HOME/mlsm
    database_url: str = ""  # "" = sqlite at <data_dir>/mlsm.db
    tls_cert: str = ""
    tls_key: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON
    session_ttl: Positive = 7 * 24 * 3600.0  # seconds a login session lasts
    login_attempts_per_minute: Annotated[int, Meta(ge=1)] = 10
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 1 << 20  # JSON API bodies
    agent_max_body_bytes: Annotated[int, Meta(ge=1024)] = 4 << 20  # MessagePack bodies
    heartbeat_interval: Positive = 2.0
    node_lease: Positive = 30.0  # no heartbeat this long -> offline
    stale_after: Positive = 6.0  # no heartbeat this long -> stale
    history_retention_days: Positive = 30.0
    fairshare_half_life_hours: Positive = 24.0
    schedule_tick: Positive = 1.0
    schedule_change_driven_jobs: Annotated[int, Meta(ge=0)] = 2000  # see docs/configuration.md
    max_connections: Annotated[int, Meta(ge=0)] = 0  # 0 = derived from the descriptor limit
    header_timeout: Positive = 10.0  # seconds to send a request head (from connect or 1st byte)
    body_timeout: Positive = 30.0  # seconds a request body may stall
    bulk_idle_timeout: Positive = 60.0  # seconds a relay pipe may go without a byte
    bulk_ticket_ttl: Positive = 60.0  # seconds a direct-transfer ticket is good for
    keepalive_timeout: Annotated[int, Meta(ge=1)] = 5  # seconds an idle connection is kept
    allow_plain_http: bool = False  # let secrets cross plain HTTP to a non-loopback master
    trusted_proxies: list[str] = []  # addresses/CIDRs whose X-Forwarded-For/Forwarded count
    code_store_bytes: Annotated[int, Meta(ge=1 << 20)] = 20 << 30  # the master's code store
    metrics_token: str = ""  # "" = /metrics open; else it needs Authorization: Bearer <this>
    # --- master: events and notifications
    event_retention_days: Annotated[float, Meta(ge=0)] = 90.0  # 0 = keep every event
    notify_retry_base: Positive = 5.0  # seconds before a failed delivery's first retry
    notify_max_attempts: Annotated[int, Meta(ge=1, le=100)] = 8  # then it is given up
    notify_concurrency: Annotated[int, Meta(ge=1, le=1000)] = 8  # deliveries in flight at once
    smtp_host: str = ""  # "" = no email
    smtp_port: Port = 587
    smtp_starttls: bool = True
    smtp_user: str = ""
    smtp_password: str = ""  # better given as MLSM_SMTP_PASSWORD or in smtp_password_file
    smtp_password_file: str = ""
    smtp_from: str = "mlsm@localhost"
    session_time_limit: Positive = 4 * 3600.0  # seconds a session runs when it names no --time
    channel_open_timeout: Positive = 15.0  # seconds an agent has to dial a shell or forward
    # --- agent
    master: str = ""  # URL the agent dials
    join_token: str = ""
    node_name: str = ""  # "" = hostname
    agent_data_dir: str = ""  # "" = <data_dir>/agent
    dataset_roots: list[str] = []
    import_roots: list[str] = []  # trees an admin may import from as datasets of other nodes
    labels: dict[str, str] = {}
    simulate_gpus: str = ""  # e.g. "2xA100-80GB"
    default_unix_user: str = ""  # account for jobs of users with no account here (agent as root)
    single_user: bool = False  # every job runs as the agent's own account (a one-person machine)
    code_cache_bytes: Annotated[int, Meta(ge=1 << 20)] = 10 << 30  # the agent's code cache
    bulk_direct: bool = True  # the agent serves and uses direct transfers between agents

    def __post_init__(self) -> None:
        for entry in self.trusted_proxies:
            import ipaddress

            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None

    # ---------------------------------------------------------------- derived
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else xdg_data_home() / "mlsm"

    @property
    def agent_data_path(self) -> Path:
        return (
            Path(self.agent_data_dir).expanduser()
            if self.agent_data_dir
            else self.data_path / "agent"
        )

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_path / 'mlsm.db'}"


_FIELDS = set(Settings.__struct_fields__)
# List settings from the environment and their separators (addresses hold ':', paths ',').
_LIST_KEYS = {"dataset_roots": os.pathsep, "import_roots": os.pathsep, "trusted_proxies": ","}
_DICT_KEYS = {"labels"}


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _FIELDS:
        raw = environ.get(f"MLSM_{key.upper()}")
        if raw is None or raw == "":
            continue
        if key in _LIST_KEYS:
            out[key] = [p.strip() for p in raw.split(_LIST_KEYS[key]) if p.strip()]
        elif key in _DICT_KEYS:
            out[key] = dict(
                _split_kv(item, f"MLSM_{key.upper()}") for item in raw.split(",") if item
            )
        else:
            out[key] = raw
    return out


def _split_kv(item: str, where: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"{where}: expected key=value, got {item!r}")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _from_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    # [agent] and [master] tables are allowed for readability; their keys are flat settings.
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and k in ("agent", "master", "client"):
            flat.update(v)
        else:
            flat[k] = v
    unknown = sorted(set(flat) - _FIELDS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}")
    return flat


def _validate(layer: dict[str, Any], source: str) -> None:
    for key, value in layer.items():
        try:
            msgspec.convert({key: value}, Settings, strict=False)
        except msgspec.ValidationError as exc:
            from mlsm.wire.explain import explain

            why = explain(str(exc))[1].split(": ", 1)[-1]
            raise ConfigError(f"setting {key!r} from {source}: {why}") from None


def load_settings(
    overrides: dict[str, Any] | None = None,
    *,
    environ: dict[str, str] | None = None,
    use_file: bool = True,
) -> Settings:
    """Merge defaults < config file < environment < overrides (flags)."""
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    if use_file:
        path = Path(env["MLSM_CONFIG"]) if env.get("MLSM_CONFIG") else config_file()
        layer = _from_file(path)
        _validate(layer, str(path))
        merged.update(layer)
        creds = _from_file(path.parent / "credentials.toml")
        merged.update(
            {k: v for k, v in creds.items() if k in ("url", "token", "ca_file", "fingerprint")}
        )
    layer = _from_env(env)
    _validate(layer, "environment (MLSM_*)")
    merged.update(layer)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None and v != () and v != []}
    unknown = sorted(set(flags) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    _validate(flags, "command line")
    merged.update(flags)
    try:
        return msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:  # pragma: no cover - layers validated above
        raise ConfigError(f"settings: {exc}") from None


def save_credentials(url: str, token: str, *, ca_file: str = "", fingerprint: str = "") -> Path:
    """Write the login to ``credentials.toml`` with mode 0600 (created that way, never wider)."""
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [f"url = {_toml_str(url)}", f"token = {_toml_str(token)}"]
    if ca_file:
        lines.append(f"ca_file = {_toml_str(ca_file)}")
    if fingerprint:
        lines.append(f"fingerprint = {_toml_str(fingerprint)}")
    write_atomic(path, "\n".join(lines) + "\n", 0o600)
    return path


def clear_credentials() -> None:
    credentials_file().unlink(missing_ok=True)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

"""Typed configuration, read once and passed explicitly.

Precedence, highest first: command-line flag > environment (``RBEE_<SECTION>_<KEY>``) > the config
file (``~/.config/rbee/config.toml``, or ``$RBEE_CONFIG``, or ``--config``) > the defaults below.
The environment is read here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from rbee.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = [
    "MIN_TOKEN_CHARS",
    "Config",
    "HiveConfig",
    "KeeperConfig",
    "QueenConfig",
    "WorkerConfig",
    "default_config_path",
    "is_loopback",
    "load",
    "require_token",
    "set_value",
]

SECONDS = 1.0
# The shortest API token a daemon accepts.
MIN_TOKEN_CHARS = 16
MINUTES = 60 * SECONDS


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind, or a caller's) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_token(host: str, token: str, what: str, setting: str) -> None:
    """Refuse a token anyone could guess, and to serve ``what`` beyond this machine without one."""
    if token and (len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token)):
        raise ConfigError(
            f"refusing the {what}'s API token ({setting}): it must be at least "
            f"{MIN_TOKEN_CHARS} characters, without spaces (make one with "
            "'python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"')"
        )
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve the {what} on {host} without an API token: anyone who can reach "
            f"it could use it. Set --token (or {setting} in the config file), or listen on "
            "127.0.0.1"
        )


def default_config_path() -> Path:
    """Where the config file lives unless ``--config`` or ``$RBEE_CONFIG`` says otherwise."""
    explicit = os.environ.get("RBEE_CONFIG")
    if explicit:
        return Path(explicit)
    return _xdg("XDG_CONFIG_HOME", ".config") / "rbee" / "config.toml"


def default_data_dir() -> Path:
    """Where the queen keeps its database."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "rbee"


def default_models_dir() -> Path:
    """The model store: one directory per model (see ``rbee.models.store``)."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "rbee" / "models"


@dataclasses.dataclass(frozen=True)
class KeeperConfig:
    """The CLI's settings."""

    queen_url: str = "http://127.0.0.1:7833"
    token: str = ""
    timeout_s: float = 30 * SECONDS


@dataclasses.dataclass(frozen=True)
class QueenConfig:
    """The queen daemon's settings."""

    host: str = "127.0.0.1"
    port: int = 7833
    db: str = ""
    token: str = ""
    policy: str = "first-available"
    policy_fallback: str = "first-available"
    policy_locked: bool = False
    # A model that fits no GPU's free VRAM starts on a CPU (built-in policies) instead of waiting.
    cpu_fallback: bool = True
    queue_size: int = 256
    max_attempts: int = 3
    retry_backoff_s: float = 0.1 * SECONDS
    heartbeat_interval_s: float = 1 * SECONDS
    spawn_timeout_s: float = 120 * SECONDS
    # How long jobs wait for the local hive's first heartbeat before they are decided without it.
    hive_start_timeout_s: float = 30 * SECONDS
    keep_alive_s: float = 10 * MINUTES
    drain_grace_s: float = 30 * SECONDS
    # A worker that sends nothing for this long after a request (its prompt may run in one step),
    # or, once it streams, for `stall_steps` of its own step time (never less than
    # `stall_floor_s`), is taken as stalled: out of rotation, its streams continued elsewhere.
    first_event_timeout_s: float = 30 * SECONDS
    stall_steps: float = 50
    stall_floor_s: float = 2 * SECONDS
    # How long a stream cut off mid-way may wait for a worker (or for one to be started) to
    # continue it on, before it ends with the reason.
    migrate_timeout_s: float = 60 * SECONDS
    # A client that drops a job's stream may reconnect with `Last-Event-ID` for this long before
    # the job is cancelled (0: at once); a finished job's events are kept for `events_kept_s`.
    reconnect_grace_s: float = 10 * SECONDS
    events_kept_s: float = 10 * MINUTES
    local_hive: bool = True
    models_dir: str = ""
    # Home mode: a loopback caller needs no key while no token is set (see rbee.queen.auth).
    loopback_keyless: bool = True
    # Platform mode: the policy is locked, every caller needs a key, tenants share the queue.
    platform: bool = False


@dataclasses.dataclass(frozen=True)
class HiveConfig:
    """The hive daemon's settings."""

    host: str = "127.0.0.1"
    port: int = 7835
    name: str = ""
    queen_url: str = "http://127.0.0.1:7833"
    token: str = ""
    heartbeat_interval_s: float = 1 * SECONDS
    models_dir: str = ""
    worker_ready_timeout_s: float = 120 * SECONDS
    worker_stop_grace_s: float = 10 * SECONDS
    state_dir: str = ""


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """A worker's settings."""

    host: str = "127.0.0.1"
    port: int = 0
    device: str = "cpu"
    slots: int = 4
    threads: int = 0
    precision: str = ""
    """The graph to run; empty: the device's default (`rbee.models.default_precision`)."""
    queue_size: int = 16
    token: str = ""
    models_dir: str = ""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every section of the config file; each section is also a group of flags and variables."""

    keeper: KeeperConfig = KeeperConfig()
    queen: QueenConfig = QueenConfig()
    hive: HiveConfig = HiveConfig()
    worker: WorkerConfig = WorkerConfig()
    path: Path | None = None

    def models_dir(self, configured: str) -> Path:
        """The model store directory: the configured one, or the default."""
        return Path(configured).expanduser() if configured else default_models_dir()


_SECTIONS: dict[str, type[Any]] = {
    f.name: f.type if isinstance(f.type, type) else globals()[str(f.type)]
    for f in dataclasses.fields(Config)
    if f.name != "path"
}


def _field_types(section: str) -> dict[str, type]:
    cls = _SECTIONS[section]
    types = {"str": str, "int": int, "float": float, "bool": bool}
    return {f.name: types[str(f.type)] for f in dataclasses.fields(cls)}


def _coerce(where: str, key: str, value: object, want: type) -> object:
    """Check a value from the file, or parse one from a string (environment, ``config set``)."""
    if isinstance(value, str) and want is not str:
        text = value.strip().lower()
        try:
            if want is bool:
                if text in ("1", "true", "yes", "on"):
                    return True
                if text in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return want(text)
        except ValueError:
            raise ConfigError(
                f"{where}: key {key}: {value!r} is not a valid {want.__name__}"
            ) from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not want:
        raise ConfigError(
            f"{where}: key {key}: expected {want.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def _section_values(
    path: Path, section: str, data: Mapping[str, Any], env: Mapping[str, str]
) -> dict[str, object]:
    types = _field_types(section)
    values: dict[str, object] = {}
    for key, value in data.items():
        if key not in types:
            raise ConfigError(
                f"config file {path}: unknown key {section}.{key} "
                f"(known: {', '.join(sorted(types))})"
            )
        values[key] = _coerce(f"config file {path}", f"{section}.{key}", value, types[key])
    for key, want in types.items():
        var = f"RBEE_{section.upper()}_{key.upper()}"
        if var in env:
            values[key] = _coerce(f"environment variable {var}", f"{section}.{key}", env[var], want)
    return values


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file and the environment into a `Config`.

    A missing file means defaults; a malformed one raises `ConfigError` naming the file and key.
    """
    path = path or default_config_path()
    env = os.environ if env is None else env
    data = _read_file(path)
    sections: dict[str, Any] = {}
    for name, body in data.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"config file {path}: unknown section [{name}] (known: {', '.join(_SECTIONS)})"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"config file {path}: {name} must be a [{name}] table")
    for name, cls in _SECTIONS.items():
        sections[name] = cls(**_section_values(path, name, data.get(name, {}), env))
    return Config(path=path, **sections)


def override(section: Any, **flags: object) -> Any:
    """Return ``section`` with every flag that was given (not None) applied on top."""
    given = {k: v for k, v in flags.items() if v is not None}
    return dataclasses.replace(section, **given) if given else section


def set_value(path: Path, dotted_key: str, raw: str) -> object:
    """Set ``section.key`` to ``raw`` (parsed to the key's type) in the file at ``path``.

    Returns the parsed value. The rest of the file is kept; comments are not (tomli-w writes plain TOML).
    """
    section, _, key = dotted_key.partition(".")
    if section not in _SECTIONS or not key:
        raise ConfigError(
            f"unknown key {dotted_key!r}: use SECTION.KEY with SECTION one of {', '.join(_SECTIONS)}"
        )
    types = _field_types(section)
    if key not in types:
        raise ConfigError(f"unknown key {dotted_key} (known: {', '.join(sorted(types))})")
    value = _coerce("config set", dotted_key, raw, types[key])
    data = _read_file(path)
    data.setdefault(section, {})[key] = value
    load(path, env={})  # refuse to write over a file that is already broken
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(path)
    return value


def as_dict(config: Config) -> dict[str, dict[str, object]]:
    """The effective settings, section by section, for ``rbee config show``."""
    return {name: dataclasses.asdict(getattr(config, name)) for name in _SECTIONS}

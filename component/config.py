"""Configuration: one TOML file, every key documented in config.example.toml."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from component.errors import BadRequest
from component.model import normalise_domain, parse_bare_jid


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the text says which key."""


@dataclass(frozen=True)
class ComponentConfig:
    jid: str
    secret: str
    server_host: str = "127.0.0.1"
    server_port: int = 5347
    domains: tuple[str, ...] = ()
    # Reconnection backoff (seconds): doubles from reconnect_min_s up to reconnect_max_s.
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    # Outbound IQs (roster sets) in flight at once; every pending IQ costs a
    # handler that each incoming stanza is matched against.
    max_concurrent_iqs: int = 20
    # How long to wait for the server's XEP-0356 advertisement after the handshake.
    privilege_wait_s: float = 3.0
    # How often the outbox is read even when nothing woke its dispatcher (rows
    # committed by another process, such as `python -m component resync`).
    outbox_poll_s: float = 5.0

    def served_domains(self) -> frozenset[str]:
        """The served domains as the server writes them (nameprep)."""
        if self.domains:
            return frozenset(normalise_domain(d) for d in self.domains)
        _, _, parent = self.jid.partition(".")
        return frozenset({normalise_domain(parent)})


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 16 * 1024
    # A request head must be complete this long after the connection opened or its
    # previous answer (so also how long an idle keep-alive connection lasts).
    header_timeout_s: float = 10.0
    # A body must arrive whole this long after its handler starts reading it.
    body_timeout_s: float = 10.0
    # Connections open at once; more are closed as soon as they are accepted.
    max_connections: int = 512


@dataclass(frozen=True)
class StorageConfig:
    path: str = "presence.sqlite3"


@dataclass(frozen=True)
class AuthConfig:
    admin_token: str = ""
    c2s_host: str = "127.0.0.1"
    c2s_port: int = 5222
    c2s_allow_plaintext: bool = False
    token_ttl_s: int = 86400
    login_timeout_s: float = 10.0
    max_concurrent_logins: int = 8
    # Bare JIDs allowed to set/reset presence states over XMPP (<presencestate/> IQ).
    xmpp_admins: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsConfig:
    # Pending requests one user may have sent and not yet had answered.
    max_pending_sent: int = 1000
    # Largest page a list call may ask for.
    max_page_size: int = 1000


@dataclass(frozen=True)
class SmtpConfig:
    # Empty host: e-mail shares are refused (mode "email" answers 4001001).
    host: str = ""
    port: int = 25
    sender: str = ""
    username: str = ""
    password: str = ""
    starttls: bool = False  # STARTTLS after connecting
    tls: bool = False  # implicit TLS (port 465)
    timeout_s: float = 30.0
    max_attempts: int = 8


@dataclass(frozen=True)
class SharingConfig:
    # Longest `expire` a share may ask for, in seconds.
    max_expire_s: int = 30 * 86400
    # How often pending shares past their expiry are turned `overtime`.
    sweep_interval_s: float = 30.0
    max_pending_per_device: int = 100
    # Base URL written in invitation e-mails (where the REST bridge is reachable).
    public_url: str = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    component: ComponentConfig
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_SECTIONS: dict[str, type] = {
    "component": ComponentConfig,
    "http": HttpConfig,
    "storage": StorageConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "smtp": SmtpConfig,
    "sharing": SharingConfig,
    "logging": LoggingConfig,
}


def _section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        expected = known[key].type
        if expected in ("int",) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"[{name}] {key} must be an integer")
        if expected == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ConfigError(f"[{name}] {key} must be a number")
        if expected == "bool" and not isinstance(value, bool):
            raise ConfigError(f"[{name}] {key} must be true or false")
        if expected == "str" and not isinstance(value, str):
            raise ConfigError(f"[{name}] {key} must be a string")
        if expected.startswith("tuple"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[{name}] {key} must be a list of strings")
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        missing = [f.name for f in fields(cls) if f.name not in values]
        raise ConfigError(f"[{name}] is missing required key(s): {', '.join(missing)}") from exc


def parse_config(raw: dict[str, Any]) -> Config:
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(unknown)}")
    if "component" not in raw:
        raise ConfigError("[component] section is required (jid, secret)")
    built = {name: _section(name, cls, raw[name]) for name, cls in _SECTIONS.items() if name in raw}
    config = Config(**built)
    if "." not in config.component.jid or "@" in config.component.jid:
        raise ConfigError("[component] jid must be a domain such as presence.example.org")
    if not config.component.secret:
        raise ConfigError("[component] secret must not be empty")
    try:
        if not config.component.served_domains():
            raise ConfigError("[component] domains must name at least one domain")
    except BadRequest as exc:
        raise ConfigError(f"[component] domains: {exc.detail}") from None
    http = config.http
    if http.max_body_bytes <= 0 or http.max_connections <= 0:
        raise ConfigError("[http] max_body_bytes and max_connections must be positive")
    if http.header_timeout_s <= 0 or http.body_timeout_s <= 0:
        raise ConfigError("[http] header_timeout_s and body_timeout_s must be positive")
    if config.component.outbox_poll_s <= 0:
        raise ConfigError("[component] outbox_poll_s must be positive")
    for admin in config.auth.xmpp_admins:
        try:
            parse_bare_jid(admin, "xmpp_admins")
        except BadRequest:
            raise ConfigError(f"[auth] xmpp_admins: {admin!r} is not a bare JID") from None
    # The REST bridge takes a token only as visible ASCII (http_bridge/inputs.py): any
    # other admin token could never be presented.
    if config.auth.admin_token and not re.fullmatch(r"[\x21-\x7e]+", config.auth.admin_token):
        raise ConfigError("[auth] admin_token must be visible ASCII characters (no spaces)")
    if config.auth.token_ttl_s <= 0:
        raise ConfigError("[auth] token_ttl_s must be positive")
    if config.smtp.host and not config.smtp.sender:
        raise ConfigError("[smtp] sender is required when [smtp] host is set")
    if config.sharing.max_expire_s <= 0 or config.sharing.sweep_interval_s <= 0:
        raise ConfigError("[sharing] max_expire_s and sweep_interval_s must be positive")
    return config


def load_config(path: str | Path) -> Config:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return parse_config(raw)

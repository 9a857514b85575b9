"""Configuration: one TOML file, every key documented in config.example.toml."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from component.errors import BadRequest
from component.login_limits import LoginLimits
from component.model import normalise_domain, parse_bare_jid


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the text says which key."""


# ---- the schema: what each key may be, beside its default ------------------------------

UNBOUNDED = None


def between(low: float, high: float | None = UNBOUNDED) -> dict[str, Any]:
    """A number in [low, high] (no upper bound when high is UNBOUNDED)."""
    return {"range": (low, high)}


def more_than(low: float) -> dict[str, Any]:
    """A number strictly above low."""
    return {"above": low}


def one_of(*values: str) -> dict[str, Any]:
    return {"one_of": values}


# A secret may also come from a file (`KEY_file = "/run/secrets/..."`) or from the
# environment (PRESENCE_<SECTION>_<KEY>), so that the TOML file needs no secret at all.
SECRET: dict[str, Any] = {"secret": True}
PORT = between(1, 65535)
NON_EMPTY: dict[str, Any] = {"non_empty": True}
ENV_PREFIX = "PRESENCE_"


@dataclass(frozen=True)
class ComponentConfig:
    jid: str
    secret: str = field(metadata={**SECRET, **NON_EMPTY})
    server_host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    server_port: int = field(default=5347, metadata=PORT)
    domains: tuple[str, ...] = ()
    # Reconnection backoff (seconds): doubles from reconnect_min_s up to reconnect_max_s.
    reconnect_min_s: float = field(default=1.0, metadata=more_than(0))
    reconnect_max_s: float = field(default=30.0, metadata=between(0.01, 86400))
    # Outbound IQs (roster sets) in flight at once; every pending IQ costs a
    # handler that each incoming stanza is matched against.
    max_concurrent_iqs: int = field(default=20, metadata=between(1, 1000))
    # How long to wait for the server's XEP-0356 advertisement after the handshake.
    privilege_wait_s: float = field(default=3.0, metadata=between(0, 600))
    # How often the outbox is read even when nothing woke its dispatcher (rows
    # committed by another process, such as `python -m component resync`).
    outbox_poll_s: float = field(default=5.0, metadata=between(0.01, 3600))
    # Attempts of a notification the server refuses (or that cannot be built) before it
    # is moved to the dead_letters table; retries back off from 2 s, doubling, to 5 min.
    outbox_max_attempts: int = field(default=8, metadata=between(1, 100))
    # A plain-words <body> and an XEP-0334 <store/> hint in every management message, so
    # stock clients show it and offline storage / MAM keep it.
    readable_notifications: bool = True
    # The management messages' type: Rainbow's own "management", or "normal" for stock
    # clients that drop a type they do not know (RFC 6121 5.2.2 says to read it as normal).
    management_type: str = field(default="management", metadata=one_of("management", "normal"))

    def served_domains(self) -> frozenset[str]:
        """The served domains as the server writes them (nameprep)."""
        if self.domains:
            return frozenset(normalise_domain(d) for d in self.domains)
        _, _, parent = self.jid.partition(".")
        return frozenset({normalise_domain(parent)})


@dataclass(frozen=True)
class HttpConfig:
    host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    port: int = field(default=8080, metadata=PORT)
    max_body_bytes: int = field(default=16 * 1024, metadata=between(256, 64 * 1024 * 1024))
    # A request head must be complete this long after the connection opened or its
    # previous answer (so also how long an idle keep-alive connection lasts).
    header_timeout_s: float = field(default=10.0, metadata=between(0.1, 3600))
    # A body must arrive whole this long after its handler starts reading it.
    body_timeout_s: float = field(default=10.0, metadata=between(0.1, 3600))
    # Connections open at once; more are closed as soon as they are accepted.
    max_connections: int = field(default=512, metadata=between(1, 1_000_000))


@dataclass(frozen=True)
class StorageConfig:
    """Where the state lives: a SQLite file (`path`, the default) or a PostgreSQL
    database (`url`, postgresql://user:password@host:port/name; a secret: also
    `url_file` or $PRESENCE_STORAGE_URL). Never both."""

    path: str = field(default="presence.sqlite3", metadata=NON_EMPTY)
    url: str = field(default="", metadata=SECRET)
    # PostgreSQL only: connections of this instance's pool.
    pool_size: int = field(default=10, metadata=between(2, 1000))
    # SQLite only: the page cache of the connection that serves reads, in MB.
    read_cache_mb: int = field(default=8, metadata=between(1, 4096))

    @property
    def target(self) -> str:
        """What storage.open_database takes: the URL when set, else the file's path."""
        return self.url or self.path

    @property
    def shared(self) -> bool:
        """Several instances may share the database (PostgreSQL)."""
        return bool(self.url)


@dataclass(frozen=True)
class AuthConfig:
    admin_token: str = field(default="", metadata=SECRET)
    c2s_host: str = field(default="127.0.0.1", metadata=NON_EMPTY)
    c2s_port: int = field(default=5222, metadata=PORT)
    c2s_allow_plaintext: bool = False
    # PEM file of the CA(s) the server's certificate is verified against; empty: the system's.
    c2s_tls_ca_file: str = ""
    token_ttl_s: int = field(default=86400, metadata=between(1, 366 * 86400))
    # How long a token found valid is trusted from memory (component/token_cache.py).
    token_cache_s: float = field(default=5.0, metadata=between(0, 3600))
    login_timeout_s: float = field(default=10.0, metadata=between(0.1, 300))
    max_concurrent_logins: int = field(default=32, metadata=between(1, 1000))
    # Failed logins allowed within login_failure_window_s: per JID from one client
    # address, and per client address whatever the JIDs (DESIGN "Operations").
    login_failures_per_jid: int = field(default=5, metadata=between(1))
    login_failures_per_address: int = field(default=20, metadata=between(1))
    login_failure_window_s: float = field(default=60.0, metadata=more_than(0))
    # (JID, address) pairs and addresses with recent failures kept in memory at most.
    login_limit_max_tracked: int = field(default=10_000, metadata=between(2))
    # Bare JIDs allowed to set/reset presence states over XMPP (<presencestate/> IQ).
    xmpp_admins: tuple[str, ...] = ()
    # How often each token holder's XMPP account is checked to still exist (its tokens
    # go when it does not); 0 disables the checks.
    account_check_s: float = field(default=3600.0, metadata=between(0, 366 * 86400))

    def login_limits(self) -> LoginLimits:
        return LoginLimits(
            per_jid=self.login_failures_per_jid,
            per_address=self.login_failures_per_address,
            window_s=self.login_failure_window_s,
            max_tracked=self.login_limit_max_tracked,
            # A running check has its verdict within login_timeout_s of getting its slot.
            in_flight_wait_s=2 * self.login_timeout_s,
        )


@dataclass(frozen=True)
class LimitsConfig:
    # Pending requests one user may have sent and not yet had answered.
    max_pending_sent: int = field(default=1000, metadata=between(1))
    # Largest page a list call may ask for.
    max_page_size: int = field(default=1000, metadata=between(1, 100_000))
    # Live tokens per user: a login beyond it revokes that user's oldest token.
    max_tokens_per_user: int = field(default=20, metadata=between(1))
    # XMPP subscriptions to extensions per subscriber (more are answered `unsubscribed`).
    max_subscriptions_per_user: int = field(default=500, metadata=between(1))
    # Users one user may name (toJid, a share's user) that never logged in, at once.
    max_unseen_targets_per_user: int = field(default=1000, metadata=between(1))


@dataclass(frozen=True)
class SmtpConfig:
    # Empty host: e-mail shares are refused (mode "email" answers 4001001).
    host: str = ""
    port: int = field(default=25, metadata=PORT)
    sender: str = ""
    username: str = ""
    password: str = field(default="", metadata=SECRET)
    starttls: bool = False  # STARTTLS after connecting
    tls: bool = False  # implicit TLS (port 465)
    timeout_s: float = field(default=30.0, metadata=between(0.1, 600))
    max_attempts: int = field(default=8, metadata=between(1, 100))


@dataclass(frozen=True)
class SharingConfig:
    # Longest `expire` a share may ask for, in seconds.
    max_expire_s: int = field(default=30 * 86400, metadata=between(1, 366 * 86400))
    # How often pending shares past their expiry are turned `overtime`.
    sweep_interval_s: float = field(default=30.0, metadata=between(0.01, 86400))
    max_pending_per_device: int = field(default=100, metadata=between(1))
    # Base URL written in invitation e-mails (where the REST bridge is reachable).
    public_url: str = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class RosterConfig:
    # Where users' rosters are changed (DESIGN "Servers and rosters"): "xep0356"
    # (privileged roster IQs: Prosody, ejabberd >= 23.10), "ejabberd_api" (ejabberd's
    # mod_http_api), or "none" (messages and IQs only).
    backend: str = field(default="xep0356", metadata=one_of("xep0356", "ejabberd_api", "none"))
    ejabberd_api_url: str = "http://127.0.0.1:5281/api"
    # Optional HTTP basic auth for the API; without it api_permissions must allow the
    # service's address.
    ejabberd_api_user: str = ""
    ejabberd_api_password: str = field(default="", metadata=SECRET)
    ejabberd_api_timeout_s: float = field(default=10.0, metadata=between(0.1, 600))


@dataclass(frozen=True)
class LoggingConfig:
    level: str = field(default="INFO", metadata=one_of("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class Config:
    component: ComponentConfig
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    roster: RosterConfig = field(default_factory=RosterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


_SECTIONS: dict[str, type] = {
    "component": ComponentConfig,
    "http": HttpConfig,
    "storage": StorageConfig,
    "auth": AuthConfig,
    "limits": LimitsConfig,
    "smtp": SmtpConfig,
    "sharing": SharingConfig,
    "roster": RosterConfig,
    "logging": LoggingConfig,
}


def _secrets_from_elsewhere(name: str, cls: type, raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Fill each secret key given as `KEY_file` or in the environment; once only."""
    raw = dict(raw)
    for f in fields(cls):
        if not f.metadata.get("secret"):
            continue
        sources = []
        if f.name in raw:
            sources.append(f"{f.name} in the file")
        file_key = f"{f.name}_file"
        env_key = f"{ENV_PREFIX}{name}_{f.name}".upper()
        if file_key in raw:
            sources.append(file_key)
        if env.get(env_key):
            sources.append(f"${env_key}")
        if len(sources) > 1:
            raise ConfigError(f"[{name}] {f.name} is given twice ({' and '.join(sources)}): keep one")
        if file_key in raw:
            path = raw.pop(file_key)
            if not isinstance(path, str) or not path:
                raise ConfigError(f"[{name}] {file_key} must be the path of a file")
            try:
                raw[f.name] = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"[{name}] {file_key}: cannot read {path} ({type(exc).__name__})") from None
        elif env.get(env_key):
            raw[f.name] = env[env_key]
    return raw


def _check(name: str, key: str, value: Any, rules: Mapping[str, Any]) -> None:
    where = f"[{name}] {key}"
    if "range" in rules:
        low, high = rules["range"]
        if value < low or (high is not None and value > high):
            span = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise ConfigError(f"{where} must be {span}, not {value!r}")
    if "above" in rules and not value > rules["above"]:
        raise ConfigError(f"{where} must be more than {rules['above']:g}, not {value!r}")
    if "one_of" in rules and value not in rules["one_of"]:
        raise ConfigError(f"{where} must be one of {', '.join(rules['one_of'])}, not {value!r}")
    if rules.get("non_empty") and not value:
        raise ConfigError(f"{where} must be non-empty")


def _section(name: str, cls: type, raw: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    allowed = set(known) | {f"{k}_file" for k, f in known.items() if f.metadata.get("secret")}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{name}]: {', '.join(unknown)}")
    raw = _secrets_from_elsewhere(name, cls, raw, env)
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
        _check(name, key, value, known[key].metadata)
        values[key] = value
    required = [
        f.name for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if required:
        raise ConfigError(f"[{name}] is missing required key(s): {', '.join(required)}")
    for f in fields(cls):  # defaults obey the schema too (a non-empty required secret)
        if f.name not in values and f.default is not MISSING:
            _check(name, f.name, f.default, f.metadata)
    return cls(**values)


def parse_config(raw: dict[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Check every key against the schema above (type, range, enum; secrets from a file
    or the environment), then the rules that tie keys together."""
    env = os.environ if env is None else env
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(unknown)}")
    if "component" not in raw:
        raise ConfigError("[component] section is required (jid, secret)")
    built = {
        name: _section(name, cls, raw.get(name, {}), env)
        for name, cls in _SECTIONS.items()
        if name in raw or name == "component" or any(k.startswith(f"{ENV_PREFIX}{name.upper()}_") for k in env)
    }
    config = Config(**built)
    storage_raw = raw.get("storage", {})
    if config.storage.url:
        if "path" in storage_raw:
            raise ConfigError("[storage] path and url are exclusive: set path (SQLite) or url (PostgreSQL)")
        if not config.storage.url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("[storage] url must be a postgresql:// URL")
    if "." not in config.component.jid or "@" in config.component.jid:
        raise ConfigError("[component] jid must be a domain such as presence.example.org")
    try:
        if not config.component.served_domains():
            raise ConfigError("[component] domains must name at least one domain")
    except BadRequest as exc:
        raise ConfigError(f"[component] domains: {exc.detail}") from None
    if config.component.reconnect_min_s > config.component.reconnect_max_s:
        raise ConfigError(
            "[component] reconnect_min_s must not be more than reconnect_max_s"
            f" ({config.component.reconnect_min_s:g} > {config.component.reconnect_max_s:g})"
        )
    for admin in config.auth.xmpp_admins:
        try:
            parse_bare_jid(admin, "xmpp_admins")
        except BadRequest:
            raise ConfigError(f"[auth] xmpp_admins: {admin!r} is not a bare JID") from None
    if config.auth.c2s_tls_ca_file and not Path(config.auth.c2s_tls_ca_file).is_file():
        raise ConfigError(f"[auth] c2s_tls_ca_file: {config.auth.c2s_tls_ca_file} is not a file")
    # The REST bridge takes a token only as visible ASCII (http_bridge/inputs.py): any
    # other admin token could never be presented.
    if config.auth.admin_token and not re.fullmatch(r"[\x21-\x7e]+", config.auth.admin_token):
        raise ConfigError("[auth] admin_token must be visible ASCII characters (no spaces)")
    if config.smtp.host and not config.smtp.sender:
        raise ConfigError("[smtp] sender is required when [smtp] host is set")
    if config.smtp.tls and config.smtp.starttls:
        raise ConfigError("[smtp] tls (implicit TLS, port 465) and starttls are exclusive: set one")
    if config.roster.backend == "ejabberd_api" and not config.roster.ejabberd_api_url.startswith(
        ("http://", "https://")
    ):
        raise ConfigError("[roster] ejabberd_api_url must be an http:// or https:// URL")
    if bool(config.roster.ejabberd_api_user) != bool(config.roster.ejabberd_api_password):
        raise ConfigError("[roster] ejabberd_api_user and ejabberd_api_password go together: set both or neither")
    if not config.sharing.public_url.startswith(("http://", "https://")):
        raise ConfigError("[sharing] public_url must be an http:// or https:// URL")
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

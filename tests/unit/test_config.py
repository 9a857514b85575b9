"""parse_config / load_config: defaults, derived values and refusals that name the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from component.config import (
    AuthConfig,
    ComponentConfig,
    Config,
    ConfigError,
    HttpConfig,
    LimitsConfig,
    LoggingConfig,
    StorageConfig,
    load_config,
    parse_config,
)
from component.login_limits import LoginLimits

MINIMAL = {"component": {"jid": "presence.example.test", "secret": "s3cret"}}
EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
TEST_CA = Path(__file__).resolve().parents[1] / "data" / "tls" / "ca.pem"


def with_section(section: str, **values: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"component": dict(MINIMAL["component"])}
    raw.setdefault(section, {}).update(values)
    return raw


def test_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config == Config(
        component=ComponentConfig(jid="presence.example.test", secret="s3cret"),
        http=HttpConfig(host="127.0.0.1", port=8080, max_body_bytes=16384),
        storage=StorageConfig(path="presence.sqlite3"),
        auth=AuthConfig(
            admin_token="",
            c2s_host="127.0.0.1",
            c2s_port=5222,
            c2s_allow_plaintext=False,
            token_ttl_s=86400,
        ),
        limits=LimitsConfig(max_pending_sent=1000, max_page_size=1000),
        logging=LoggingConfig(level="INFO"),
    )
    assert (config.component.server_host, config.component.server_port) == ("127.0.0.1", 5347)


def test_served_domains_default_to_the_parent_of_the_component_jid() -> None:
    assert parse_config(MINIMAL).component.served_domains() == frozenset({"example.test"})


def test_served_domains_when_listed() -> None:
    config = parse_config(with_section("component", domains=["Example.Test", "other.test"]))
    assert config.component.domains == ("Example.Test", "other.test")
    assert config.component.served_domains() == frozenset({"example.test", "other.test"})


def test_every_section_and_key() -> None:
    raw = {
        "component": {
            "jid": "presence.example.test",
            "secret": "s",
            "server_host": "::1",
            "server_port": 5348,
            "domains": ["example.test"],
            "reconnect_min_s": 2,
            "reconnect_max_s": 60.5,
            "max_concurrent_iqs": 5,
            "privilege_wait_s": 1.5,
        },
        "http": {
            "host": "0.0.0.0", "port": 9090, "max_body_bytes": 1024,
            "header_timeout_s": 5, "body_timeout_s": 2.5, "max_connections": 64,
        },
        "storage": {"path": "/var/lib/p.sqlite3"},
        "auth": {
            "admin_token": "adm",
            "c2s_host": "xmpp.example.test",
            "c2s_port": 5223,
            "c2s_allow_plaintext": True,
            "c2s_tls_ca_file": str(TEST_CA),
            "token_ttl_s": 60,
            "login_timeout_s": 3,
            "max_concurrent_logins": 2,
            "login_failures_per_jid": 3,
            "login_failures_per_address": 100,
            "login_failure_window_s": 300,
            "login_limit_max_tracked": 500,
        },
        "limits": {"max_pending_sent": 10, "max_page_size": 50},
        "logging": {"level": "DEBUG"},
    }
    config = parse_config(raw)
    for section, values in raw.items():
        got = dataclasses.asdict(getattr(config, section))
        expected = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({**MINIMAL, "xmpp": {}}, "xmpp"),
        (with_section("component", port=5347), "port"),
        (with_section("http", listen="127.0.0.1"), "listen"),
        (with_section("auth", token_ttl=60), "token_ttl"),
    ],
)
def test_unknown_sections_and_keys_are_refused_by_name(raw: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{named}\b"):
        parse_config(raw)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("component", "server_port", "5347"),
        ("component", "server_port", True),
        ("component", "reconnect_min_s", "1"),
        ("component", "domains", "example.test"),
        ("component", "domains", ["example.test", 3]),
        ("http", "port", 80.5),
        ("http", "max_connections", 1.5),
        ("http", "header_timeout_s", "10"),
        ("http", "host", 127),
        ("storage", "path", ["a"]),
        ("auth", "c2s_allow_plaintext", "false"),
        ("auth", "c2s_allow_plaintext", 0),
        ("auth", "token_ttl_s", "86400"),
        ("limits", "max_page_size", None),
        ("logging", "level", 10),
    ],
)
def test_wrong_types_are_refused_by_name(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key}"):
        parse_config(with_section(section, **{key: value}))


def test_a_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"\[http\]"):
        parse_config({**MINIMAL, "http": "127.0.0.1:8080"})


def test_the_component_section_is_required() -> None:
    with pytest.raises(ConfigError, match=r"\[component\]"):
        parse_config({"http": {}})


def test_a_missing_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="secret"):
        parse_config({"component": {"jid": "presence.example.test"}})


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="secret"):
        parse_config({"component": {"jid": "presence.example.test", "secret": ""}})


@pytest.mark.parametrize("jid", ["localhost", "user@presence.example.test"])
def test_the_component_jid_must_be_a_subdomain(jid: str) -> None:
    with pytest.raises(ConfigError, match="jid"):
        parse_config({"component": {"jid": jid, "secret": "s"}})


@pytest.mark.parametrize(
    ("key", "value"),
    [("header_timeout_s", 0), ("body_timeout_s", -1.5), ("max_connections", 0), ("max_body_bytes", 0)],
)
def test_http_limits_must_be_positive(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"\[http\] .*{key}"):
        parse_config(with_section("http", **{key: value}))


def test_http_limits_defaults() -> None:
    http = parse_config(MINIMAL).http
    assert (http.header_timeout_s, http.body_timeout_s, http.max_connections) == (10.0, 10.0, 512)


def test_token_ttl_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="token_ttl_s"):
        parse_config(with_section("auth", token_ttl_s=0))


@pytest.mark.parametrize(
    ("key", "value"),
    [("login_timeout_s", 0), ("login_timeout_s", -1.5), ("max_concurrent_logins", 0)],
)
def test_login_checks_need_time_and_a_slot(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"\[auth\] {key}"):
        parse_config(with_section("auth", **{key: value}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("login_failures_per_jid", 0),
        ("login_failures_per_address", 0),
        ("login_failure_window_s", 0),
        ("login_limit_max_tracked", 1),
    ],
)
def test_login_limits_must_be_usable(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"\[auth\] {key}"):
        parse_config(with_section("auth", **{key: value}))


def test_login_limits_reach_the_limiter() -> None:
    raw = with_section("auth", login_failures_per_jid=3, login_failures_per_address=9,
                       login_failure_window_s=30, login_limit_max_tracked=99)
    assert parse_config(raw).auth.login_limits() == LoginLimits(3, 9, 30, 99)
    assert parse_config(MINIMAL).auth.login_limits() == LoginLimits(5, 20, 60.0, 10_000)


def test_the_ca_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[auth\] c2s_tls_ca_file"):
        parse_config(with_section("auth", c2s_tls_ca_file=str(tmp_path / "absent.pem")))


@pytest.mark.parametrize("token", ["two words", "caf\u00e9", "tab\there"])
def test_an_admin_token_that_no_header_could_carry_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match=r"\[auth\] admin_token"):
        parse_config(with_section("auth", admin_token=token))


def test_load_config_reports_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[component\njid = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_the_example_config_loads_and_documents_every_key() -> None:
    config = load_config(EXAMPLE)
    assert config.component.served_domains() == frozenset({"example.test"})
    text = EXAMPLE.read_text()
    for section in dataclasses.fields(Config):
        assert re.search(rf"^\[{section.name}\]", text, re.M), section.name
        for key in dataclasses.fields(getattr(config, section.name)):
            assert re.search(rf"^#? ?{key.name} =", text, re.M), f"[{section.name}] {key.name}"


# ---- the schema: ranges, enums, rules between keys, secrets from elsewhere (issue #10) ------


@pytest.mark.parametrize(
    ("section", "key", "value", "says"),
    [
        ("http", "port", 99999, "from 1 to 65535"),
        ("http", "port", 0, "from 1 to 65535"),
        ("component", "server_port", -1, "from 1 to 65535"),
        ("component", "max_concurrent_iqs", 0, "from 1 to 1000"),
        ("component", "reconnect_min_s", 0, "more than 0"),
        ("component", "outbox_max_attempts", 0, "from 1 to 100"),
        ("limits", "max_tokens_per_user", 0, "at least 1"),
        ("smtp", "port", 70000, "from 1 to 65535"),
        ("sharing", "max_expire_s", 0, "from 1 to"),
        ("logging", "level", "LOUD", "one of DEBUG, INFO, WARNING, ERROR"),
        ("storage", "path", "", "non-empty"),
        ("storage", "read_cache_mb", 0, "from 1 to 4096"),
        ("roster", "backend", "prosody", "one of xep0356, ejabberd_api, none"),
        ("roster", "ejabberd_api_timeout_s", 0, "from 0.1 to 600"),
    ],
)
def test_values_out_of_range_are_refused_by_name(section: str, key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key} must be {re.escape(says)}"):
        parse_config(with_section(section, **{key: value}))


def test_reconnect_min_may_not_exceed_reconnect_max() -> None:
    with pytest.raises(ConfigError, match="reconnect_min_s must not be more than reconnect_max_s"):
        parse_config(with_section("component", reconnect_min_s=10, reconnect_max_s=5))


def test_the_roster_backend_and_its_api_keys() -> None:
    config = parse_config(MINIMAL, env={})
    assert config.roster.backend == "xep0356"
    config = parse_config(
        with_section("roster", backend="ejabberd_api", ejabberd_api_url="http://127.0.0.1:5443/api"), env={}
    )
    assert (config.roster.backend, config.roster.ejabberd_api_url) == ("ejabberd_api", "http://127.0.0.1:5443/api")
    with pytest.raises(ConfigError, match=r"\[roster\] ejabberd_api_url must be an http"):
        parse_config(with_section("roster", backend="ejabberd_api", ejabberd_api_url="127.0.0.1:5281"), env={})
    with pytest.raises(ConfigError, match=r"ejabberd_api_user and ejabberd_api_password go together"):
        parse_config(with_section("roster", ejabberd_api_user="admin@example.test"), env={})
    env = {"PRESENCE_ROSTER_EJABBERD_API_PASSWORD": "api-pw"}
    config = parse_config(with_section("roster", ejabberd_api_user="admin@example.test"), env=env)
    assert config.roster.ejabberd_api_password == "api-pw"


def test_implicit_tls_and_starttls_are_exclusive() -> None:
    with pytest.raises(ConfigError, match=r"\[smtp\] tls .* and starttls are exclusive"):
        parse_config(with_section("smtp", tls=True, starttls=True))


def test_only_required_keys_are_named_missing() -> None:
    """A config missing only `secret` used to list eight keys that have defaults."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"component": {"jid": "presence.example.test"}}, env={})
    assert str(exc.value) == "[component] is missing required key(s): secret"


def test_secrets_come_from_a_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "component.secret"
    secret.write_text("from-a-file\n")
    token = tmp_path / "admin.token"
    token.write_text("adm-token")
    raw = {
        "component": {"jid": "presence.example.test", "secret_file": str(secret)},
        "auth": {"admin_token_file": str(token)},
    }
    config = parse_config(raw, env={})
    assert (config.component.secret, config.auth.admin_token) == ("from-a-file", "adm-token")
    env = {"PRESENCE_COMPONENT_SECRET": "from-env", "PRESENCE_SMTP_PASSWORD": "mail-pw"}
    config = parse_config({"component": {"jid": "presence.example.test"}}, env=env)
    assert (config.component.secret, config.smtp.password) == ("from-env", "mail-pw")


def test_a_secret_given_twice_or_unreadable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[component\] secret is given twice"):
        parse_config(MINIMAL, env={"PRESENCE_COMPONENT_SECRET": "x"})
    with pytest.raises(ConfigError, match=r"\[component\] secret_file: cannot read"):
        parse_config({"component": {"jid": "presence.example.test", "secret_file": str(tmp_path / "none")}}, env={})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[http\]: port_file"):
        parse_config(with_section("http", port_file="x"))


def test_storage_is_a_sqlite_file_or_a_postgresql_url_never_both(tmp_path: Path) -> None:
    url = "postgresql://presence:pw@127.0.0.1:5432/presence"
    config = parse_config(with_section("storage", url=url), env={})
    assert (config.storage.target, config.storage.shared) == (url, True)
    config = parse_config(MINIMAL, env={"PRESENCE_STORAGE_URL": url})
    assert config.storage.target == url
    assert parse_config(MINIMAL, env={}).storage.target == "presence.sqlite3"
    assert not parse_config(MINIMAL, env={}).storage.shared
    with pytest.raises(ConfigError, match=r"\[storage\] path and url are exclusive"):
        parse_config(with_section("storage", path="p.sqlite3", url=url), env={})
    with pytest.raises(ConfigError, match=r"\[storage\] url must be a postgresql:// URL"):
        parse_config(with_section("storage", url="mysql://x"), env={})


def test_path_and_url_together_exit_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from component.__main__ import main

    config = tmp_path / "both.toml"
    config.write_text(
        '[component]\njid = "presence.example.test"\nsecret = "s"\n'
        '[storage]\npath = "p.sqlite3"\nurl = "postgresql://u:hidden@127.0.0.1/p"\n'
    )
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "path and url are exclusive" in err
    assert "hidden" not in err

"""Logins against the real Prosody: SASL over STARTTLS with a verified certificate, and
the failed-login limits."""

from __future__ import annotations

import base64

import aiohttp
import pytest

from local_prosody import LocalProsody
from tests.e2e.conftest import (
    PASSWORDS,
    TEST_CA_FILE,
    RestApi,
    ServiceFactory,
    assert_rainbow_error,
    jid,
)

pytestmark = pytest.mark.e2e


async def login_status(api: RestApi, name: str, password: str) -> tuple[int, object]:
    credentials = base64.b64encode(f"{jid(name)}:{password}".encode()).decode()
    return await api.call("GET", api.LOGIN, headers={"Authorization": f"Basic {credentials}"})


async def test_logins_over_starttls_verify_the_servers_certificate(
    tls_prosody: LocalProsody, make_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    running = await make_service(
        tls_prosody, auth={"c2s_allow_plaintext": False, "c2s_tls_ca_file": str(TEST_CA_FILE)}
    )
    api = RestApi(http, running.base_url)
    session = await api.login("alice")
    assert session.jid == jid("alice")
    status, body = await login_status(api, "bob", "not-" + PASSWORDS["bob"])
    assert_rainbow_error(status, body, 401, 401000)
    assert "Stream encrypted" in tls_prosody.log_path.read_text()


async def test_a_certificate_the_service_does_not_trust_makes_logins_unavailable(
    tls_prosody: LocalProsody, make_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    # The system's trust store does not know the test CA: no password goes out.
    running = await make_service(tls_prosody, auth={"c2s_allow_plaintext": False})
    api = RestApi(http, running.base_url)
    status, body = await login_status(api, "alice", PASSWORDS["alice"])
    assert_rainbow_error(status, body, 503, 503000)
    assert "Authenticated as" not in tls_prosody.log_path.read_text()


async def test_a_sixth_wrong_password_gets_429_while_another_user_still_logs_in(api: RestApi) -> None:
    for n in range(5):
        status, body = await login_status(api, "alice", f"guess-{n}")
        assert_rainbow_error(status, body, 401, 401000)
    for password in ("guess-5", PASSWORDS["alice"]):
        credentials = base64.b64encode(f"{jid('alice')}:{password}".encode()).decode()
        async with api.http.get(api.base_url + api.LOGIN, headers={"Authorization": f"Basic {credentials}"}) as resp:
            assert_rainbow_error(resp.status, await resp.json(), 429, 429000)
            assert 1 <= int(resp.headers["Retry-After"]) <= 60
    bob = await api.login("bob")
    assert bob.jid == jid("bob")

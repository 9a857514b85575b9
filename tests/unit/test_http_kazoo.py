"""Family 2 over HTTP (Kazoo paths): provisioning, the subscription listing and state
changes, over real actions and a real database; Kazoo's envelopes, field for field."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from component.actions import Identity, PresenceSharing
from component.clock import FixedClock
from component.config import HttpConfig
from component.model import BareJid, new_account_id, new_object_id
from component.provisioning import Provisioning
from component.subscriptions import PresenceStates
from http_bridge import Services, build_app
from storage import Database
from unit_rig import SERVED, TOKEN_TTL_S, FakeVerifier, clear_outbox, outbox_rows, raw_http

COMPONENT = "presence.example.test"
ADMIN = "ADMIN"
REQ = "req-1"
TWO_REALMS = frozenset({"example.test", "other.test"})
START_S = FixedClock().now_ms() // 1000
GREGORIAN_START = START_S + 62_167_219_200  # 2026-01-01T00:00:00Z in Gregorian seconds
MAX_BODY = 4096


class Health:
    async def __call__(self) -> tuple[bool, dict[str, str]]:
        return True, {"xmpp": "connected", "storage": "ok", "roster": "granted"}


@pytest.fixture
def identity(db: Database, clock: FixedClock, verifier: FakeVerifier) -> Identity:
    return Identity(db, clock, SERVED, verifier, TOKEN_TTL_S, admin_token=ADMIN)


@pytest.fixture
def provisioning(db: Database, clock: FixedClock) -> Provisioning:
    # Two served realms, so that a second account (another tenant) can exist.
    return Provisioning(db, clock, TWO_REALMS, "presence.example.test")


@pytest.fixture
def states(db: Database, clock: FixedClock, provisioning: Provisioning) -> PresenceStates:
    return PresenceStates(db, clock, TWO_REALMS, provisioning)


@pytest.fixture
async def client(
    identity: Identity, sharing: PresenceSharing, provisioning: Provisioning, states: PresenceStates
) -> AsyncIterator[TestClient]:
    services = Services(
        identity, sharing, Health(), max_page_size=50,
        provisioning=provisioning, states=states, component_jid=COMPONENT,
    )
    async with TestClient(TestServer(build_app(services, HttpConfig(max_body_bytes=MAX_BODY)))) as test_client:
        yield test_client


@pytest.fixture
async def alice_token(identity: Identity) -> str:
    token, _ = await identity.login("alice@example.test", "alice-pw")
    return token


async def call(
    client: TestClient,
    method: str,
    path: str | URL,
    token: str | None = ADMIN,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"X-Request-Id": REQ}
    if token is not None:
        headers["X-Auth-Token"] = token
    kwargs: dict[str, Any] = {"headers": headers}
    if raw is not None:
        kwargs["data"] = raw
        headers["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    async with client.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


def ok(data: Any, token: str = ADMIN) -> dict[str, Any]:
    return {"auth_token": token, "data": data, "request_id": REQ, "revision": "undefined", "status": "success"}


def err(status: int, message: str, data: dict[str, Any], token: str = ADMIN) -> dict[str, Any]:
    return {
        "auth_token": token,
        "data": data,
        "error": str(status),
        "message": message,
        "request_id": REQ,
        "status": "error",
    }


def field(name: str, rule: str, message: str) -> dict[str, Any]:
    return {name: {rule: {"message": message}}}


async def make_account(client: TestClient, realm: str = "example.test", name: str = "Example") -> dict[str, Any]:
    status, body = await call(client, "PUT", "/v2/accounts", body={"data": {"name": name, "realm": realm}})
    assert status == 201, body
    return body["data"]


async def make_user(client: TestClient, account_id: str, **data: Any) -> dict[str, Any]:
    status, body = await call(client, "PUT", f"/v2/accounts/{account_id}/users", body={"data": data})
    assert status == 201, body
    return body["data"]


async def make_device(client: TestClient, account_id: str, **data: Any) -> dict[str, Any]:
    status, body = await call(client, "PUT", f"/v2/accounts/{account_id}/devices", body={"data": data})
    assert status == 201, body
    return body["data"]


async def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with db.reader.execute(sql, params) as cur:
        return [tuple(r) for r in await cur.fetchall()]


async def sub_id(db: Database, extension: str, subscriber: str) -> str:
    found = await rows(
        db, "SELECT id FROM subscriptions WHERE extension = ? AND subscriber = ?", extension, subscriber
    )
    assert len(found) == 1
    return found[0][0]


def entry(subscriber: str, body: str, sequence: int, timestamp: int = GREGORIAN_START) -> dict[str, Any]:
    return {
        "expires": 0,
        "from": subscriber,
        "notify": {"body": body, "reply": 0, "sequence": sequence},
        "stalker": COMPONENT,
        "timestamp": timestamp,
        "version": 1,
    }


# ---- accounts -----------------------------------------------------------------------------


async def test_accounts_are_created_listed_and_read_in_kazoo_envelopes(client: TestClient, db: Database) -> None:
    status, body = await call(client, "PUT", "/v2/accounts", body={"data": {"name": "Example", "realm": "Example.Test"}})
    assert status == 201
    account_id = body["data"]["id"]
    assert len(account_id) == 32
    account = {"id": account_id, "name": "Example", "realm": "example.test"}
    assert body == ok(account)
    assert await rows(db, "SELECT id, name, realm FROM accounts") == [(account_id, "Example", "example.test")]
    other = await make_account(client, "other.test", "Other")

    assert await call(client, "GET", "/v2/accounts") == (200, ok([account, other]))
    assert await call(client, "GET", f"/v2/accounts/{account_id}") == (200, ok(account))


async def test_a_user_token_sees_only_its_own_account(client: TestClient, alice_token: str) -> None:
    mine = await make_account(client)
    other = await make_account(client, "other.test", "Other")
    assert await call(client, "GET", "/v2/accounts", alice_token) == (200, ok([mine], alice_token))
    assert await call(client, "GET", f"/v2/accounts/{mine['id']}", alice_token) == (200, ok(mine, alice_token))
    forbidden = err(403, "forbidden", {"message": "this token may only read its own account"}, alice_token)
    for path in ("", "/users", "/devices", "/presence", "/presence/101"):
        assert await call(client, "GET", f"/v2/accounts/{other['id']}{path}", alice_token) == (403, forbidden)


async def test_a_user_token_may_not_write(client: TestClient, alice_token: str, db: Database) -> None:
    account = await make_account(client)
    forbidden = err(403, "forbidden", {"message": "this needs the admin token"}, alice_token)
    assert await call(
        client, "PUT", "/v2/accounts", alice_token, {"data": {"name": "E", "realm": "other.test"}}
    ) == (403, forbidden)
    assert await call(
        client, "PUT", f"/v2/accounts/{account['id']}/users", alice_token, {"data": {"username": "bob"}}
    ) == (403, forbidden)
    assert await call(
        client, "PUT", f"/v2/accounts/{account['id']}/devices", alice_token,
        {"data": {"name": "Desk", "sip": {"username": "101"}}},
    ) == (403, forbidden)
    assert await call(
        client, "POST", f"/v2/accounts/{account['id']}/presence/101", alice_token, {"data": {"action": "reset"}}
    ) == (403, forbidden)
    assert await rows(db, "SELECT realm FROM accounts") == [("example.test",)]
    assert await rows(db, "SELECT * FROM account_users") == []
    assert await rows(db, "SELECT * FROM devices") == []
    assert await rows(db, "SELECT * FROM extension_states") == []


async def test_account_refusals(client: TestClient, db: Database) -> None:
    await make_account(client)
    assert await call(
        client, "PUT", "/v2/accounts", body={"data": {"name": "Again", "realm": "example.test"}}
    ) == (409, err(409, "conflicting documents", field("realm", "unique", "an account already has realm example.test")))
    assert await call(
        client, "PUT", "/v2/accounts", body={"data": {"name": "X", "realm": "elsewhere.test"}}
    ) == (400, err(400, "invalid data", field(
        "realm", "enum", "realm must be one of the served XMPP domains: example.test, other.test"
    )))
    assert await call(client, "PUT", "/v2/accounts", body={"data": {"realm": "other.test"}}) == (
        400, err(400, "invalid data", field("name", "required", "name is required"))
    )
    # Names reach stanzas (a device's name is its roster item's name): no control characters.
    assert await call(
        client, "PUT", "/v2/accounts", body={"data": {"name": "Bell\u0007", "realm": "other.test"}}
    ) == (400, err(400, "invalid data", field(
        "name", "pattern", "name contains a control or non-character code point"
    )))
    assert await rows(db, "SELECT realm FROM accounts") == [("example.test",)]


# ---- users ----------------------------------------------------------------------------------


async def test_users_put_get_list_delete(
    client: TestClient, db: Database, identity: Identity, clock: FixedClock
) -> None:
    account = await make_account(client)
    base = f"/v2/accounts/{account['id']}/users"
    status, body = await call(client, "PUT", base, body={"data": {"username": "Alice", "presence_id": "2001"}})
    assert status == 201
    alice = await identity.user_for_jid(BareJid("alice@example.test"))
    alice_json = {"id": alice.id, "username": "alice", "jid": "alice@example.test", "presence_id": "2001"}
    assert body == ok(alice_json)
    clock.advance(1)  # listed in creation order
    bob_json = await make_user(client, account["id"], username="bob")
    assert bob_json == {"id": bob_json["id"], "username": "bob", "jid": "bob@example.test"}

    assert await call(client, "GET", base) == (200, ok([alice_json, bob_json]))
    assert await call(client, "GET", f"{base}/{alice.id}") == (200, ok(alice_json))
    assert await call(client, "PUT", base, body={"data": {"username": "alice"}}) == (
        409, err(409, "conflicting documents", field("username", "unique", "user alice already exists"))
    )
    assert await call(client, "DELETE", f"{base}/{alice.id}") == (200, ok(alice_json))
    # Unprovisioned, alice is still a member of the realm's account (membership is by
    # domain): listed and readable without the Kazoo fields.
    member = {"id": alice.id, "username": "alice", "jid": "alice@example.test"}
    assert await call(client, "GET", base) == (200, ok([member, bob_json]))
    assert await rows(db, "SELECT id FROM users WHERE jid = 'alice@example.test'") == [(alice.id,)]
    assert await call(client, "GET", f"{base}/{alice.id}") == (200, ok(member))
    assert await call(client, "DELETE", f"{base}/{alice.id}") == (200, ok(member))
    unknown = new_object_id()
    assert await call(client, "GET", f"{base}/{unknown}") == (
        404, err(404, "bad identifier", {"message": f"user {unknown} not found"})
    )
    assert await call(client, "GET", f"{base}/not-an-id") == (
        400, err(400, "invalid data", field("user_id", "pattern", "user_id must be a 24-character lowercase hex id"))
    )


# ---- devices --------------------------------------------------------------------------------


async def test_devices_put_get_list_delete(client: TestClient, db: Database, clock: FixedClock) -> None:
    account = await make_account(client)
    owner = await make_user(client, account["id"], username="alice")
    base = f"/v2/accounts/{account['id']}/devices"
    status, body = await call(
        client, "PUT", base,
        body={"data": {"name": "Desk", "sip": {"username": "SIP101"}, "presence_id": "*3101", "owner_id": owner["id"]}},
    )
    assert status == 201
    desk = {
        "id": body["data"]["id"], "name": "Desk", "sip": {"username": "sip101"},
        "presence_id": "*3101", "owner_id": owner["id"],
    }
    assert body == ok(desk)
    clock.advance(1)  # listed in creation order
    phone = await make_device(client, account["id"], name="Phone", sip={"username": "102"})
    assert phone == {"id": phone["id"], "name": "Phone", "sip": {"username": "102"}}
    assert await call(client, "GET", base) == (200, ok([desk, phone]))
    assert await call(client, "GET", f"{base}/{desk['id']}") == (200, ok(desk))
    assert await call(client, "DELETE", f"{base}/{phone['id']}") == (200, ok(phone))
    assert await call(client, "GET", base) == (200, ok([desk]))
    assert await rows(db, "SELECT id FROM devices") == [(desk["id"],)]
    assert await call(client, "GET", f"{base}/{phone['id']}") == (
        404, err(404, "bad identifier", {"message": f"device {phone['id']} not found"})
    )


async def test_device_refusals(client: TestClient, db: Database) -> None:
    account = await make_account(client)
    base = f"/v2/accounts/{account['id']}/devices"
    await make_device(client, account["id"], name="Desk", sip={"username": "101"})
    assert await call(client, "PUT", base, body={"data": {"name": "Dup", "sip": {"username": "101"}}}) == (
        409, err(409, "conflicting documents", field("sip.username", "unique", "a device already has SIP username 101"))
    )
    assert await call(client, "PUT", base, body={"data": {"name": "No SIP"}}) == (
        400, err(400, "invalid data", field("sip.username", "required", "sip.username is required"))
    )
    pattern = "must be 1-64 characters of letters, digits and * # + . _ ~ -"
    assert await call(client, "PUT", base, body={"data": {"name": "Bad", "sip": {"username": "a b"}}}) == (
        400, err(400, "invalid data", field("sip.username", "pattern", f"sip.username {pattern}"))
    )
    assert await call(
        client, "PUT", base, body={"data": {"name": "Bad", "sip": {"username": "102"}, "presence_id": "x/y"}}
    ) == (400, err(400, "invalid data", field("presence_id", "pattern", f"presence_id {pattern}")))
    stranger = new_object_id()
    assert await call(
        client, "PUT", base, body={"data": {"name": "Orphan", "sip": {"username": "103"}, "owner_id": stranger}}
    ) == (404, err(404, "bad identifier", field("owner_id", "exists", f"owner {stranger} is not a user of realm example.test")))
    assert [r[0] for r in await rows(db, "SELECT sip_username FROM devices")] == ["101"]


# ---- unknown accounts, tokens, bodies -------------------------------------------------------


async def test_unknown_or_malformed_account_ids(client: TestClient) -> None:
    unknown = new_account_id()
    not_found = err(404, "bad identifier", {"message": f"account {unknown} not found"})
    for method, path in [
        ("GET", ""), ("GET", "/users"), ("GET", "/devices"), ("GET", "/presence"), ("GET", "/presence/101"),
    ]:
        assert await call(client, method, f"/v2/accounts/{unknown}{path}") == (404, not_found)
    assert await call(client, "POST", f"/v2/accounts/{unknown}/presence/101", body={"data": {"action": "reset"}}) == (
        404, not_found
    )
    assert await call(client, "GET", "/v2/accounts/nope") == (
        400, err(400, "invalid data", field("account_id", "pattern", "account_id must be a 32-character lowercase hex id"))
    )


@pytest.mark.parametrize(
    ("token", "detail"),
    [(None, "missing token"), ("nope", "invalid or expired token"), ("", "missing token")],
)
async def test_without_a_valid_token_kazoo_paths_answer_401(
    client: TestClient, token: str | None, detail: str
) -> None:
    for method, path in [("GET", "/v2/accounts"), ("PUT", "/v2/accounts"), ("GET", f"/v2/accounts/{new_account_id()}/presence")]:
        assert await call(client, method, path, token, {"data": {}}) == (
            401, err(401, "invalid credentials", {"message": detail}, token or "")
        )


@pytest.mark.parametrize(
    "header", [b"X-Auth-Token: \xff\xfe", b"X-Auth-Token: \xc3\x28", b"Authorization: Bearer \xff", b"X-Auth-Token: a b"]
)
async def test_a_token_that_is_not_visible_ascii_is_no_token_and_not_echoed(
    client: TestClient, header: bytes
) -> None:
    answer = await raw_http(
        client.host, client.port, b"GET /v2/accounts HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-1\r\n" + header
    )
    assert (answer.status, answer.json()) == (401, err(401, "invalid credentials", {"message": "missing token"}, ""))


async def test_other_token_headers_are_accepted(client: TestClient) -> None:
    async with client.get("/v2/accounts", headers={"Authorization": f"Bearer {ADMIN}", "X-Request-Id": REQ}) as resp:
        assert (resp.status, await resp.json()) == (200, ok([]))


async def test_request_id_is_generated_and_echoed(client: TestClient) -> None:
    async with client.get("/v2/accounts", headers={"X-Auth-Token": ADMIN}) as resp:
        body = await resp.json()
        assert body["request_id"] == resp.headers["X-Request-Id"]
        assert re.fullmatch("[0-9a-f]{32}", body["request_id"])
        first = body["request_id"]
    async with client.get("/v2/accounts") as resp:
        body = await resp.json()
        assert resp.status == 401 and body["request_id"] == resp.headers["X-Request-Id"]
        assert re.fullmatch("[0-9a-f]{32}", body["request_id"]) and body["request_id"] != first


async def test_bad_bodies_get_400_in_kazoo_envelopes(client: TestClient, db: Database) -> None:
    account = await make_account(client)
    post = f"/v2/accounts/{account['id']}/presence/101"
    assert await call(client, "POST", post, raw=b"{") == (
        400, err(400, "invalid data", {"message": "body is not valid JSON"})
    )
    assert await call(client, "POST", post, raw=b"") == (
        400, err(400, "invalid data", {"message": "a JSON object body is required"})
    )
    assert await call(client, "POST", post, raw=b"[1]") == (
        400, err(400, "invalid data", {"message": "body must be a JSON object"})
    )
    missing = err(400, "invalid data", field("data", "required", 'the body must be {"data": {...}}'))
    assert await call(client, "POST", post, body={"action": "reset"}) == (400, missing)
    assert await call(client, "PUT", "/v2/accounts", body={"data": "x"}) == (400, missing)
    assert await call(client, "POST", post, body={"data": {"action": "toggle"}}) == (
        400, err(400, "invalid data", field("action", "enum", 'action must be "set" or "reset"'))
    )
    assert await call(client, "POST", post, body={"data": {}}) == (
        400, err(400, "invalid data", field("action", "required", 'action is required ("set" or "reset")'))
    )
    assert await call(client, "POST", post, body={"data": {"action": "set", "state": "busy"}}) == (
        400, err(400, "invalid data", field("state", "enum", "state must be one of confirmed, early, terminated"))
    )
    assert await call(client, "POST", post, body={"data": {"action": "set"}}) == (
        400, err(400, "invalid data", field("state", "required", "state is required with action set"))
    )
    assert await call(client, "POST", f"/v2/accounts/{account['id']}/presence/a%20b", body={"data": {"action": "reset"}}) == (
        400, err(400, "invalid data", field(
            "extension", "pattern", "extension must be 1-64 characters of letters, digits and * # + . _ ~ -"
        ))
    )
    assert await rows(db, "SELECT * FROM extension_states") == []


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


async def test_json_nested_too_deep_or_not_utf8_is_a_400(client: TestClient, db: Database) -> None:
    # 1000 levels made json.loads raise RecursionError: a 500.
    for raw, message in [
        (nested(1000), "body nests more than 32 levels of arrays and objects"),
        (b'{"data": {"name": "x", "realm": "example.test", "extra": ' + nested(31) + b"}}",
         "body nests more than 32 levels of arrays and objects"),
        (b'{"data": {"name": "caf\xe9", "realm": "example.test"}}', "body is not UTF-8"),
        ('{"data": {"name": "x", "realm": "example.test"}}'.encode("utf-16"), "body is not UTF-8"),
        (b'{"data": {"name": NaN, "realm": "example.test"}}', "body is not valid JSON"),
    ]:
        assert await call(client, "PUT", "/v2/accounts", raw=raw) == (
            400, err(400, "invalid data", {"message": message})
        ), raw
    assert await rows(db, "SELECT * FROM accounts") == []
    # 32 levels are fine, and brackets inside strings are not nesting.
    status, body = await call(
        client, "PUT", "/v2/accounts",
        raw=b'{"data": {"name": "' + b"[" * 100 + b'", "realm": "example.test", "extra": ' + nested(30) + b"}}",
    )
    assert (status, body["data"]["name"]) == (201, "[" * 100)


async def test_unknown_kazoo_paths_get_kazoo_404(client: TestClient) -> None:
    assert await call(client, "GET", f"/v2/accounts/{new_account_id()}/nothing") == (
        404, err(404, "not found", {"message": "no such resource"})
    )


async def test_rainbow_paths_keep_rainbow_envelopes(client: TestClient) -> None:
    async with client.get(f"/api/rainbow/enduser/v1.0/users/{new_object_id()}/presences/sent",
                          headers={"X-Auth-Token": "nope"}) as resp:
        assert resp.status == 401
        assert await resp.json() == {
            "errorCode": 401, "errorMsg": "Unauthorized",
            "errorDetails": "invalid or expired token", "errorDetailsCode": 401000,
        }
    async with client.get("/v2/accountsx") as resp:
        assert resp.status == 404
        assert await resp.json() == {
            "errorCode": 404, "errorMsg": "Not Found", "errorDetails": "no such resource", "errorDetailsCode": 404000,
        }


# ---- presence listing -----------------------------------------------------------------------


async def test_the_listing_has_kazoo_s_shape(
    client: TestClient, states: PresenceStates, db: Database, clock: FixedClock, alice_token: str
) -> None:
    account = await make_account(client)
    await make_account(client, "other.test", "Other")
    await states.subscribe(BareJid("alice@example.test"), "*3101")
    clock.advance(5_000)
    await states.subscribe(BareJid("bob@example.test"), "*3101")
    await states.subscribe(BareJid("alice@example.test"), "101")
    await states.subscribe(BareJid("zed@other.test"), "101")  # another account's extension
    status, _ = await call(
        client, "POST", f"/v2/accounts/{account['id']}/presence/101", body={"data": {"action": "set", "state": "early"}}
    )
    assert status == 202
    a3101 = await sub_id(db, "*3101", "alice@example.test")
    b3101 = await sub_id(db, "*3101", "bob@example.test")
    a101 = await sub_id(db, "101", "alice@example.test")
    expected = {
        "subscriptions": {
            "*3101": {
                "presence": {
                    a3101: entry("alice@example.test", "terminated", 1),
                    b3101: entry("bob@example.test", "terminated", 1, GREGORIAN_START + 5),
                },
            },
            "101": {"presence": {a101: entry("alice@example.test", "early", 2, GREGORIAN_START + 5)}},
        }
    }
    listing = f"/v2/accounts/{account['id']}/presence"
    status, body = await call(client, "GET", listing)
    assert (status, body) == (200, ok(expected))
    assert list(body) == ["auth_token", "data", "request_id", "revision", "status"]
    assert await call(client, "GET", f"{listing}?event=presence") == (200, ok(expected))
    assert await call(client, "GET", f"{listing}?event=dialog") == (200, ok({"subscriptions": {}}))
    assert await call(client, "GET", f"{listing}?event=no!") == (
        400, err(400, "invalid data", field("event", "pattern", "event must be a word such as presence or dialog"))
    )
    # A user token reads its own account's listing.
    assert await call(client, "GET", listing, alice_token) == (200, ok(expected, alice_token))

    one = {"subscriptions": {"*3101": expected["subscriptions"]["*3101"]}}
    assert await call(client, "GET", URL(f"{listing}/%2A3101", encoded=True)) == (200, ok(one))
    assert await call(client, "GET", f"{listing}/*3101") == (200, ok(one))
    assert await call(client, "GET", f"{listing}/*3101?event=dialog") == (200, ok({"subscriptions": {}}))
    assert await call(client, "GET", f"{listing}/999") == (200, ok({"subscriptions": {}}))


async def test_the_listing_of_an_empty_account(client: TestClient) -> None:
    account = await make_account(client)
    assert await call(client, "GET", f"/v2/accounts/{account['id']}/presence") == (200, ok({"subscriptions": {}}))


# ---- state changes --------------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["%2A3101", "*3101"])
async def test_post_extension_presence_sets_and_resets(
    client: TestClient, states: PresenceStates, db: Database, segment: str
) -> None:
    account = await make_account(client)
    await states.subscribe(BareJid("alice@example.test"), "*3101")
    await clear_outbox(db)
    url = URL(f"/v2/accounts/{account['id']}/presence/{segment}", encoded=True)

    assert await call(client, "POST", url, body={"data": {"action": "set", "state": "confirmed"}}) == (
        202, ok("command sent")
    )
    assert await rows(db, "SELECT realm, extension, state FROM extension_states") == [
        ("example.test", "*3101", "confirmed")
    ]
    assert await call(client, "POST", url, body={"data": {"reset": True}}) == (202, ok("command sent"))
    assert await call(client, "POST", url, body={"data": {"action": "reset", "state": "early"}}) == (
        202, ok("command sent")
    )
    assert await rows(db, "SELECT state FROM extension_states") == [("terminated",)]
    assert await outbox_rows(db) == [
        ("presence", "alice@example.test", {"extension": "*3101", "state": "confirmed", "sequence": 2}),
        ("presence", "alice@example.test", {"extension": "*3101", "state": "terminated", "sequence": 3}),
        ("presence", "alice@example.test", {"extension": "*3101", "state": "terminated", "sequence": 4}),
    ]


async def test_post_device_presence(client: TestClient, states: PresenceStates, db: Database) -> None:
    account = await make_account(client)
    with_id = await make_device(client, account["id"], name="Desk", sip={"username": "101"}, presence_id="*3101")
    plain = await make_device(client, account["id"], name="Phone", sip={"username": "102"})
    await states.subscribe(BareJid("alice@example.test"), "*3101")
    await states.subscribe(BareJid("bob@example.test"), "102")
    await clear_outbox(db)
    base = f"/v2/accounts/{account['id']}/devices"

    assert await call(client, "POST", f"{base}/{with_id['id']}/presence",
                      body={"data": {"action": "set", "state": "early"}}) == (202, ok("command sent"))
    assert await call(client, "POST", f"{base}/{plain['id']}/presence",
                      body={"data": {"action": "set", "state": "confirmed"}}) == (202, ok("command sent"))
    assert await rows(db, "SELECT extension, state FROM extension_states ORDER BY extension") == [
        ("*3101", "early"), ("102", "confirmed"),
    ]
    assert await call(client, "POST", f"{base}/{plain['id']}/presence", body={"data": {"reset": True}}) == (
        202, ok("command sent")
    )
    assert await rows(db, "SELECT extension, state FROM extension_states ORDER BY extension") == [
        ("*3101", "early"), ("102", "terminated"),
    ]
    assert await outbox_rows(db) == [
        ("presence", "alice@example.test", {"extension": "*3101", "state": "early", "sequence": 2}),
        ("presence", "bob@example.test", {"extension": "102", "state": "confirmed", "sequence": 2}),
        ("presence", "bob@example.test", {"extension": "102", "state": "terminated", "sequence": 3}),
    ]
    unknown = new_account_id()
    assert await call(client, "POST", f"{base}/{unknown}/presence", body={"data": {"reset": True}}) == (
        404, err(404, "bad identifier", {"message": f"device {unknown} not found"})
    )


async def test_post_user_presence(client: TestClient, states: PresenceStates, db: Database) -> None:
    account = await make_account(client)
    with_id = await make_user(client, account["id"], username="carol", presence_id="2001")
    owner = await make_user(client, account["id"], username="dave")
    nothing = await make_user(client, account["id"], username="erin")
    await make_device(client, account["id"], name="Desk", sip={"username": "301"}, owner_id=owner["id"])
    await states.subscribe(BareJid("alice@example.test"), "2001")
    await states.subscribe(BareJid("dave@example.test"), "301")  # the device's manager
    await clear_outbox(db)
    base = f"/v2/accounts/{account['id']}/users"

    assert await call(client, "POST", f"{base}/{with_id['id']}/presence",
                      body={"data": {"action": "set", "state": "confirmed"}}) == (202, ok("command sent"))
    assert await call(client, "POST", f"{base}/{owner['id']}/presence",
                      body={"data": {"action": "set", "state": "early"}}) == (202, ok("command sent"))
    assert await rows(db, "SELECT extension, state FROM extension_states ORDER BY extension") == [
        ("2001", "confirmed"), ("301", "early"),
    ]
    assert await outbox_rows(db) == [
        ("presence", "alice@example.test", {"extension": "2001", "state": "confirmed", "sequence": 2}),
        ("presence", "dave@example.test", {"extension": "301", "state": "early", "sequence": 2}),
    ]
    assert await call(client, "POST", f"{base}/{nothing['id']}/presence", body={"data": {"action": "reset"}}) == (
        400, err(400, "invalid data", field("presence_id", "required", "the user has no presence_id and owns no device"))
    )
    unknown = new_object_id()
    assert await call(client, "POST", f"{base}/{unknown}/presence", body={"data": {"action": "reset"}}) == (
        404, err(404, "bad identifier", {"message": f"user {unknown} not found"})
    )


async def test_the_listing_shows_sequences_after_a_reset(
    client: TestClient, states: PresenceStates, db: Database
) -> None:
    account = await make_account(client)
    await states.subscribe(BareJid("alice@example.test"), "*3101")
    await call(client, "POST", f"/v2/accounts/{account['id']}/presence/*3101",
               body={"data": {"action": "set", "state": "confirmed"}})
    await call(client, "POST", f"/v2/accounts/{account['id']}/presence/*3101", body={"data": {"action": "reset"}})
    sid = await sub_id(db, "*3101", "alice@example.test")
    assert await call(client, "GET", f"/v2/accounts/{account['id']}/presence/*3101") == (
        200, ok({"subscriptions": {"*3101": {"presence": {sid: entry("alice@example.test", "terminated", 3)}}}})
    )


def test_timestamps_are_gregorian_seconds() -> None:
    # 2026-01-01T00:00:00Z: 1767225600 Unix seconds + 62167219200 (0000-01-01 to 1970-01-01).
    assert GREGORIAN_START == 63_934_444_800
